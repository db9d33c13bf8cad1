# A step count replaced by a Replicate DTensor (world 1): refused before any write, but with DTensor's dispatch
# message about the kernel's op, not a message of SGDF naming the state entry.
import os, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
mesh = init1()
for kw in ({}, dict(foreach=True), dict(foreach=False)):
    p = dparam(mesh, (4, 3), 0)
    opt = SGDF([p], lr=0.1, **kw)
    p.grad = dgrad(p, 1); opt.step()
    p.grad = dgrad(p, 2)
    opt.state[p]['step'] = distribute_tensor(opt.state[p]['step'].clone(), mesh, [Replicate()])
    before = snap(opt)
    try:
        opt.step(); r = 'stepped'
    except Exception as e:
        r = f'raised {type(e).__name__}: {str(e)[:140]}'
    print(kw, r, '; changed', diff(before, snap(opt)))
dist.destroy_process_group()
