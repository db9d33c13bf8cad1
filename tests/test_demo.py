"""End-to-end smoke run of ``python -m sgdf_erd.demo`` (tiny budget, two seeds): report, figures and tables exist
and are well formed; the intervals and paired differences match a hand calculation; bad arguments fail with a
clear message."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
METHODS = ["erd+sgdf", "constant+sgdf", "min_snr+sgdf", "erd+adamw", "constant+adamw", "erd+adasgdf",
           "constant+adasgdf"]
FIGURES = ["samples_overview.png", "real_heldout.png", "weights_loss_share.png", "ntk_effective_rank.png",
           "training_curves.png", "convergence.png"] + [f"samples_{m.replace('+', '_')}.png" for m in METHODS]
# two-sided 95% Student-t quantiles t_{0.975, df} from a printed table (NIST/SEMATECH e-Handbook, 1.3.6.7.2),
# independent of the scipy call under test
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}


def _run_demo(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "sgdf_erd.demo", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _tables(markdown: str):
    """Consecutive runs of lines starting with '|'."""
    tables, current = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = _run_demo("--steps", "6", "--seeds", "2", "--num-samples", "24", "--sample-steps", "3", "--out",
                     str(out), "--no-progress", "--threads", "1", "--workers", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_demo_prints_where_the_report_is(smoke_run):
    out, stdout = smoke_run
    match = re.search(r"^Report: (.+report\.md)$", stdout, re.M)
    assert match, stdout[-2000:]
    assert Path(match.group(1)).resolve() == (out / "report.md").resolve()


def test_demo_writes_every_figure_as_png(smoke_run):
    out, _ = smoke_run
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) > 1000, name
    text = (out / "report.md").read_text()
    for name in re.findall(r"\]\(([^)]+\.png)\)", text):  # every figure the report links exists
        assert (out / name).is_file(), name


def test_demo_report_tables_are_well_formed(smoke_run):
    out, _ = smoke_run
    text = (out / "report.md").read_text()
    for heading in ("## Sample quality per method", "## Paired differences", "## Convergence", "## Step time",
                    "## Per-bin loss share", "## NTK effective rank per log-SNR bin", "## Training curves"):
        assert heading in text
    tables = _tables(text)
    assert len(tables) >= 4
    for table in tables:
        width = table[0].count("|")
        assert re.fullmatch(r"\|(---\|)+", table[1]), table[1]
        for row in table:
            assert row.count("|") == width, row
            assert "nan" not in row.lower(), row
    quality = next(t for t in tables if "FD (lower better)" in t[0])
    for method in METHODS:
        assert any(f"**{method}**" in row for row in quality), method
    loss_share = next(t for t in tables if t[0].startswith("| log-SNR bin |") and "erd+sgdf" in t[0])
    assert len(loss_share) == 2 + 16  # header, rule, one row per bin
    for col in range(1, len(METHODS) + 1):  # each method's shares add up to 100 %
        shares = [float(row.split("|")[col + 1]) for row in loss_share[2:]]
        assert sum(shares) == pytest.approx(100.0, abs=0.05 * len(shares) + 1e-6)  # rounded to 0.1 each


def test_demo_results_json_is_consistent(smoke_run):
    out, _ = smoke_run
    res = json.loads((out / "results.json").read_text())
    assert list(res["runs"]) == METHODS
    assert res["smoke"] is True and res["seeds"] == [0, 1]
    for name, runs in res["runs"].items():
        assert [r["seed"] for r in runs] == [0, 1]
        for run in runs:
            assert run["name"] == name
            assert len(run["losses"]) == 6
            assert np.isfinite(run["losses"]).all()
            assert run["quality"]["fd"] >= 0
            assert 0 <= run["quality"]["confidence"] <= 1
            assert 0 <= run["quality"]["coverage"] <= 1
            assert [c["step"] for c in run["checkpoints"]] == [2, 3, 6]  # 25%, 50%, 100% of 6 steps
            assert run["checkpoints"][-1]["quality"] == run["quality"]
        assert len(runs[0]["ntk_end"]["effective_rank"]) == 16  # the first seed's spectrum only
        assert runs[1]["ntk_end"] is None
    # the same seed gives every method the same initial weights and data: the step-0 held-out error agrees
    assert len({runs[0]["eval_mse"][0] for runs in res["runs"].values()}) == 1
    assert res["runs"]["erd+sgdf"][0]["eval_mse"][0] != res["runs"]["erd+sgdf"][1]["eval_mse"][0]
    paths = [r["path"] for r in res["optimizer_timing"]]
    assert "SGDF fused" in paths and "SGDF foreach" in paths
    # ERD weights for eps prediction are sigma (VP): rising towards the noisy end
    erd = res["weight_curves"]["erd"]
    assert erd["weight"][0] > erd["weight"][-1]


def _hand_interval(values):
    """Mean and 95% half-width written out: sum / n, sqrt(sum of squared deviations / (n - 1)) / sqrt(n) * t."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T_975[n - 1] * sd / math.sqrt(n)


