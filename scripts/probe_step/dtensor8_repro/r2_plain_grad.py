# A DTensor param whose .grad is a plain tensor of the full shape (world 1).
import os, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
mesh = init1()
for kw in ({}, dict(fused=True), dict(foreach=True), dict(foreach=False)):
    for pre in (0, 1):
        p = dparam(mesh, (4, 3), 0)
        opt = SGDF([p], lr=0.1, **kw)
        for _ in range(pre):
            p.grad = dgrad(p, 1); opt.step()
        p.grad = dgrad(p, 2).full_tensor()
        before = snap(opt)
        try:
            opt.step(); r = 'stepped'
        except Exception as e:
            r = f'raised {type(e).__name__}: {str(e)[:110]}'
        print(kw, f'pre{pre}', r, 'changed:', diff(before, snap(opt)))
dist.destroy_process_group()
