# A (1, 4) DTensor param sharded Shard(0) over 2 ranks: rank 1's shard is empty. exp_avg replaced by a DTensor over
# the param's own shard (rank 0: the same memory; rank 1: an empty tensor). The kernel's memory check sees the
# overlap on rank 0 only: rank 0 raises, rank 1 steps (its other params too, and its step counts advance).
import os, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
def fn(rank, world, mesh):
    p0, p1 = dparam(mesh, (1, 4), 0), dparam(mesh, (5, 4), 1)
    opt = SGDF([p0, p1], lr=0.1)
    p0.grad, p1.grad = dgrad(p0, 2), dgrad(p1, 3)
    opt.step()
    p0.grad, p1.grad = dgrad(p0, 4), dgrad(p1, 5)
    s = opt.state[p0]
    s['exp_avg'] = DTensor.from_local(p0.to_local(), mesh, p0.placements, shape=p0.shape, stride=p0.stride(),
                                      run_check=False)
    before = snap(opt)
    try:
        opt.step(); r = 'stepped'
    except Exception as e:
        r = f'raised {type(e).__name__}: {str(e)[:90]}'
    return f'{r}; changed {diff(before, snap(opt))}'
if __name__ == '__main__':
    run_world(fn, 2)