def _cell(text):
    """'1.23 +- 0.45' -> (1.23, 0.45)."""
    mean, half = text.strip().split(" +- ")
    return float(mean), float(half)


def test_demo_intervals_and_paired_differences_match_a_hand_calculation(smoke_run):
    out, _ = smoke_run
    res = json.loads((out / "results.json").read_text())
    tables = _tables((out / "report.md").read_text())
    quality = next(t for t in tables if "FD (lower better)" in t[0])
    for method in METHODS:
        fds = [r["quality"]["fd"] for r in res["runs"][method]]
        mean, half = _hand_interval(fds)
        got = res["analysis"]["methods"][method]["fd"]
        assert got["mean"] == pytest.approx(mean, rel=1e-9)
        assert got["half_width"] == pytest.approx(half, rel=2e-3)  # table quantile has 5 digits
        row = next(r for r in quality if f"**{method}**" in r)
        shown_mean, shown_half = _cell(row.split("|")[2])
        assert shown_mean == pytest.approx(mean, abs=0.006) and shown_half == pytest.approx(half, rel=2e-3,
                                                                                             abs=0.006)
        # held-out eps-MSE at every checkpoint (the convergence curves)
        for k, point in enumerate(res["analysis"]["methods"][method]["checkpoints"]):
            mses = [r["checkpoints"][k]["heldout_mse"] for r in res["runs"][method]]
            mean, half = _hand_interval(mses)
            assert point["heldout_mse"]["mean"] == pytest.approx(mean, rel=1e-9)
            assert point["heldout_mse"]["half_width"] == pytest.approx(half, rel=2e-3)
    differences = next(t for t in tables if "FD difference" in t[0])
    expected = [("erd+sgdf", "constant+sgdf"), ("min_snr+sgdf", "constant+sgdf"), ("erd+adamw", "constant+adamw"),
                ("erd+adasgdf", "constant+adasgdf"), ("erd+sgdf", "erd+adamw"), ("constant+sgdf", "constant+adamw"),
                ("erd+adasgdf", "erd+adamw"), ("constant+adasgdf", "constant+adamw")]
    assert [(d["a"], d["b"]) for d in res["analysis"]["comparisons"]] == expected
    for (a, b), d in zip(expected, res["analysis"]["comparisons"]):
        per_seed = [x["quality"]["fd"] - y["quality"]["fd"] for x, y in zip(res["runs"][a], res["runs"][b])]
        mean, half = _hand_interval(per_seed)
        assert d["fd"]["mean"] == pytest.approx(mean, rel=1e-9, abs=1e-12)
        assert d["fd"]["half_width"] == pytest.approx(half, rel=2e-3)
        resolved = abs(mean) > half
        row = next(r for r in differences if f"{a} - {b}" in r)
        cells = row.split("|")
        shown_mean, shown_half = _cell(cells[2])
        assert shown_mean == pytest.approx(mean, abs=0.006)
        if resolved:
            assert ("lower (better)" if mean < 0 else "higher (worse)") in cells[3]
        else:
            assert "unresolved" in cells[3]
    summary = "\n".join(res["summary"])
    assert "erd vs constant weighting (sgdf) (erd+sgdf - constant+sgdf): FD" in summary
    assert "Does erd weighting accelerate convergence" in summary


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=6), st.floats(-10, 10))
def test_interval_and_paired_difference_match_the_t_table(values, shift):
    from sgdf_erd.demo.stats import interval, paired_difference
    mean, half = _hand_interval(values)
    got = interval(values)
    assert got["n"] == len(values)
    assert got["mean"] == pytest.approx(mean, rel=1e-9, abs=1e-9)
    assert got["half_width"] == pytest.approx(half, rel=2e-3, abs=1e-9)
    assert got["low"] == pytest.approx(got["mean"] - got["half_width"]) and got["high"] == pytest.approx(
        got["mean"] + got["half_width"])
    other = [v - shift for v in values]  # a constant paired shift: zero spread, resolved unless the shift is 0
    d = paired_difference(values, other)
    assert d["mean"] == pytest.approx(shift, abs=1e-9)
    if abs(shift) > 1e-6:
        assert d["half_width"] < 1e-6 and d["resolved"]


