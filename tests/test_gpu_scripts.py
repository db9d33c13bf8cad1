"""scripts/gpu_check.sh and scripts/gpu_bench.sh in their --dry-run (each stage's CPU counterpart, same time
boxes), with budgets cut through GPU_STAGE_BUDGET_<name> to keep the tests short (the build is skipped: it would
rewrite the library this process has loaded): OUTDIR ends up with summary.txt (one `stage` line per stage with its
budget) and logs.tar.gz only, whether a stage passes, times out, or the whole command is killed (SIGTERM, or
SIGKILL between two snapshots). Also the sanitizer workload's CPU-against-CPU smoke run."""

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECK_STAGES = ["facts", "build", "tests", "memcheck", "racecheck", "synccheck", "initcheck", "compile_tests"]
BENCH_STAGES = ["facts", "build", "sgdf", "sgdf_small", "sgdf_small_2groups", "sgdf_storage", "erd", "ntk", "targets"]
STAGE_LINE = re.compile(r"^stage (\w+): (ok|FAILED \(exit \d+\)|TIMEOUT|SKIPPED|KILLED) in (\d+)s \(budget (\d+)s\)$")
RUNNING_LINE = re.compile(r"^stage (\w+): RUNNING for \d+s \(budget \d+s\)")

pytestmark = pytest.mark.skipif(not all(shutil.which(tool) for tool in ("bash", "timeout", "tar")) or
                                not (ROOT / "scripts").is_dir(),
                                reason="needs bash, timeout, tar and the source tree's scripts/")


