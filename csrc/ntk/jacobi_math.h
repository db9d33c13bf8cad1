// The maths of the on-chip eigenvalue solver of binned_gram_eigvalsh (CUDA): cyclic Jacobi with the round-robin
// ("parallel") ordering, in which each round rotates mp/2 disjoint index pairs at once, so one thread block can
// apply a whole round with no conflicts. Host/device functions, so the schedule can be checked on the host.
#pragma once

#include <torch/headeronly/macros/Macros.h>

#include "common/math_ops.h"

namespace sgdf_erd::ntk {

// Pair `slot` (0 <= slot < mp/2) of round `round` (0 <= round < mp - 1) for an even order mp: index mp - 1 stays
// put while the others turn around a circle (the chess-tournament schedule). Over the mp - 1 rounds of a sweep
// every pair p < q occurs exactly once.
C10_HOST_DEVICE inline void jacobi_pair(int round, int slot, int mp, int& p, int& q) {
  int a, b;
  if (slot == 0) {
    a = round;
    b = mp - 1;
  } else {
    a = (round + slot) % (mp - 1);
    b = (round - slot + mp - 1) % (mp - 1);
  }
  p = a < b ? a : b;
  q = a < b ? b : a;
}

// Rotation J (J_pp = J_qq = c, J_pq = s, J_qp = -s) with (J^T A J)_pq = 0 (Golub & Van Loan, sym.schur2):
// t = tan(theta), the smaller root of t^2 + 2 tau t - 1 = 0. The rotated diagonal is a_pp - t a_pq, a_qq + t a_pq.
template <typename T>
C10_HOST_DEVICE inline void jacobi_rotation(T app, T aqq, T apq, T& c, T& s, T& t) {
  if (apq == T(0)) {
    c = T(1);
    s = T(0);
    t = T(0);
    return;
  }
  const T tau = (aqq - app) / (T(2) * apq);
  const T abs_tau = tau < T(0) ? -tau : tau;
  if (abs_tau > T(1e15)) {  // tau^2 would overflow float; 1/(2 tau) is then exact to working precision
    t = T(0.5) / tau;
  } else {
    t = (tau >= T(0) ? T(1) : T(-1)) / (abs_tau + op_sqrt(T(1) + tau * tau));
  }
  c = T(1) / op_sqrt(T(1) + t * t);
  s = t * c;
}

}  // namespace sgdf_erd::ntk