def test_interval_by_hand_known_numbers():
    from sgdf_erd.demo.stats import format_interval, interval, paired_difference
    # 1, 2, 3, 4: mean 2.5, sd sqrt(5/3) = 1.2910, half-width 3.182 * 1.2910 / 2 = 2.0540
    got = interval([1.0, 2.0, 3.0, 4.0])
    assert got["mean"] == 2.5 and got["half_width"] == pytest.approx(2.0540, abs=1e-3)
    # differences 0.5, 1, 1: mean 0.8333, sd 0.2887, half-width 4.303 * 0.2887 / sqrt(3) = 0.7172: excludes 0
    d = paired_difference([1.0, 2.0, 3.0], [0.5, 1.0, 2.0])
    assert d["mean"] == pytest.approx(0.8333, abs=1e-4) and d["half_width"] == pytest.approx(0.7172, abs=1e-3)
    assert d["resolved"] is True
    # differences 1, -1: mean 0, interval includes 0
    assert paired_difference([1.0, 0.0], [0.0, 1.0])["resolved"] is False
    one = paired_difference([3.0], [1.0])  # one seed: a value, no interval, nothing resolved
    assert one["mean"] == 2.0 and one["half_width"] is None and one["resolved"] is None
    assert format_interval(one) == "2.00" and format_interval(d, 3, signed=True) == "+0.833 +- 0.717"
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="non-empty"):
        interval([])