def launch(script, out, tmp_path, budgets, **env):
    """Starts `bash scripts/SCRIPT --dry-run OUT` with these stage budgets; its temporary files under tmp_path."""
    variables = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path), SNAPSHOT_S="1", **env)
    # (facts imports torch: 60 s, as a loaded machine may need, unless a test sets it)
    budgets = {"facts": 60, **budgets}
    variables.update({f"GPU_STAGE_BUDGET_{name}": str(seconds) for name, seconds in budgets.items()})
    return subprocess.Popen(["bash", str(ROOT / "scripts" / script), "--dry-run", str(out)], env=variables,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stage_lines(out):
    """{stage: (status, seconds, budget)} from summary.txt, and its whole text."""
    text = (out / "summary.txt").read_text()
    stages = {m[1]: (m[2], int(m[3]), int(m[4])) for m in map(STAGE_LINE.match, text.splitlines()) if m}
    return stages, text


def logs_in(out):
    with tarfile.open(out / "logs.tar.gz") as tar:
        return {pathlib.PurePath(name).name for name in tar.getnames()}


def default_budget_total(text):
    return int(re.search(r"stage budgets add up to (\d+)s", text)[1])


def wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def processes_under(path):
    """Processes whose command line names `path` (the stages this test started, through their temporary files)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if str(path).encode() in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


def test_sanitizer_workload_runs_cpu_against_cpu():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "cuda_sanitizer_workload.py"), "cpu"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    ran = [line for line in run.stdout.splitlines() if line.startswith("ran ")]
    assert len(ran) >= 45  # and the 321-chunk tensor on CUDA only
    for variant in ("6 operands", "rounding_offsets", "grouped one-call op", "200 bins", "transposed tiles",
                    "on-chip limit"):
        assert any(variant in line for line in ran), variant
    assert run.stdout.rstrip().endswith("all kernels ran and agree with the CPU")


def test_gpu_check_dry_run_writes_a_line_per_stage_and_reports_a_timeout(tmp_path):
    out = tmp_path / "out"
    proc = launch("gpu_check.sh", out, tmp_path, {"build": 0, "tests": 3, "compile_tests": 0})
    proc.communicate(timeout=120)
    assert proc.returncode != 0  # a stage timed out
    assert sorted(os.listdir(out)) == ["logs.tar.gz", "summary.txt"]
    stages, text = stage_lines(out)
    assert list(stages) == CHECK_STAGES, text
    assert default_budget_total(text) <= 480
    assert stages["facts"][0] == "ok"
    assert stages["build"][0] == "SKIPPED" and "budget 0" in text
    assert stages["tests"][0] == "TIMEOUT" and stages["tests"][1] <= 3 and stages["tests"][2] == 3
    for tool in ("memcheck", "racecheck", "synccheck", "initcheck"):
        assert stages[tool][0] == "SKIPPED"
    assert "dry run: compute-sanitizer needs a GPU" in text
    assert text.rstrip().splitlines()[-1].startswith("end after")
    assert {"facts.log", "tests.log"} <= logs_in(out)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_gpu_check_killed_mid_stage_leaves_its_evidence(tmp_path, sig):
    out = tmp_path / "out"
    proc = launch("gpu_check.sh", out, tmp_path, {"build": 0, "tests": 60, "compile_tests": 0},
                  DRY_RUN_TESTS="chunk_walk")
    try:
        running = wait_for(lambda: (out / "summary.txt").exists() and
                           "stage tests: RUNNING" in (out / "summary.txt").read_text(), 60)
        assert running, (out / "summary.txt").read_text()
        os.kill(proc.pid, sig)
        proc.communicate(timeout=30)
        if sig == signal.SIGKILL:
            time.sleep(2)  # the snapshot loop notices its parent is gone within a second
            for pid in processes_under(tmp_path):  # the orphaned stage, left to its time box: end it
                os.kill(pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == (143 if sig == signal.SIGTERM else -signal.SIGKILL)
    assert len(os.listdir(out)) <= 8 and {"logs.tar.gz", "summary.txt"} <= set(os.listdir(out))
    stages, text = stage_lines(out)
    assert list(stages)[:2] == ["facts", "build"]
    if sig == signal.SIGTERM:
        assert stages["tests"][0] == "KILLED" and list(stages) == ["facts", "build", "tests"], text
        assert "got SIGTERM during this stage" in text
        assert wait_for(lambda: not processes_under(tmp_path), 10)  # the stage's processes ended with it
    else:  # nothing could run on SIGKILL: the last snapshot says which stage was running
        assert RUNNING_LINE.match(text.rstrip().splitlines()[-1]), text
    assert {"facts.log", "tests.log"} <= logs_in(out)


def test_gpu_bench_dry_run_writes_a_line_per_stage_and_the_targets(tmp_path):
    out = tmp_path / "out"
    budgets = {name: 0 for name in BENCH_STAGES if name not in ("facts", "ntk", "targets")}
    proc = launch("gpu_bench.sh", out, tmp_path, budgets)
    proc.communicate(timeout=120)
    assert sorted(os.listdir(out)) == ["logs.tar.gz", "summary.txt"]
    stages, text = stage_lines(out)
    assert list(stages) == BENCH_STAGES, text
    assert default_budget_total(text) <= 480
    assert stages["ntk"][0] == "ok"
    # targets.py's verdict lines are in the summary; the skipped benchmarks' results are missing (exit 2)
    assert stages["targets"][0] == "FAILED (exit 2)" and proc.returncode != 0
    assert "best torch route / op" in text and "sgdf: no sgdf_cpu*.json" in text
    assert {"ntk.log", "ntk_cpu.json", "targets.log"} <= logs_in(out)


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_bench.sh"])
def test_dry_run_may_follow_outdir_and_a_misspelt_option_is_refused(tmp_path, script):
    stages = CHECK_STAGES if script == "gpu_check.sh" else BENCH_STAGES
    variables = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path),
                     GPU_STAGE_BUDGET_facts="60",
                     **{f"GPU_STAGE_BUDGET_{name}": "0" for name in stages if name != "facts"})
    out = tmp_path / "out"
    run = subprocess.run(["bash", str(ROOT / "scripts" / script), str(out), "--dry-run"], env=variables,
                         capture_output=True, text=True, timeout=120)
    stages_found, text = stage_lines(out)
    assert text.startswith(f"{script} --dry-run:"), text  # not the GPU run (its facts stage fails without a GPU)
    assert stages_found["facts"][0] == "ok" and run.returncode == 0, run.stdout + run.stderr
    for args in (["--dryrun", str(tmp_path / "x")], [str(tmp_path / "x"), str(tmp_path / "y")], []):
        run = subprocess.run(["bash", str(ROOT / "scripts" / script), *args], env=variables, capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 2 and "usage" in run.stderr, run.stderr
        assert not (tmp_path / "x").exists() and not (tmp_path / "--dryrun").exists()
