import os, sys, tempfile, torch, torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor, init_device_mesh
import sgdf_erd
from sgdf_erd import SGDF

def init1():
    dist.init_process_group('gloo', store=dist.FileStore(tempfile.mktemp(), 1), rank=0, world_size=1)
    return init_device_mesh('cpu', (1,))

def dparam(mesh, shape, seed, pl=None):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(distribute_tensor(torch.randn(shape, generator=g), mesh, pl or [Shard(0)]))

def dgrad(p, seed):
    g = torch.Generator().manual_seed(seed)
    return distribute_tensor(torch.randn(p.shape, generator=g), p.device_mesh, p.placements)

def snap(opt):
    out = {}
    for i, p in enumerate(opt.param_groups[0]['params']):
        loc = lambda t: (t.to_local() if isinstance(t, DTensor) else t).detach().clone()
        out[f'p{i}'] = loc(p)
        out[f'g{i}'] = None if p.grad is None else loc(p.grad)
        for k, v in opt.state.get(p, {}).items():
            out[f's{i}.{k}'] = loc(v) if isinstance(v, torch.Tensor) else v
    return out

def diff(a, b):
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in a or k not in b or not (a[k] is b[k] or (isinstance(a[k], torch.Tensor) and torch.equal(a[k], b[k])))]

def run_world(fn, world=2):
    """Run fn(rank, world, mesh) in `world` forked gloo processes; returns their printed lines in rank order."""
    import multiprocessing as mpr
    store = tempfile.mktemp()
    ctx = mpr.get_context('fork')
    q = ctx.Queue()
    def target(rank):
        torch.set_num_threads(1)
        dist.init_process_group('gloo', store=dist.FileStore(store, world), rank=rank, world_size=world)
        try:
            out = fn(rank, world, init_device_mesh('cpu', (world,)))
        except Exception as e:
            out = f'child raised {type(e).__name__}: {e}'[:300]
        q.put((rank, out))
        dist.destroy_process_group()
    ps = [ctx.Process(target=target, args=(r,)) for r in range(world)]
    for p in ps: p.start()
    res = dict(q.get(timeout=120) for _ in ps)
    for p in ps: p.join(30)
    for r in sorted(res): print(f'rank {r}: {res[r]}')
