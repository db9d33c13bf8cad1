# One param group: a DTensor param and a plain param (world 1). SGDF foreach / single: refused by torch's foreach op
# after the state is made and (pre1) step counts advanced. torch.optim.AdamW(foreach=True) for comparison.
import os, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
mesh = init1()
for cls, kw in ((SGDF, dict(foreach=True)), (SGDF, dict(foreach=False)), (SGDF, {}), (torch.optim.AdamW, dict(foreach=True))):
    for pre in (0, 1):
        p0 = dparam(mesh, (4, 3), 0)
        p1 = torch.nn.Parameter(torch.randn(3, 2))
        opt = cls([p0, p1], lr=0.1, **kw)
        r = ''
        for _ in range(pre):
            p0.grad, p1.grad = dgrad(p0, 1), torch.randn(3, 2)
            try: opt.step()
            except Exception as e: r = 'pre-step raised; '
        p0.grad, p1.grad = dgrad(p0, 1), torch.randn(3, 2)
        before = snap(opt)
        try:
            opt.step(); r += 'stepped'
        except Exception as e:
            r += f'raised {type(e).__name__}: {str(e)[:60]}'
        print(cls.__name__, kw, f'pre{pre}', r, 'changed:', diff(before, snap(opt)))
dist.destroy_process_group()
