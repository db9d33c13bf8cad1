# Two DTensor params whose local shards are one tensor (world 1). Since 5b4ea59 the constructor refuses them (its
# shared-memory check reads local shards), as it refuses plain tensors. At 6b1c881 (probe 8) the first step (no
# state yet) stepped both on foreach / single (a double update), the default path made the state and then the
# kernel refused; a later step was refused by the one kernel call on every path.
import os, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
mesh = init1()
for kw in (dict(foreach=True), dict(foreach=False), {}):
    p0 = dparam(mesh, (4, 3), 0)
    p1 = torch.nn.Parameter(DTensor.from_local(p0.to_local(), mesh, p0.placements, run_check=False))
    p0.grad, p1.grad = dgrad(p0, 1), dgrad(p1, 2)
    try:  # (since 5b4ea59 the constructor's shared-memory check reads local shards: refused here)
        opt = SGDF([p0, p1], lr=0.1, **kw)
    except Exception as e:
        print(kw, 'constructor raised', type(e).__name__, str(e)[:100]); continue
    before = snap(opt)
    try:
        opt.step(); r = 'stepped'
    except Exception as e:
        r = f'raised {type(e).__name__}: {str(e)[:120]}'
    print(kw, r, 'changed:', diff(before, snap(opt)))
    try:
        opt.step(); print('   second step: stepped')
    except Exception as e:
        print('   second step raised', type(e).__name__, str(e)[:100])
q0 = torch.nn.Parameter(torch.randn(4, 3)); q1 = torch.nn.Parameter(q0.data)
q0.grad, q1.grad = torch.randn(4, 3), torch.randn(4, 3)
for kw in (dict(foreach=True), {}):
    try:
        SGDF([q0, q1], lr=0.1, **kw).step(); print('plain', kw, 'stepped')
    except Exception as e:
        print('plain', kw, 'raised', type(e).__name__, str(e)[:100])
dist.destroy_process_group()
