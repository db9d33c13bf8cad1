# torch.compile of an optimizer step on DTensor params (Shard(0), 5 rows over 2 ranks: local 3 + 2), run twice with
# one TORCHINDUCTOR_CACHE_DIR: python r7_compile_cache.py {sgdf|adamw}; the second run (warm cache) fails on rank 1.
import os, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
WHICH = sys.argv[1]
def fn(rank, world, mesh):
    ps = [dparam(mesh, (5, 4), i) for i in range(2)]
    opt = (SGDF(ps, lr=0.1) if WHICH == 'sgdf' else torch.optim.AdamW(ps, lr=0.1, foreach=True))
    for step in range(3):
        for i, p in enumerate(ps):
            p.grad = dgrad(p, 10 * step + i)
        try:
            torch.compile(opt.step)()
        except Exception as e:
            return f'step {step} raised {type(e).__name__}: {str(e)[:90]}'
    return 'stepped 3 times'
if __name__ == '__main__':
    run_world(fn, 2)
