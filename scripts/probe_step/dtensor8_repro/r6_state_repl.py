# A state entry replaced by a Replicate DTensor (same mesh, same values) for a Shard(0) param (world 2): exp_avg
# (SGDF), master_param (SGDF bf16 + master_weights). Default / fused path: the group leaves the one kernel call (its
# placements differ), the functional fused path's local_shard redistributes the entry into a new tensor, the kernel
# updates that copy, and opt.state keeps the old values. Compared with the same step without the edit.
import os, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
def fn(rank, world, mesh):
    out = []
    for key, dtype, extra in (('exp_avg', torch.float32, {}), ('master_param', torch.bfloat16, dict(master_weights=True))):
        for kw in ({}, dict(fused=True), dict(foreach=True)):
            res = []
            for edit in (False, True):
                p = torch.nn.Parameter(dparam(mesh, (5, 4), 0).detach().to(dtype))
                opt = SGDF([p], lr=0.1, **extra, **kw)
                for step in range(3):
                    p.grad = dgrad(p, step).to(dtype)
                    if edit and step == 1:
                        opt.state[p][key] = opt.state[p][key].redistribute(mesh, [Replicate()])
                    opt.step()
                res.append((p.detach().full_tensor().float(), opt.state[p][key].full_tensor().float()))
            (p0, m0), (p1, m1) = res
            out.append(f'{key} {kw}: param equal {torch.equal(p0, p1)} (max diff {float((p0 - p1).abs().max()):.3g}), '
                       f'{key} equal {torch.equal(m0, m1)} (max diff {float((m0 - m1).abs().max()):.3g})')
    return '\n  '.join([''] + out)
if __name__ == '__main__':
    run_world(fn, 2)
