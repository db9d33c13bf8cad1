"""End-to-end smoke run of ``python -m sgdf_erd.demo`` (tiny budget): report, figures and tables exist and are
well formed; bad arguments fail with a clear message."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["erd+sgdf", "constant+sgdf", "min_snr+sgdf", "erd+adamw", "constant+adamw"]
FIGURES = ["samples_overview.png", "real_heldout.png", "weights_loss_share.png", "ntk_effective_rank.png",
           "training_curves.png"] + [f"samples_{m.replace('+', '_')}.png" for m in METHODS]


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
    proc = _run_demo("--steps", "6", "--num-samples", "24", "--sample-steps", "3", "--out", str(out),
                     "--no-progress", "--threads", "1")
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
    for heading in ("## Sample quality per method", "## Step time", "## Per-bin loss share",
                    "## NTK effective rank per log-SNR bin", "## Training curves"):
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
    assert [r["name"] for r in res["runs"]] == METHODS
    assert res["smoke"] is True
    for run in res["runs"]:
        assert len(run["losses"]) == 6
        assert np.isfinite(run["losses"]).all()
        assert run["quality"]["fd"] >= 0
        assert 0 <= run["quality"]["confidence"] <= 1
        assert 0 <= run["quality"]["coverage"] <= 1
        assert len(run["ntk_end"]["effective_rank"]) == 16
    paths = [r["path"] for r in res["optimizer_timing"]]
    assert "SGDF fused" in paths and "SGDF foreach" in paths
    # ERD weights for eps prediction are sigma (VP): rising towards the noisy end
    erd = res["weight_curves"]["erd"]
    assert erd["weight"][0] > erd["weight"][-1]


@pytest.mark.parametrize("args, message", [
    (["--methods", "erd+sgd"], "WEIGHTING+OPTIMIZER"),
    (["--methods", "nonsense+sgdf"], "weighting"),
    (["--data", "/nonexistent/folder"], "does not exist"),
    (["--steps", "0"], "--steps"),
])
def test_demo_rejects_bad_arguments(tmp_path, args, message):
    sys.path.insert(0, str(ROOT / "python"))
    from sgdf_erd.demo.__main__ import main

    with pytest.raises(SystemExit) as info:  # in-process: fails before any training
        main(["--out", str(tmp_path), "--no-progress", *args])
    assert message in str(info.value.code)


def test_demo_data_loads_user_npy_and_image_folders(tmp_path):
    sys.path.insert(0, str(ROOT / "python"))
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
