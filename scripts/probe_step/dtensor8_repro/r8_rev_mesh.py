# A gradient on another DeviceMesh of the same ranks (listed in the reverse order; world 2, even shards). torch
# shards it as the param's mesh would (the group ranks are sorted), so the default path steps correctly; foreach /
# single: DTensor refuses 'different meshes' in the first foreach op, after the step counts were written.
import os, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
from torch.distributed.device_mesh import DeviceMesh
def fn(rank, world, mesh):
    rev = DeviceMesh('cpu', mesh.mesh.flip(-1).clone())
    full_g = torch.arange(16.).reshape(4, 4)
    g = distribute_tensor(full_g, rev, [Shard(0)])
    out = [f'rev coordinate {rev.get_coordinate()}, grad local rows {g.to_local()[:, 0].tolist()}, '
           f'full {g.full_tensor()[:, 0].tolist()}']
    for kw in ({}, dict(foreach=True)):
        p = dparam(mesh, (4, 4), 0)
        q = torch.nn.Parameter(p.full_tensor().clone())
        p.grad = distribute_tensor(full_g, rev, [Shard(0)])
        q.grad = full_g.clone()
        opt = SGDF([p], lr=0.1, **kw)
        p_grad = p.grad
        p.grad = dgrad(p, 9); opt.step()  # (a first step: the state exists)
        p.grad = p_grad
        q_opt = SGDF([q], lr=0.1, **kw)
        q_grad = q.grad
        q.grad = dgrad(p, 9).full_tensor(); q_opt.step()
        q.grad = q_grad
        before = snap(opt)
        try:
            opt.step(); q_opt.step()
            out.append(f'{kw}: stepped; equal to one process: {torch.equal(p.detach().full_tensor(), q.detach())}')
        except Exception as e:
            out.append(f'{kw}: raised {type(e).__name__}: {str(e)[:60]}; changed {diff(before, snap(opt))}')
    return '\n  '.join([''] + out)
if __name__ == '__main__':
    run_world(fn, 2)
