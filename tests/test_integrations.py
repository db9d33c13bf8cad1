"""SGDF inside the training tools people use: torch LR schedulers (OneCycleLR cycles betas[0]) and Hugging Face
Trainer with ``optimizers=(SGDF(...), scheduler)``. Results are checked against the float64 reference."""

import pytest
import torch

from sgdf_erd import SGDF
from tests.reference.sgdf_reference import ReferenceSGDF
from tests.test_sgdf import PATHS, TOL, _assert_close, _grads, _make_params


def _step_both(params, opt, ref, gen):
    """One step of the optimizer and of the reference on the same random gradients (drawn on the CPU)."""
    grads = _grads(params, gen)
    for p, g in zip(params, grads):
        p.grad = g.to(p.device)
    opt.step()
    ref.step(grads)


@pytest.mark.parametrize("path", list(PATHS))
def test_one_cycle_lr_cycles_lr_and_beta1(path, device):
    """OneCycleLR with cycle_momentum drives (lr, betas[0]) every step; the step must use the values in force."""
    cpu_params = _make_params(torch.float32, seed=11)
    params = [torch.nn.Parameter(p.detach().to(device)) for p in cpu_params]
    opt = SGDF(params, lr=0.1, **PATHS[path])
    steps = 12
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps, base_momentum=0.8,
                                                max_momentum=0.95, cycle_momentum=True)
    ref = ReferenceSGDF(cpu_params, lr=0.1)
    gen = torch.Generator().manual_seed(3)
    seen_beta1 = set()
    for _ in range(steps):
        group = opt.param_groups[0]
        ref.h["lr"], ref.h["b1"] = group["lr"], group["betas"][0]
        seen_beta1.add(round(group["betas"][0], 6))
        _step_both(params, opt, ref, gen)
        sched.step()
    assert len(seen_beta1) > 3  # beta1 really cycled
    _assert_close([p.detach().cpu() for p in params], ref, torch.float32)


@pytest.mark.parametrize("path", ["fused", "foreach"])
def test_scheduler_with_tensor_lr_writes_in_place(path, device):
    """A tensor lr (capturable / CUDA-graph setups) is updated in place by torch's schedulers; the next step reads
    the new value without the optimizer being rebuilt."""
    cpu_params = _make_params(torch.float32, shapes=[(5, 4), (9,)], seed=12)
    params = [torch.nn.Parameter(p.detach().to(device)) for p in cpu_params]
    lr = torch.tensor(0.1, device=device)
    opt = SGDF(params, lr=lr, capturable=True, **PATHS[path])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    ref = ReferenceSGDF(cpu_params, lr=0.1)
    gen = torch.Generator().manual_seed(4)
    for _ in range(6):
        ref.h["lr"] = float(opt.param_groups[0]["lr"])
        _step_both(params, opt, ref, gen)
        sched.step()
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.1 * 0.5**3)
    _assert_close([p.detach().cpu() for p in params], ref, torch.float32)


def test_hugging_face_trainer_takes_sgdf(tmp_path):
    """transformers.Trainer(optimizers=(SGDF(...), scheduler)) trains with SGDF: every optimizer step is an SGDF
    step (the state's step count), the scheduler drives lr, and the loss falls on a learnable task."""
    transformers = pytest.importorskip("transformers", reason="needs transformers (pip install transformers "
                                                              "accelerate)")
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")

    class Regressor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 1)

        def forward(self, x, labels=None):
            prediction = self.linear(x).squeeze(-1)
            return {"loss": torch.nn.functional.mse_loss(prediction, labels), "logits": prediction}

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=gen)
    y = x @ torch.randn(8, generator=gen)
    data = [{"x": x[i], "labels": y[i]} for i in range(len(x))]
    model = Regressor()
    opt = SGDF(model.parameters(), lr=0.2)
    max_steps = 40
    sched = transformers.get_linear_schedule_with_warmup(opt, num_warmup_steps=4, num_training_steps=max_steps)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=32,
                                          max_steps=max_steps, logging_steps=10, report_to=[], save_strategy="no",
                                          use_cpu=True, disable_tqdm=True, seed=0)
    initial = torch.nn.functional.mse_loss(model.linear(x).squeeze(-1), y).item()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, sched))
    trainer.train()
    assert trainer.optimizer.optimizer is opt if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer is opt
    assert float(opt.state[model.linear.weight]["step"]) == max_steps
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # the linear schedule reached its end
    final = torch.nn.functional.mse_loss(model.linear(x).squeeze(-1), y).item()
    assert final < 0.5 * initial


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("fused", [None, False])
def test_lightning_trains_with_mixed_precision_and_gradient_clipping(precision, fused):
    """Lightning refuses gradient clipping with an optimizer that unscales gradients inside step() (it advertises
    `_step_supports_amp_scaling`); SGDF's default (fused too) must leave unscaling to the scaler, as AdamW's does,
    so that `gradient_clip_val` works with mixed precision. Every optimizer step is an SGDF step and the loss falls."""
    lightning = pytest.importorskip("lightning", reason="needs lightning (pip install lightning)")
    if precision == "16-mixed" and not torch.cuda.is_available():
        pytest.skip("float16 mixed precision (with a GradScaler) needs a GPU in Lightning; on the CPU it falls back "
                    "to bf16-mixed")

    class Regressor(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.linear(x).squeeze(-1).float(), y)

        def configure_optimizers(self):
            return SGDF(self.parameters(), lr=0.2, fused=fused)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=gen)
    y = x @ torch.randn(8, generator=gen)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    torch.manual_seed(0)
    model = Regressor()
    initial = torch.nn.functional.mse_loss(model.linear(x).squeeze(-1), y).item()
    max_steps = 40
    trainer = lightning.Trainer(accelerator="gpu" if precision == "16-mixed" else "cpu", devices=1,
                                precision=precision, gradient_clip_val=0.5, max_steps=max_steps, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    opt = trainer.optimizers[0]
    assert isinstance(opt, SGDF) and not opt._step_supports_amp_scaling
    assert float(opt.state[model.linear.weight]["step"]) == max_steps
    final = torch.nn.functional.mse_loss(model.linear.cpu()(x).squeeze(-1), y).item()
    assert final < 0.5 * initial
