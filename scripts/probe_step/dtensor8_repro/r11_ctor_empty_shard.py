# (rerun after d34fa82) D2 at construction: two DTensor params over one local tensor, (1, 4) Shard(0) on 2 ranks
# (rank 1's shard is empty). The constructor's shared-memory check now reads local shards: rank 0 refuses, rank 1
# builds the optimizer and steps both params (in a real job rank 1 would then wait in its next collective).
import os, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
def fn(rank, world, mesh):
    p0 = dparam(mesh, (1, 4), 0)
    p1 = torch.nn.Parameter(DTensor.from_local(p0.to_local(), mesh, p0.placements, shape=p0.shape,
                                               stride=p0.stride(), run_check=False))
    try:
        opt = SGDF([p0, p1], lr=0.1)
    except Exception as e:
        return f'constructor raised {type(e).__name__}: {str(e)[:90]}'
    for p in (p0, p1):  # (grads without a collective: rank 0 has left)
        p.grad = DTensor.from_local(torch.randn(p.to_local().shape), mesh, p.placements, shape=p.shape,
                                    stride=p.stride(), run_check=False)
    opt.step()
    return f'constructed, local shard numel {p0.to_local().numel()}; stepped, step counts ' \
           f'{[float(opt.state[p]["step"]) for p in (p0, p1)]}'
if __name__ == '__main__':
    run_world(fn, 2)
