# orthogonalize=True on the foreach / single path, DTensor matrices sharded on dim 0 (world 2): torch's DTensor
# matmuls leave the orthogonalised update Replicate for some shapes, and the in-place p += -lr*u is refused by DTensor
# after the filter state and step counts were written.
import os, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
def fn(rank, world, mesh):
    out = []
    for kw in (dict(foreach=True), dict(foreach=False), {}):
        for shape in ((1, 4), (2, 4), (3, 5), (5, 4), (4, 2)):
            p = dparam(mesh, shape, 0)
            opt = SGDF([p], lr=0.1, orthogonalize=True, **kw)
            r = []
            for step in range(2):
                p.grad = dgrad(p, step)
                before = snap(opt)
                try:
                    opt.step(); r.append('stepped')
                except Exception as e:
                    r.append(f'raised {type(e).__name__}: {str(e)[:40]}; changed {diff(before, snap(opt))}')
            out.append(f'{kw} {shape}: {r}')
    return '\n  '.join([''] + out)
if __name__ == '__main__':
    run_world(fn, int(sys.argv[1]) if len(sys.argv) > 1 else 2)
