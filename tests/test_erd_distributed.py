"""Two CPU processes (gloo): ERDLoss sums its per-bin statistics over ranks, so both ranks hold the statistics
of the union of their batches."""

import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.reference import erd_reference as ref

NUM_BINS, DECAY, STEPS = 6, 0.7, 3


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_batch(rank, step):
    g = torch.Generator().manual_seed(100 * step + rank)
    batch = 10 + 3 * rank  # ranks need not hold equal batches
    output = torch.randn(batch, 2, 5, generator=g)
    target = torch.randn(batch, 2, 5, generator=g)
    logsnr = torch.rand(batch, generator=g, dtype=torch.float64) * 24 - 12
    return output, target, torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def worker(rank, world_size, port, out_dir, tests_dir):
    sys.path.insert(0, tests_dir)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        from sgdf_erd.erd import ERDLoss

        torch.set_num_threads(1)
        loss_fn = ERDLoss("eps", num_bins=NUM_BINS, ema_decay=DECAY)
        local = ERDLoss("eps", num_bins=NUM_BINS, ema_decay=DECAY, sync_statistics=False)
        for step in range(STEPS):
            batch = rank_batch(rank, step)
            loss_fn(*batch)
            local(*batch)
        torch.save({"synced": (loss_fn.statistics(), loss_fn.statistics(ema=True)),
                    "local": local.statistics()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_statistics_synced_over_two_ranks(tmp_path):
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    mp.spawn(worker, args=(2, free_port(), str(tmp_path), tests_dir), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    def union(step):
        parts = [rank_batch(r, step) for r in range(2)]
        output, target, alpha, sigma = (torch.cat(x) for x in zip(*parts))
        return ref.per_sample_mse(output, target), ref.erd_weight(alpha, sigma, "eps"), alpha, sigma

    last = union(STEPS - 1)
    expected_last = ref.batch_statistics(*last, NUM_BINS, -10.0, 10.0)
    expected_ema = ref.running_statistics([union(s) for s in range(STEPS)], DECAY, NUM_BINS, -10.0, 10.0)
    for key in ("count", "mse_mean", "mse_var", "loss_mean", "loss_share"):
        last0, ema0 = results[0]["synced"]
        last1, ema1 = results[1]["synced"]
        assert torch.equal(last0[key].nan_to_num(-1), last1[key].nan_to_num(-1)), key  # same bits on both ranks
        assert torch.equal(ema0[key].nan_to_num(-1), ema1[key].nan_to_num(-1)), key
        atol = 1e-6 if key == "mse_var" else 1e-12
        torch.testing.assert_close(last0[key], expected_last[key], rtol=1e-5, atol=atol, equal_nan=True)
        torch.testing.assert_close(ema0[key], expected_ema[key], rtol=1e-5, atol=atol, equal_nan=True)
    # without syncing, each rank sees its own batch only
    assert results[0]["local"]["count"].sum() == 10 and results[1]["local"]["count"].sum() == 13
