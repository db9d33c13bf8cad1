"""ERDLoss and SGDF in diffusers' own text-to-image-style training loop (train_text_to_image.py, and the
flow-matching loop of its SD3 scripts) with a tiny UNet2DModel: the loss equals the float64 reference computed from
the scheduler's own alphas_cumprod / sigmas, and Min-SNR equals diffusers' snr_gamma weights
(diffusers.training_utils.compute_snr)."""

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (scripts/run.sh installs it)")
from diffusers import (DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler,  # noqa: E402
                       FlowMatchEulerDiscreteScheduler, UNet2DModel)
from diffusers.training_utils import compute_snr  # noqa: E402

from tests.reference import erd_reference as ref  # noqa: E402
from sgdf_erd import SGDF, ERDLoss, loss_weight  # noqa: E402
from sgdf_erd.erd import schedules  # noqa: E402

F64 = torch.float64
BATCH, SNR_GAMMA = 6, 5.0


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, num_class_embeds=4)


def latents_and_captions(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(BATCH, 3, 8, 8, generator=g), torch.randint(0, 4, (BATCH,), generator=g)


def vp_reference(scheduler, timesteps):
    """alpha, sigma in float64 straight from the scheduler's alphas_cumprod."""
    acp = scheduler.alphas_cumprod.to(F64)[timesteps]
    return acp.sqrt(), (1 - acp).sqrt()


def diffusers_min_snr(scheduler, timesteps, prediction_type):
    """train_text_to_image.py's snr_gamma weights."""
    snr = compute_snr(scheduler, timesteps)
    weights = torch.stack([snr, SNR_GAMMA * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    if prediction_type == "epsilon":
        weights = weights / snr
    elif prediction_type == "v_prediction":
        weights = weights / (snr + 1)
    return weights


@pytest.mark.parametrize("prediction_type,weighting,zero_snr", [
    ("epsilon", "erd", False), ("v_prediction", "erd", True), ("sample", "erd", False),
    ("epsilon", "min_snr", False), ("v_prediction", "min_snr", True)])
def test_ddpm_text_to_image_loop(prediction_type, weighting, zero_snr):
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type,
                              rescale_betas_zero_snr=zero_snr)
    unet = tiny_unet()
    optimizer = SGDF(unet.parameters(), lr=1e-3)
    loss_fn = ERDLoss(scheduler.config.prediction_type, weighting, k=SNR_GAMMA, schedule=scheduler)
    before = [p.detach().clone() for p in unet.parameters()]
    for step in range(3):
        latents, captions = latents_and_captions(step)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (BATCH,))
        timesteps[0] = scheduler.config.num_train_timesteps - 1  # the last step: SNR 0 on a zero-SNR schedule
        noisy_latents = scheduler.add_noise(latents, noise, timesteps)
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = latents
        model_pred = unet(noisy_latents, timesteps, class_labels=captions).sample
        loss = loss_fn(model_pred.float(), target.float(), timesteps=timesteps)

        alpha, sigma = vp_reference(scheduler, timesteps)
        prediction = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[prediction_type]
        weights = ref.baseline_weight(alpha, sigma, prediction, weighting, k=SNR_GAMMA)
        torch.testing.assert_close(loss.double(), ref.loss(model_pred.detach(), target, weights), rtol=1e-5, atol=0)
        if weighting == "min_snr":  # equal to diffusers' own Min-SNR loss, the SNR-0 sample included
            mse = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
            diffusers_loss = (mse * diffusers_min_snr(scheduler, timesteps, prediction_type)).mean()
            torch.testing.assert_close(loss, diffusers_loss, rtol=1e-5, atol=0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert any(not torch.equal(p, b) for p, b in zip(unet.parameters(), before))  # SGDF trained the UNet
    assert int(loss_fn.num_batches_tracked) == 3


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("prediction", ["flow", "flow_prediction", "x0"])
def test_flow_match_loop(shift, prediction):
    # SD3-style: timesteps drawn from the scheduler's table, scale_noise, target noise - latents
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    unet = tiny_unet(1)
    optimizer = SGDF(unet.parameters(), lr=1e-3)
    loss_fn = ERDLoss(prediction, num_bins=8, logsnr_range=(-8.0, 8.0), schedule=scheduler)
    for step in range(2):
        latents, captions = latents_and_captions(step)
        noise = torch.randn_like(latents)
        indices = (torch.rand(BATCH, generator=torch.Generator().manual_seed(step)) * 1000).long()
        timesteps = scheduler.timesteps[indices]
        noisy = scheduler.scale_noise(latents, timesteps, noise)
        target = noise - latents if prediction != "x0" else latents
        model_pred = unet(noisy, timesteps, class_labels=captions).sample
        loss = loss_fn(model_pred, target, timesteps=timesteps)

        sigma = scheduler.sigmas.to(F64)[indices]  # the sigmas scale_noise used
        alpha = 1 - sigma
        weights = ref.erd_weight(alpha, sigma, "x0" if prediction == "x0" else "flow")
        torch.testing.assert_close(loss.double(), ref.loss(model_pred.detach(), target, weights), rtol=1e-5, atol=0)
        expected = ref.batch_statistics(ref.per_sample_mse(model_pred.detach(), target), weights, alpha, sigma, 8,
                                        -8.0, 8.0)
        assert torch.equal(loss_fn.statistics()["count"], expected["count"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_match_schedule_reproduces_scale_noise(shift):
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    schedule = schedules.from_diffusers(scheduler)
    indices = torch.tensor([0, 1, 250, 500, 998, 999])
    timesteps = scheduler.timesteps[indices]
    alpha, sigma = schedule.alpha_sigma(timesteps)
    torch.testing.assert_close(sigma, scheduler.sigmas[indices], rtol=1e-6, atol=1e-7)
    x0, noise = torch.randn(6, 2, 3), torch.randn(6, 2, 3)
    torch.testing.assert_close(schedules.make_noisy(x0, noise, alpha, sigma),
                               scheduler.scale_noise(x0, timesteps, noise), rtol=1e-5, atol=1e-6)
    alpha_prime, sigma_prime = schedule.derivatives(timesteps)
    assert torch.equal(alpha_prime, -torch.ones(6)) and torch.equal(sigma_prime, torch.ones(6))
    # after set_timesteps (inference tables) timesteps still map to the scheduler's sigmas
    scheduler.set_timesteps(10)
    _, sigma = schedule.alpha_sigma(scheduler.timesteps)
    torch.testing.assert_close(sigma, scheduler.sigmas[:10], rtol=1e-6, atol=1e-7)


@settings(max_examples=20, deadline=None)
@given(shift=st.floats(0.2, 8.0), num_train_timesteps=st.integers(2, 2000), data=st.data())
def test_flow_match_timesteps_map_to_the_scheduler_sigmas_drawn(shift, num_train_timesteps, data):
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
    indices = torch.tensor(data.draw(st.lists(st.integers(0, num_train_timesteps - 1), min_size=1, max_size=8)))
    _, sigma = schedules.from_diffusers(scheduler).alpha_sigma(scheduler.timesteps[indices])
    torch.testing.assert_close(sigma, scheduler.sigmas[indices], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("scheduler_cls", [DDPMScheduler, DDIMScheduler])
def test_vp_schedule_reproduces_add_noise(scheduler_cls):
    scheduler = scheduler_cls(num_train_timesteps=1000, beta_schedule="scaled_linear")
    schedule = schedules.from_diffusers(scheduler)
    assert isinstance(schedule, schedules.DiscreteVP)
    timesteps = torch.tensor([0, 10, 500, 999])
    x0, noise = torch.randn(4, 2, 3), torch.randn(4, 2, 3)
    alpha, sigma = schedule.alpha_sigma(timesteps)
    torch.testing.assert_close(schedules.make_noisy(x0, noise, alpha, sigma),
                               scheduler.add_noise(x0, noise, timesteps), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_equals_diffusers_formula(prediction_type):
    scheduler = DDPMScheduler(num_train_timesteps=1000, rescale_betas_zero_snr=True)
    timesteps = torch.arange(1000)
    alpha, sigma = schedules.from_diffusers(scheduler).alpha_sigma(timesteps)
    ours = loss_weight(alpha, sigma, prediction_type, "min_snr", k=SNR_GAMMA)
    theirs = diffusers_min_snr(scheduler, timesteps, prediction_type)
    assert float(compute_snr(scheduler, timesteps[-1:])) == 0.0  # the schedule reaches SNR 0
    if prediction_type == "epsilon":
        # the one documented difference: diffusers' bare formula is 0 / 0 = NaN at SNR 0; ours its limit, 1
        assert torch.isnan(theirs[-1]) and ours[-1] == 1.0
        ours, theirs = ours[:-1], theirs[:-1]
    else:
        assert ours[-1] == 0.0 == theirs[-1]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def test_unknown_scheduler_and_bad_calls_raise():
    with pytest.raises(TypeError, match="EulerDiscreteScheduler.*DiscreteVP"):
        schedules.from_diffusers(EulerDiscreteScheduler())
    with pytest.raises(TypeError, match="no schedule known for object"):
        ERDLoss(schedule=object())
    loss_fn = ERDLoss("epsilon", schedule=DDPMScheduler())
    output = torch.randn(2, 3)
    with pytest.raises(ValueError, match="not both"):
        loss_fn(output, output, torch.ones(2), torch.ones(2), timesteps=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="needs a schedule"):
        ERDLoss()(output, output, timesteps=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="alpha and sigma"):
        ERDLoss()(output, output)
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 1000\)"):
        loss_fn(output, output, timesteps=torch.tensor([1, 1000]))
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 1000\]"):
        ERDLoss("flow", schedule=FlowMatchEulerDiscreteScheduler())(output, output,
                                                                    timesteps=torch.tensor([1.0, 1001.0]))
    with pytest.raises(ValueError, match="unknown prediction"):
        ERDLoss("velocity")
    assert int(loss_fn.num_batches_tracked) == 0 and not loss_fn.running_sums.any()


@pytest.mark.parametrize("scheduler,prediction", [(DDPMScheduler(), "epsilon"),
                                                  (DDIMScheduler(rescale_betas_zero_snr=True), "v_prediction"),
                                                  (FlowMatchEulerDiscreteScheduler(shift=3.0), "flow_prediction")],
                         ids=["ddpm", "ddim_zero_snr", "flow_match"])
def test_timesteps_under_vmap_and_compile(scheduler, prediction):
    """loss_fn(out, target, timesteps=t) with a diffusers schedule under torch.func.vmap (per-sample losses and
    gradients) and torch.compile (one graph): the same numbers as eager calls, uint8 timesteps included."""
    from torch.func import grad, vmap
    g = torch.Generator().manual_seed(3)
    if prediction == "flow_prediction":
        t = scheduler.timesteps[torch.randint(0, len(scheduler.timesteps), (BATCH,), generator=g)]
    else:
        t = torch.randint(0, 1000, (BATCH,), generator=g)
        t[0] = 999  # alpha = 0 on the zero-terminal-SNR schedule
    output, target = torch.randn(BATCH, 3, 4, generator=g), torch.randn(BATCH, 3, 4, generator=g)
    loss_fn = ERDLoss(prediction, schedule=scheduler)
    sample_loss = lambda o, y, ti: loss_fn(o[None], y[None], timesteps=ti[None])  # noqa: E731
    per_sample = vmap(sample_loss)(output, target, t)
    per_sample_grad = vmap(grad(sample_loss))(output, target, t)
    for i in range(BATCH):
        o = output[i:i + 1].clone().requires_grad_(True)
        eager = ERDLoss(prediction, schedule=scheduler)(o, target[i:i + 1], timesteps=t[i:i + 1])
        eager.backward()
        torch.testing.assert_close(per_sample[i], eager.detach(), rtol=1e-6, atol=0)
        torch.testing.assert_close(per_sample_grad[i], o.grad[0], rtol=1e-6, atol=0)
    torch._dynamo.reset()  # a new module to compile: keep clear of the recompile limit (fullgraph fails on it)
    compiled = torch.compile(ERDLoss(prediction, schedule=scheduler), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(output, target, timesteps=t), loss_fn(output, target, timesteps=t),
                               rtol=1e-6, atol=0)
    if prediction != "flow_prediction":
        small = t % 256
        torch.testing.assert_close(compiled(output, target, timesteps=small.to(torch.uint8)),
                                   loss_fn(output, target, timesteps=small), rtol=1e-6, atol=0)
