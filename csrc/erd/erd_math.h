// The ERD loss maths shared by the CPU and CUDA kernels (see docs/erd.md): per-sample weights, the
// log-SNR bin of a sample, and the elementwise terms of the loss and its gradient. Only maths lives here.
//
// Per-sample quantities (alpha, sigma, weights, bins) are computed in double on every backend: they are B-sized,
// so the cost is nil, and CPU and CUDA then agree on them bit for bit up to libm's log/pow.
#pragma once

#include <torch/headeronly/macros/Macros.h>
#include <cmath>
#include <cstdint>

namespace sgdf_erd::erd {

// What the network predicts: y = c_x * x0 + c_e * eps (spec table).
enum class Prediction : int { kEps = 0, kX0 = 1, kV = 2, kFlow = 3 };

// kGiven: weights computed in Python (a user callable) and passed in.
enum class Weighting : int { kErd = 0, kConstant = 1, kMinSnr = 2, kP2 = 3, kDebias = 4, kGiven = 5 };

// The parameters of the built-in weightings.
struct WeightParams {
  Prediction prediction;
  Weighting weighting;
  double k;      // Min-SNR clip k, P2 offset k
  double gamma;  // P2 exponent
};

// Host code takes the std:: overloads, device code CUDA's global ones.
#ifdef __CUDA_ARCH__
C10_HOST_DEVICE inline bool is_finite(double x) { return ::isfinite(x); }
C10_HOST_DEVICE inline bool is_nan(double x) { return ::isnan(x); }
C10_HOST_DEVICE inline bool is_inf(double x) { return ::isinf(x); }
#else
inline bool is_finite(double x) { return std::isfinite(x); }
inline bool is_nan(double x) { return std::isnan(x); }
inline bool is_inf(double x) { return std::isinf(x); }
#endif

// log(alpha^2 / sigma^2) as 2 (log|alpha| - log sigma): the squares underflow (overflow) in float64 where alpha and
// sigma are ~1e-162 (~1e154) or smaller (larger); alpha = sigma = 1e-200 gave 0 / 0, a NaN log-SNR. -inf at alpha = 0,
// +inf at sigma = 0, NaN where both are 0 or infinite, or sigma < 0.
C10_HOST_DEVICE inline double log_snr(double alpha, double sigma) {
  return 2.0 * (::log(::fabs(alpha)) - ::log(sigma));
}

// Weight of one sample with corruption x_t = alpha * x0 + sigma * eps. alpha enters only through |alpha| (a
// cosine schedule evaluated in float32 gives alpha = -4e-8 at t = 1). alpha_prime, sigma_prime are the time
// derivatives, read by the flow prediction only.
//
// ERD:     w = sqrt((c_x alpha)^2 + (c_e sigma)^2) / sqrt(alpha^2 + sigma^2), i.e.
//          eps: sigma / n,  x0: |alpha| / n,  v: |alpha| sigma / n (sqrt(2) dropped, as the authors do),
//          flow: sqrt((alpha' alpha)^2 + (sigma' sigma)^2) / n,  with n = sqrt(alpha^2 + sigma^2).
// Min-SNR: eps: min(snr, k) / snr,  x0: min(snr, k),  v: min(snr, k) / (snr + 1).
// P2:      eps: (k + snr)^-gamma.      debias: eps: sigma / |alpha|.      constant: 1.
// As in the authors' code (compute_mse_loss_weight), the weight is pinned to 1 where snr = alpha^2 / sigma^2 is 0,
// except Min-SNR (zero-terminal-SNR schedules), which takes its formulas' limits there, eps 1, x0 0, v 0: diffusers'
// snr_gamma loss gives 0 for x0 and v (for eps its bare formula is 0 / 0). Where snr is infinite (sigma = 0, t = 0)
// every formula is evaluated as written, as the authors do: ERD eps 0, x0 1, v 0, flow |alpha'|; Min-SNR eps 0,
// x0 k, v 0; P2 0 (gamma > 0, 1 at gamma = 0); debias 0. Each is also the formula's limit as sigma -> 0: with
// alpha != 0 none of them is 0 / 0, inf / inf or 0 * inf there, so none needs a case of its own. NaN alpha or
// sigma, or alpha = sigma = 0, give a NaN weight (the loss then shows it). Unsupported (prediction, weighting) pairs
// are rejected by the argument checks before any kernel runs; here they return NaN.
C10_HOST_DEVICE inline double sample_weight(double alpha, double sigma, double alpha_prime, double sigma_prime,
                                            const WeightParams& p) {
  if (p.weighting == Weighting::kConstant) return 1.0;
  const double a = ::fabs(alpha);
  const double s = sigma;
  const double ratio = a / s;  // sqrt(snr)
  if (is_nan(ratio)) return NAN;  // NaN alpha or sigma, alpha = sigma = 0 (no signal, no noise), or both infinite
  // The SNR is 0 where alpha = 0 (or sigma = inf), not where snr = ratio^2 underflows: that happens in float64 for
  // ratio < 1.5e-162, and overflows for ratio > 1.3e154, where the SNR is neither 0 nor infinite. Every formula
  // below that would divide by or add to an underflowed / overflowed snr takes the ratio instead.
  if (a == 0.0 || is_inf(s)) {
    if (p.weighting == Weighting::kMinSnr) return p.prediction == Prediction::kEps ? 1.0 : 0.0;
    return 1.0;
  }
  const double snr = ratio * ratio;
  switch (p.weighting) {
    case Weighting::kErd: {
      const double n = ::hypot(a, s);
      switch (p.prediction) {
        case Prediction::kEps: return s / n;
        case Prediction::kX0: return a / n;
        // the larger of a, s over n (in [0.7, 1]) times the smaller: a * s would overflow, and s / n (a / n)
        // underflow to a subnormal, losing digits, where the other is far larger
        case Prediction::kV: return a >= s ? s * (a / n) : a * (s / n);
        case Prediction::kFlow: return ::hypot(alpha_prime * a, sigma_prime * s) / n;
      }
      return NAN;
    }
    case Weighting::kMinSnr: {
      // k / snr and k / (snr + 1) (= k / snr once snr + 1 rounds to snr) as k / ratio / ratio where snr overflows
      const double k_over_snr = is_finite(snr) ? p.k / snr : p.k / ratio / ratio;
      switch (p.prediction) {
        case Prediction::kEps: return snr < p.k ? 1.0 : k_over_snr;
        case Prediction::kX0: return snr < p.k ? snr : p.k;
        case Prediction::kV: return snr < p.k ? snr / (snr + 1.0) : (is_finite(snr) ? p.k / (snr + 1.0) : k_over_snr);
        default: return NAN;
      }
    }
    case Weighting::kP2: {
      if (p.prediction != Prediction::kEps) return NAN;
      if (p.gamma == 0.0) return 1.0;
      // (a negative exponent, not 1 / pow: (k + snr)^gamma overflows where the weight is still a subnormal)
      if (p.k > 0.0 && is_finite(p.k + snr)) return ::pow(p.k + snr, -p.gamma);
      // snr or k + snr overflowed, or k = 0 (snr alone, which may underflow): (k + snr)^-gamma from the log-SNR
      const double logsnr = log_snr(a, s);
      return ::exp(-p.gamma * (p.k > 0.0 ? logsnr + ::log1p(p.k * ::exp(-logsnr)) : logsnr));
    }
    case Weighting::kDebias:
      return p.prediction == Prediction::kEps ? s / a : NAN;
    default:
      return NAN;
  }
}

// Edge b (0 < b < num_bins) between bins b - 1 and b of num_bins uniform bins over [lo, hi]. ERDLoss.bin_edges
// holds the same doubles (python/sgdf_erd/erd/loss.py, logsnr_bin_edges).
C10_HOST_DEVICE inline double logsnr_bin_edge(double lo, double hi, int64_t b, int64_t num_bins) {
  return lo + (hi - lo) * static_cast<double>(b) / static_cast<double>(num_bins);
}

// Uniform log-SNR bins over [lo, hi]: bin b holds edge b <= log-SNR < edge b + 1; samples below (above) the range
// fall into the first (last) bin, including log-SNR = -inf (alpha = 0) and +inf (sigma = 0). Returns -1 for an
// undefined log-SNR (NaN alpha or sigma, alpha = sigma = 0): such samples stay out of the statistics.
C10_HOST_DEVICE inline int64_t logsnr_bin(double alpha, double sigma, double lo, double hi, int64_t num_bins) {
  const double logsnr = log_snr(alpha, sigma);
  if (is_nan(logsnr)) return -1;
  const double x = (logsnr - lo) / (hi - lo) * static_cast<double>(num_bins);
  if (!(x >= 0.0)) return 0;
  if (x >= static_cast<double>(num_bins)) return num_bins - 1;
  auto bin = static_cast<int64_t>(x);
  // x is rounded: a log-SNR on an edge, or within a few ulp of one, goes to the bin whose edges hold it
  if (bin + 1 < num_bins && logsnr >= logsnr_bin_edge(lo, hi, bin + 1, num_bins)) {
    ++bin;
  } else if (bin > 0 && logsnr < logsnr_bin_edge(lo, hi, bin, num_bins)) {
    --bin;
  }
  return bin;
}

// Per-bin sums a step reports, in this order: [count, sum mse, sum mse^2, sum weighted loss] x num_bins.
constexpr int kNumBinSums = 4;

// A sample enters the statistics only when all it contributes is finite, so one bad sample never poisons the
// running statistics.
C10_HOST_DEVICE inline bool counts_in_statistics(double mse, double loss) {
  return is_finite(mse) && is_finite(mse * mse) && is_finite(loss);
}

// Gradient of mean_i(w_i * mean_j (o_ij - t_ij)^2) with respect to o_ij is coef_i * (o_ij - t_ij),
// coef_i = 2 * g * w_i / (numel_per_sample * batch); with respect to t_ij it is the negation.
C10_HOST_DEVICE inline double grad_coefficient(double grad, double weight, int64_t numel_per_sample,
                                               int64_t batch) {
  return 2.0 * grad * weight / (static_cast<double>(numel_per_sample) * static_cast<double>(batch));
}

}  // namespace sgdf_erd::erd

namespace sgdf_erd::erd {

// The statistics bin a sample lands in, or -1 when it stays out (undefined log-SNR, non-finite values).
C10_HOST_DEVICE inline int64_t statistics_bin(double mse, double loss, double alpha, double sigma, double lo,
                                              double hi, int64_t num_bins) {
  if (!counts_in_statistics(mse, loss)) return -1;
  return logsnr_bin(alpha, sigma, lo, hi, num_bins);
}

}  // namespace sgdf_erd::erd
