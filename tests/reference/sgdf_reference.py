"""Float64 SGDF written from docs/sgdf.md, one tensor at a time, for tests only.

It never calls sgdf_erd, and it always runs on the CPU (parameters and gradients from any device are copied).
`round_to` emulates keeping parameters and state in a reduced dtype: after every step p, m and s are rounded to that
dtype (the optimizer under test stores them so); `state_round_to` (when given) rounds m and s to another dtype
instead (state stored in its own dtype). With `round_to=torch.float32`, p follows a float32 master copy.
"""

import math

import torch


def newton_schulz_reference(update, ns_steps):
    a, b, c = 3.4445, -4.7750, 2.0315
    x = update.reshape(update.shape[0], -1).double()
    rows, cols = x.shape
    if rows > cols:
        x = x.T
    x = x / (torch.sqrt((x * x).sum()) + 1e-7)
    for _ in range(ns_steps):
        a_mat = x @ x.T
        x = a * x + (b * a_mat + c * a_mat @ a_mat) @ x
    if rows > cols:
        x = x.T
    return (x * math.sqrt(max(1.0, rows / cols))).reshape(update.shape)


class ReferenceSGDF:
    def __init__(self, params, lr=0.5, betas=(0.9, 0.999), eps=1e-8, gamma=0.5, weight_decay=0.0,
                 decoupled_weight_decay=False, sign=False, orthogonalize=False, ns_steps=5, maximize=False,
                 round_to=None, state_round_to=None):
        self.p = [p.detach().to("cpu", torch.complex128 if p.is_complex() else torch.float64, copy=True)
                  for p in params]
        self.m = [torch.zeros_like(p) for p in self.p]
        self.s = [torch.zeros_like(p) for p in self.p]
        self.t = [0 for _ in self.p]
        self.h = dict(lr=lr, b1=betas[0], b2=betas[1], eps=eps, gamma=gamma, wd=weight_decay,
                      decoupled=decoupled_weight_decay, sign=sign, orth=orthogonalize, ns=ns_steps,
                      maximize=maximize)
        self.round_to = round_to
        self.state_round_to = state_round_to or round_to

    @staticmethod
    def _round(x, dtype):
        return x if dtype is None else x.to(dtype).to(x.dtype)

    def step(self, grads):
        h = self.h
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = g.cpu()
            if self.p[i].is_complex():  # complex tensors are real pairs
                p, m, s = (torch.view_as_real(x[i]) for x in (self.p, self.m, self.s))
                g = torch.view_as_real(g.to(torch.complex128))
            else:
                p, m, s, g = self.p[i], self.m[i], self.s[i], g.double()
            self.t[i] += 1
            t = self.t[i]
            if h["maximize"]:
                g = -g
            if h["wd"]:
                if h["decoupled"]:
                    p.mul_(1 - h["lr"] * h["wd"])
                else:
                    g = g + h["wd"] * p
            m.copy_(h["b1"] * m + (1 - h["b1"]) * g)
            s.copy_(h["b2"] * s + (1 - h["b2"]) * (g - m) ** 2)
            bc1 = 1 - h["b1"] ** t
            bc2 = (1 + h["b1"]) * (1 - h["b2"] ** t) / ((1 - h["b1"]) * (1 - h["b1"] ** (2 * t)))
            m_hat = m / bc1
            r = g - m_hat
            k = (s / (bc2 * r * r + s + h["eps"])) ** h["gamma"]
            u = m_hat + k * r
            if h["orth"] and p.dim() >= 2:
                u = newton_schulz_reference(u, h["ns"])
            elif h["sign"]:
                u = torch.sign(u)
            p.sub_(h["lr"] * u)
            p.copy_(self._round(p, self.round_to))
            for x in (m, s):
                x.copy_(self._round(x, self.state_round_to))
