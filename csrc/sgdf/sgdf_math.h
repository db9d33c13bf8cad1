// The SGDF update for one element, shared by the CPU and CUDA kernels (see docs/sgdf.md).
// Only maths lives here: launching, chunking and dtype dispatch are in csrc/common.
#pragma once

#include <cmath>

#include "common/math_ops.h"

namespace sgdf_erd::sgdf {

// What divides the filtered gradient (AdaSGDF's adaptive step; none: plain SGDF). second_moment: Adam's, the
// square root of the bias-corrected EMA of the filtered gradient's square (state exp_avg_sq); variance: the square
// root of the bias-corrected residual variance s that SGDF keeps anyway (no extra state).
enum class Preconditioner : int { kNone = 0, kSecondMoment = 1, kVariance = 2 };

// Hyperparameters of one launch, in the arithmetic type (float, or double for float64 parameters).
template <typename acc_t>
struct Hyper {
  acc_t beta1, beta2, eps, gamma, weight_decay;
  bool decoupled_weight_decay, sign, maximize;
  Preconditioner preconditioner = Preconditioner::kNone;
  // 1 - beta1 and 1 - beta2, set by cast_hyper from the double betas: 1 - beta in float32 after rounding beta to
  // float32 is 1.7e-4 off for beta = 0.9999, where the bias corrections use the exact beta
  acc_t one_minus_beta1 = acc_t(0), one_minus_beta2 = acc_t(0);
};

// m moved toward g by w = 1 - beta1, as torch's lerp (the foreach path's): m + w (g - m) for w < 0.5, else
// g - (1 - w)(g - m). Its weights sum to 1 exactly, where beta1 m + (1 - beta1) g with beta1 rounded to float32 and
// 1 - beta1 exact would bias m (1.7e-4 low for beta1 = 0.9999), and beta1 = 0 gives m = g exactly.
template <typename V, typename acc_t>
C10_HOST_DEVICE SGDF_ERD_INLINE V lerp_toward(const V& m, const V& g, acc_t weight, acc_t one_minus_weight) {
  return weight < acc_t(0.5) ? m + V(weight) * (g - m) : g - V(one_minus_weight) * (g - m);
}

template <typename acc_t>
C10_HOST_DEVICE inline Hyper<acc_t> cast_hyper(const Hyper<double>& h) {
  return {static_cast<acc_t>(h.beta1), static_cast<acc_t>(h.beta2), static_cast<acc_t>(h.eps),
          static_cast<acc_t>(h.gamma), static_cast<acc_t>(h.weight_decay), h.decoupled_weight_decay, h.sign,
          h.maximize, h.preconditioner, static_cast<acc_t>(1.0 - h.beta1), static_cast<acc_t>(1.0 - h.beta2)};
}

// Per-tensor values that depend on its step count t.
template <typename acc_t>
struct StepCoeffs {
  acc_t inv_bias_correction1;  // 1 / (1 - b1^t)
  acc_t bias_correction2;      // (1 + b1)(1 - b2^t) / ((1 - b1)(1 - b1^(2t)))
  acc_t inv_sqrt_bias_correction_b2;  // 1 / sqrt(1 - b2^t): the preconditioner's (Adam's second-moment correction)
};

// Computed in double whatever the parameter dtype: it is one evaluation per tensor (per CUDA block), and it keeps
// 1 - b^t accurate for b near 1 at small t.
template <typename acc_t>
C10_HOST_DEVICE inline StepCoeffs<acc_t> step_coeffs(double beta1, double beta2, double step) {
  const double b1t = ::pow(beta1, step);
  const double bc1 = 1.0 - b1t;
  const double one_minus_b2t = 1.0 - ::pow(beta2, step);
  const double bc2 = (1.0 + beta1) * one_minus_b2t / ((1.0 - beta1) * (1.0 - b1t * b1t));
  return {static_cast<acc_t>(1.0 / bc1), static_cast<acc_t>(bc2), static_cast<acc_t>(1.0 / ::sqrt(one_minus_b2t))};
}

// One element (or one vector of lanes, V = Vectorized<acc_t>). Inputs: param p, gradient g (already unscaled),
// state m (exp_avg), s (exp_var) and, with kPre == kSecondMoment, *v (exp_avg_sq; else v is null, not read).
// Returns the update u: SGDF's filtered gradient, divided by the preconditioner's d + eps under AdaSGDF
// (kPre != kNone); p is decayed in place when the decay is decoupled, and the caller applies p -= lr * u (or hands
// u to the orthogonalisation). kPre is a template argument so that each mode's loop carries no branch on it.
template <Preconditioner kPre, typename V, typename acc_t>
C10_HOST_DEVICE SGDF_ERD_INLINE V filtered_update(V& p, V g, V& m, V& s, V* v, acc_t lr, const Hyper<acc_t>& h,
                                                  const StepCoeffs<acc_t>& c) {
  if (h.maximize) g = V(acc_t(0)) - g;
  if (h.weight_decay != acc_t(0)) {
    if (h.decoupled_weight_decay) {
      p = p * V(acc_t(1) - lr * h.weight_decay);
    } else {
      g = g + V(h.weight_decay) * p;
    }
  }
  m = lerp_toward(m, g, h.one_minus_beta1, h.beta1);
  const V residual_new_mean = g - m;  // the variance is taken around the updated mean
  s = V(h.beta2) * s + V(h.one_minus_beta2) * residual_new_mean * residual_new_mean;
  const V m_hat = m * V(c.inv_bias_correction1);
  const V r = g - m_hat;
  // eps sits outside the bc2 scaling, as in the authors' latest SGDF.py
  const V gain_denominator = V(c.bias_correction2) * r * r + s + V(h.eps);
  if constexpr (kPre == Preconditioner::kVariance) {
    if (h.gamma == acc_t(0.5)) {
      // (m^ + sqrt(s / A) r) / d with one division, by sqrt(A) d, instead of two: on one CPU core the step is
      // bound by its divisions. (sqrt(A) d ~ g^2 overflows only where s does.)
      const V sqrt_s = op_sqrt(s);
      const V sqrt_a = op_sqrt(gain_denominator);
      const V d = sqrt_s * V(c.inv_sqrt_bias_correction_b2) + V(h.eps);
      V u = (m_hat * sqrt_a + sqrt_s * r) / (sqrt_a * d);
      if (h.sign) u = op_sign(u);
      return u;
    }
  }
  V gain = s / gain_denominator;
  if (h.gamma == acc_t(0.5)) {
    gain = op_sqrt(gain);
  } else if (h.gamma != acc_t(1)) {
    gain = op_pow(gain, h.gamma);
  }
  V u = m_hat + gain * r;
  if constexpr (kPre == Preconditioner::kSecondMoment) {
    *v = V(h.beta2) * *v + V(h.one_minus_beta2) * u * u;
    u = u / (op_sqrt(*v) * V(c.inv_sqrt_bias_correction_b2) + V(h.eps));
  } else if constexpr (kPre == Preconditioner::kVariance) {
    u = u / (op_sqrt(s) * V(c.inv_sqrt_bias_correction_b2) + V(h.eps));
  }
  if (h.sign) u = op_sign(u);
  return u;
}

}  // namespace sgdf_erd::sgdf
