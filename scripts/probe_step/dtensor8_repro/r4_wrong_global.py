# exp_avg replaced by a DTensor on the param's mesh with its placements but another global shape (6 rows for a
# 5-row param, Shard(0) over 2 ranks: local shards 3+3 against the param's 3+2). The one kernel call sees only the
# shards: rank 0's fit, so rank 0 steps while rank 1 raises.
import os, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
def fn(rank, world, mesh):
    out = []
    for kw in ({}, dict(foreach=True)):
        p = dparam(mesh, (5, 4), 0)
        opt = SGDF([p], lr=0.1, **kw)
        p.grad = dgrad(p, 1); opt.step()
        p.grad = dgrad(p, 2)
        s = opt.state[p]
        full = s['exp_avg'].full_tensor()
        s['exp_avg'] = distribute_tensor(torch.cat([full, full[:1]]), mesh, [Shard(0)])
        before = snap(opt)
        try:
            opt.step(); r = 'stepped'
        except Exception as e:
            r = f'raised {type(e).__name__}: {str(e)[:150]}'
        out.append(f'{kw}: {r}; changed {diff(before, snap(opt))}')
    return '\n  '.join([''] + out)
if __name__ == '__main__':
    run_world(fn, 2)