def test_demo_one_seed_says_there_are_no_intervals(tmp_path):
    proc = _run_demo("--steps", "3", "--seeds", "1", "--methods", "erd+sgdf,constant+sgdf", "--num-samples",
                     "12", "--sample-steps", "2", "--out", str(tmp_path), "--no-progress", "--threads", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (tmp_path / "report.md").read_text()
    assert "One seed" in text and "no interval" in text
    quality = next(t for t in _tables(text) if "FD (lower better)" in t[0])
    assert not any("+-" in row for row in quality)
    res = json.loads((tmp_path / "results.json").read_text())
    (d,) = res["analysis"]["comparisons"]
    assert d["fd"]["half_width"] is None and d["fd"]["resolved"] is None


def test_demo_worker_processes_give_the_same_runs(smoke_run, tmp_path):
    """Runs are fully seeded: spreading them over processes (and running fewer methods) changes none of them."""
    out, _ = smoke_run
    proc = _run_demo("--steps", "6", "--seeds", "2", "--methods", "erd+sgdf,constant+adamw", "--num-samples", "24",
                     "--sample-steps", "3", "--out", str(tmp_path), "--no-progress", "--threads", "1",
                     "--workers", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 worker processes" in proc.stdout
    alone = json.loads((out / "results.json").read_text())["runs"]
    spread = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert list(spread) == ["erd+sgdf", "constant+adamw"]
    cpu = json.loads((tmp_path / "results.json").read_text())["cpu_s"]
    run_cpu = [r["cpu_s"] for runs in spread.values() for r in runs]
    assert all(c > 0 for c in run_cpu) and cpu["workers"] >= sum(run_cpu)
    # on idle cores: at least this process's work plus the longest run, at most all of it one after the other
    assert cpu["main"] + max(run_cpu) <= cpu["idle_wall_s"] <= cpu["main"] + cpu["workers"] + 1e-9
    assert "idle cores about" in (tmp_path / "report.md").read_text()
    for name in spread:
        for a, b in zip(alone[name], spread[name]):
            assert a["losses"] == b["losses"] and a["quality"] == b["quality"] and a["eval_mse"] == b["eval_mse"]


def test_schedule_seconds_hands_runs_to_the_first_free_worker():
    from sgdf_erd.demo.runs import schedule_seconds
    assert schedule_seconds([3, 1, 1, 1], 2) == 3  # one worker takes the long run, the other the three short ones
    assert schedule_seconds([1, 1, 1, 3], 2) == 4  # the long run comes last: it starts when a worker frees at 1
    assert schedule_seconds([2, 2], 1) == 4 and schedule_seconds([2], 3) == 2 and schedule_seconds([], 2) == 0


LR_SWEEP = ROOT / "benchmarks" / "results" / "demo_lr_sweep_cpu.json"


@pytest.mark.skipif(not LR_SWEEP.exists(), reason="needs the source tree's benchmarks/results/ (the committed sweep)")
def test_method_table_pairs_and_learning_rates_match_the_sweep():
    from sgdf_erd.demo.methods import DEFAULT_LR, OPTIMIZERS, comparisons
    sweep = json.loads(LR_SWEEP.read_text())
    assert sweep["best"] == DEFAULT_LR  # the defaults cite the committed sweep
    for optimizer, grid in sweep["grid"].items():  # which swept the table's grids
        assert grid == list(OPTIMIZERS[optimizer].lr_grid), optimizer
    # a new optimizer is one entry per method: its comparisons with the reference follow
    names = ["erd+adasgdf", "constant+adasgdf", "erd+adamw", "constant+adamw"]
    assert [(c["a"], c["b"], c["kind"]) for c in comparisons(names)] == [
        ("erd+adasgdf", "constant+adasgdf", "weighting"), ("erd+adamw", "constant+adamw", "weighting"),
        ("erd+adasgdf", "erd+adamw", "optimizer"), ("constant+adasgdf", "constant+adamw", "optimizer")]


def test_a_new_optimizer_is_one_table_entry(monkeypatch):
    """One OPTIMIZERS entry: the lr sweep covers it with the reference optimizer's weightings, and the demo trains
    it (given an lr until DEFAULT_LR has its sweep's best)."""
    from sgdf_erd.demo import methods
    from sgdf_erd.demo.__main__ import _parse_methods
    from sgdf_erd.demo.train import Method, make_optimizer

    assert methods.sweep_pairs() == list(methods.DEFAULT_LR)
    entry = methods.OptimizerEntry(lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
                                   (0.01, 0.02, 0.04, 0.08, 0.16))
    monkeypatch.setitem(methods.OPTIMIZERS, "sgdm", entry)
    assert methods.sweep_pairs() == list(methods.DEFAULT_LR) + ["erd+sgdm", "constant+sgdm"]
    (method,) = _parse_methods("erd+sgdm", {"erd+sgdm": 0.04})
    opt = make_optimizer(method, [torch.nn.Parameter(torch.zeros(3))])
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.04
    with pytest.raises(SystemExit, match="--lr erd\\+sgdm=LR"):
        _parse_methods("erd+sgdm", {})


@pytest.mark.parametrize("args, message", [
    (["--methods", "erd+sgd"], "WEIGHTING+OPTIMIZER"),
    (["--methods", "nonsense+sgdf"], "weighting"),
    (["--data", "/nonexistent/folder"], "does not exist"),
    (["--steps", "0"], "--steps"),
    (["--seeds", "0"], "--seeds"),
    (["--workers", "-1"], "--workers"),
    (["--lr", "erd+sgdf=fast"], "WEIGHTING+OPTIMIZER=LR"),
    (["--lr", "erd+sgdf=-1"], "LR > 0"),
    (["--lr", "p2+sgdf=0.1"], "not among --methods"),
    (["--methods", "p2+sgdf"], "--lr p2+sgdf=LR"),
])
def test_demo_rejects_bad_arguments(tmp_path, args, message):
    from sgdf_erd.demo.__main__ import main

    with pytest.raises(SystemExit) as info:  # in-process: fails before any training
        main(["--out", str(tmp_path), "--no-progress", *args])
    assert message in str(info.value.code)


def test_demo_data_loads_user_npy_and_image_folders(tmp_path):
    from PIL import Image
    from sgdf_erd.demo.data import load_data

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(40, 12, 12, 3), dtype=np.uint8)
    np.save(tmp_path / "imgs.npy", arr)
    data = load_data(str(tmp_path / "imgs.npy"), size=8, seed=0)
    assert data.train_x.shape[1:] == (1, 8, 8) and len(data.train_x) + len(data.test_x) == 40
    assert data.train_x.min() >= -1 and data.train_x.max() <= 1
    assert "k-means" in data.label_source
    for cls in ("a", "b"):
        (tmp_path / "folder" / cls).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, size=(10, 10), dtype=np.uint8)).save(
                tmp_path / "folder" / cls / f"{i}.png")
    data = load_data(str(tmp_path / "folder"), size=16, seed=0)
    assert data.num_classes == 2 and data.train_x.shape[1:] == (1, 16, 16)
    assert sorted(set(data.test_y.tolist())) == [0, 1]  # stratified: both classes held out
    with pytest.raises(ValueError, match="at least 20"):
        np.save(tmp_path / "few.npy", arr[:5])
        load_data(str(tmp_path / "few.npy"))
    with pytest.raises(ValueError, match="shape"):
        np.save(tmp_path / "bad.npy", np.zeros((30, 2, 5, 5, 5)))
        load_data(str(tmp_path / "bad.npy"))
