"""Float64 AdaSGDF written from its definition (issue 26, restated in docs/adasgdf.md), one tensor at a time, for
tests only.

It never calls sgdf_erd and always runs on the CPU (parameters and gradients from any device are copied).
`round_to` emulates keeping parameters and state in a reduced dtype: after every step p and the state are rounded to
that dtype; `state_round_to` (when given) rounds the state to another dtype instead. With `round_to=torch.float32`,
p follows a float32 master copy.

Two per-element scales of the error a reduced-precision step may make, for tests/test_adasgdf_op.py's
assert_weights_close: `peak`, the largest |p| along the trajectory (the initial and every stepped value), and
`sensitivity`, the sum over steps of lr (|grad| + |wd p| + |m^|) / (d + eps): how far the weight moves per unit of
relative error in the numerator's inputs, which the division by d + eps amplifies where eps dominates it.
"""

import torch

PRECONDITIONERS = ("second_moment", "variance")


class ReferenceAdaSGDF:
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, gamma=0.5, weight_decay=1e-2,
                 decoupled_weight_decay=True, maximize=False, preconditioner="second_moment", round_to=None,
                 state_round_to=None):
        assert preconditioner in PRECONDITIONERS
        self.p = [p.detach().to("cpu", torch.complex128 if p.is_complex() else torch.float64, copy=True)
                  for p in params]
        # state per tensor: m (exp_avg), s (exp_var), v (exp_avg_sq, "second_moment" only), t (step)
        self.m = [torch.zeros_like(p) for p in self.p]
        self.s = [torch.zeros_like(p) for p in self.p]
        self.v = [torch.zeros_like(p) for p in self.p]
        self.t = [0 for _ in self.p]
        self.peak = [self._real(p).abs() for p in self.p]
        self.sensitivity = [torch.zeros_like(x) for x in self.peak]
        self.lr, self.b1, self.b2, self.eps, self.gamma = lr, betas[0], betas[1], eps, gamma
        self.wd, self.decoupled, self.maximize, self.preconditioner = (weight_decay, decoupled_weight_decay,
                                                                       maximize, preconditioner)
        self.round_to = round_to
        self.state_round_to = state_round_to or round_to

    def state(self, i):
        """Parameter i's state under the optimizer's names."""
        out = dict(step=self.t[i], exp_avg=self.m[i], exp_var=self.s[i])
        if self.preconditioner == "second_moment":
            out["exp_avg_sq"] = self.v[i]
        return out

    @staticmethod
    def _real(x):
        return torch.view_as_real(x) if x.is_complex() else x

    @staticmethod
    def _round(x, dtype):
        return x if dtype is None else x.to(dtype).to(x.dtype)

    def step(self, grads):
        b1, b2, eps, lr = self.b1, self.b2, self.eps, self.lr
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            views = (self.p[i], self.m[i], self.s[i], self.v[i])
            if self.p[i].is_complex():  # a complex tensor is its real pairs
                views = tuple(torch.view_as_real(x) for x in views)
                g = torch.view_as_real(grad.cpu().to(torch.complex128)).clone()
            else:
                g = grad.cpu().double().clone()
            p, m, s, v = views
            self.t[i] += 1
            t = self.t[i]
            if self.maximize:
                g = -g
            numerator_inputs = g.abs()  # (the magnitudes of what the numerator g^ is computed from)
            if self.wd:
                if self.decoupled:
                    p.mul_(1 - lr * self.wd)
                else:
                    numerator_inputs += (self.wd * p).abs()
                    g = g + self.wd * p
            m.mul_(b1).add_((1 - b1) * g)
            s.mul_(b2).add_((1 - b2) * (g - m) ** 2)  # against the m just updated
            bc1 = 1 - b1**t
            bc2 = (1 + b1) * (1 - b2**t) / ((1 - b1) * (1 - b1 ** (2 * t)))
            m_hat = m / bc1
            r = g - m_hat
            numerator_inputs += m_hat.abs()
            gain = (s / (bc2 * r**2 + s + eps)) ** self.gamma
            g_hat = m_hat + gain * r
            if self.preconditioner == "second_moment":
                v.mul_(b2).add_((1 - b2) * g_hat**2)
                d = torch.sqrt(v / (1 - b2**t))
            else:
                d = torch.sqrt(s / (1 - b2**t))
            p.sub_(lr * g_hat / (d + eps))
            self.sensitivity[i] += lr * numerator_inputs / (d + eps)
            p.copy_(self._round(p, self.round_to))
            torch.maximum(self.peak[i], p.abs(), out=self.peak[i])
            for x in (m, s, v):
                x.copy_(self._round(x, self.state_round_to))
