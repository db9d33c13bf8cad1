# (rerun after d34fa82) Refusals whose messages do not show what is wrong (world 2, Shard(0), even shards):
# a gradient on the param's ranks listed in reverse order (both meshes print as DeviceMesh((2,), 'cpu', stride=(1,)));
# a step count that is a Replicate DTensor ("holds 'step' as torch.float32 on cpu with shape (); it must be a
# one-element float32 tensor on cpu": the word DTensor is missing); a Replicate gradient with GradScaler + fused=True
# (refused, as the kernel unscales it in place, though docs/sgdf.md says a gradient placed otherwise is only read).
import os, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
from torch.distributed.device_mesh import DeviceMesh
def fn(rank, world, mesh):
    out = []
    def attempt(name, opt, edit, scaler=None):
        p = opt.param_groups[0]['params'][0]
        p.grad = dgrad(p, 1); opt.step()
        p.grad = dgrad(p, 2)
        edit(opt, p)
        try:
            if scaler:
                scaler.scale(torch.ones(())); scaler.step(opt)
            else:
                opt.step()
            out.append(f'{name}: stepped')
        except Exception as e:
            out.append(f'{name}: {type(e).__name__}: {e}')
    rev = DeviceMesh('cpu', mesh.mesh.flip(-1).clone())
    attempt('grad on reversed mesh', SGDF([dparam(mesh, (4, 4), 0)], lr=0.1),
            lambda o, p: setattr(p, 'grad', distribute_tensor(p.grad.full_tensor(), rev, [Shard(0)])))
    def step_dt(o, p):
        o.state[p]['step'] = distribute_tensor(o.state[p]['step'].clone(), mesh, [Replicate()])
    attempt('step count a DTensor', SGDF([dparam(mesh, (4, 4), 0)], lr=0.1), step_dt)
    attempt('Replicate grad, GradScaler, fused', SGDF([dparam(mesh, (4, 4), 0)], lr=0.1, fused=True),
            lambda o, p: setattr(p, 'grad', p.grad.redistribute(mesh, [Replicate()])),
            scaler=torch.amp.GradScaler('cpu', init_scale=1.0))
    attempt('Replicate grad, fused', SGDF([dparam(mesh, (4, 4), 0)], lr=0.1, fused=True),
            lambda o, p: setattr(p, 'grad', p.grad.redistribute(mesh, [Replicate()])))
    return '\n  '.join([''] + out)
if __name__ == '__main__':
    run_world(fn, 2)
