#!/usr/bin/env bash
# Installs one built wheel next to each supported torch, each in a fresh venv, and runs the whole test suite
# against the installed package; writes a report (OUTFILE.md and OUTFILE.json, default
# benchmarks/results/wheel_matrix) and exits non-zero when any install or test fails.
#
#   bash scripts/check_wheel_matrix.sh dist/sgdf_erd-*.whl [OUTFILE]
#
# Environment:
#   TORCH_SPECS   the torch requirements, one venv each (default: "torch===2.11.0 torch===2.12.1 torch===2.13.0
#                 torch===2.14.1 torch===2.15.0"; `===` matches the version exactly, so pip takes PyPI's build and
#                 not a local "+cpu" one; spell "torch===2.13.0+cpu" to test a CPU build of torch)
#   WHEEL_CACHE   a folder of pre-downloaded wheels pip may take from first (default /work/wheelcache when present)
#   PYTHON        the interpreter the venvs are made from (default python3)
#   WORK          where the venvs and test copies live (default a temporary folder, removed at the end)
#   PYTEST_ARGS   what pytest runs (default "tests", the whole suite; the report records it)
#   REUSE_VENVS=1 with a WORK kept from an earlier run: keep each torch's venv (torch and the test dependencies
#                 already in it) and only replace the wheel; the report says so
#   PIP_CONFIG_FILE=/dev/null  pip's own knob: ignore the machine's pip configuration, e.g. a constraints file
#                 that caps torch below the newest release (the report records it)
#
# Nothing is compiled: pip installs with PATH stripped of the CUDA toolkit and CC=false CXX=false, and the tests
# run the same way, except that CXX stays for the torch.compile tests (Inductor compiles its own generated C++ on
# the CPU; that compiler belongs to torch, sgdf_erd never builds anything at run time). The tests run from a
# copy of tests/ in a folder outside the source tree, so `import sgdf_erd` finds the installed wheel; each run
# records the path it imported from.
set -euo pipefail
{  # read whole before it runs: editing the tree (this file included) during a long run cannot change it
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { echo "usage: bash scripts/check_wheel_matrix.sh WHEEL [OUTFILE]" >&2; exit 2; }
WHEEL=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
[ -f "$WHEEL" ] || { echo "no such wheel: $1" >&2; exit 2; }
OUTFILE=${2:-$ROOT/benchmarks/results/wheel_matrix}
OUTFILE=${OUTFILE%.md}; OUTFILE=${OUTFILE%.json}
read -r -a SPECS <<< "${TORCH_SPECS:-torch===2.11.0 torch===2.12.1 torch===2.13.0 torch===2.14.1 torch===2.15.0}"
PYTHON=${PYTHON:-python3}
read -r -a PYTEST_ARGS <<< "${PYTEST_ARGS:-tests}"
[ -n "${WHEEL_CACHE:-}" ] || { [ -d /work/wheelcache ] && WHEEL_CACHE=/work/wheelcache || WHEEL_CACHE=; }
FIND_LINKS=(); [ -n "$WHEEL_CACHE" ] && FIND_LINKS=(--find-links "$WHEEL_CACHE")
# the package's own test and demo extras (the demo's tests need the latter), and the libraries the integration
# tests drive (Hugging Face Trainer, diffusers)
EXTRAS="[test,demo]"
TEST_DEPS=(transformers accelerate diffusers)

if [ -z "${WORK:-}" ]; then
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/sgdf_erd_matrix.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"
# no CUDA toolkit, no C/C++ compiler for pip: a wheel that would need building fails instead of compiling
CLEAN_PATH=$(printf '%s' "$PATH" | tr ':' '\n' | grep -v -E '(^|/)cuda[^/]*/bin$' | paste -sd: -)
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
tests_commit=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)  # tests/ is copied from here
run_dir() { printf '%s/run-%s' "$WORK" "$(printf '%s' "$1" | tr -c 'A-Za-z0-9.+-' '_')"; }

# one torch: venv, install, tests; writes its result as one JSON line to its run folder's result.json
check_one() {
  local spec=$1 venv run t0 t1 t2 install_ok reused=0
  run=$(run_dir "$spec"); venv=$run/venv
  if [ "${REUSE_VENVS:-0}" = 1 ] && [ -x "$venv/bin/python" ]; then
    reused=1
    find "$run" -mindepth 1 -maxdepth 1 ! -name venv -exec rm -rf {} +
  else
    rm -rf "$run"; mkdir -p "$run"
  fi
  cp -r "$ROOT/tests" "$run/tests"; cp "$ROOT/pytest.ini" "$run/" 2>/dev/null || true
  echo "== $spec: venv $venv$([ $reused = 1 ] && echo ' (reused)')"
  t0=$(date +%s)
  [ $reused = 1 ] || "$PYTHON" -m venv "$venv"
  install_ok=1
  if [ $reused = 1 ]; then
    env PATH="$CLEAN_PATH" CC=false CXX=false "$venv/bin/python" -m pip install -q --no-deps --force-reinstall \
      "$WHEEL" > "$run/install.log" 2>&1 || install_ok=0
  fi
  env PATH="$CLEAN_PATH" CC=false CXX=false "$venv/bin/python" -m pip install -q --only-binary :all: \
    "${FIND_LINKS[@]}" "$spec" "$WHEEL$EXTRAS" "${TEST_DEPS[@]}" >> "$run/install.log" 2>&1 || install_ok=0
  t1=$(date +%s)
  if [ $install_ok = 1 ]; then
    (cd "$run" && env PATH="$CLEAN_PATH" CC=false "$venv/bin/python" -m pytest "${PYTEST_ARGS[@]}" -q -p no:cacheprovider \
      --junitxml="$run/junit.xml" > "$run/pytest.log" 2>&1) || true
  else
    echo "   install failed:"; tail -5 "$run/install.log"
  fi
  t2=$(date +%s)
  (cd "$run" && env PATH="$CLEAN_PATH" "$venv/bin/python" - "$spec" "$WHEEL" "$install_ok" $((t1 - t0)) \
     $((t2 - t1)) $reused > "$run/result.json" <<'EOF'
import json, os, platform, sys, xml.etree.ElementTree as ET
spec, wheel, install_ok, install_s, test_s, reused = sys.argv[1:]
r = {"torch_spec": spec, "wheel": os.path.basename(wheel), "python": platform.python_version(),
     "install_ok": install_ok == "1", "install_s": int(install_s), "tests_s": int(test_s),
     "venv_reused": reused == "1"}
try:
    import torch
    r["torch"] = torch.__version__
    import sgdf_erd
    r["sgdf_erd_imported_from"] = os.path.dirname(sgdf_erd.__file__)
    r["build_info"] = {k: str(v) for k, v in sgdf_erd.build_info().items()}
except Exception as exc:  # recorded, and the counts below show the failure
    r["import_error"] = f"{type(exc).__name__}: {exc}"
counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
skip_reasons = {}
if os.path.exists("junit.xml"):
    root = ET.parse("junit.xml").getroot()
    for suite in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
        n, f, e, s = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        counts["passed"] += n - f - e - s; counts["failed"] += f; counts["errors"] += e; counts["skipped"] += s
    for skip in root.iter("skipped"):
        reason = skip.get("message", "").split(" (")[0][:90]
        skip_reasons[reason] = skip_reasons.get(reason, 0) + 1
r.update(counts)
r["skip_reasons"] = dict(sorted(skip_reasons.items(), key=lambda kv: -kv[1]))
r["ok"] = r["install_ok"] and "import_error" not in r and counts["passed"] > 0 and not (counts["failed"] or counts["errors"])
print(json.dumps(r))
EOF
)
  echo "== $spec: $(cat "$run/result.json")"
  case "$(cat "$run/result.json")" in *'"ok": true'*) ;; *) tail -15 "$run/pytest.log" 2>/dev/null || true ;; esac
}

# JOBS=n checks n torch versions at a time (default 1: each has the machine to itself, so wall times compare)
JOBS=${JOBS:-1}
for spec in "${SPECS[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 5; done
  check_one "$spec" &
done
wait
status=0
results=()
for spec in "${SPECS[@]}"; do
  result=$(cat "$(run_dir "$spec")/result.json" 2>/dev/null || true)
  [ -n "$result" ] || result="{\"torch_spec\": \"$spec\", \"ok\": false, \"install_ok\": false, \"python\": \"?\", \"passed\": 0, \"failed\": 0, \"errors\": 0, \"skipped\": 0, \"install_s\": 0, \"tests_s\": 0, \"wheel\": \"\"}"
  case "$result" in *'"ok": true'*) ;; *) status=1 ;; esac
  results+=("$result")
done

mkdir -p "$(dirname "$OUTFILE")"
printf '%s\n' "${results[@]}" > "$WORK/results.jsonl"
"$PYTHON" - "$OUTFILE" "$WHEEL" "$started" "$*" "${PYTEST_ARGS[*]}" "$JOBS" "$WORK/results.jsonl" "$tests_commit" <<'EOF'
import json, os, platform, shlex, subprocess, sys
out, wheel, started, args, pytest_args, jobs, results, tests_commit = sys.argv[1:]
# the knobs that change what runs, as they were given
knobs = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in ("TORCH_SPECS", "PYTEST_ARGS", "REUSE_VENVS",
                                                                "PIP_CONFIG_FILE") if k in os.environ)
runs = [json.loads(line) for line in open(results) if line.strip()]
gpu = subprocess.run(["sh", "-c", "nvidia-smi -L 2>/dev/null"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
report = {
    "date": started, "command": f"{knobs + ' ' if knobs else ''}JOBS={jobs} bash scripts/check_wheel_matrix.sh {args}",
    "tests_commit": tests_commit,
    "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), glibc "
               f"{platform.libc_ver()[1]}, GPU: {gpu or 'none'}",
    "load_average": open("/proc/loadavg").read().split()[:3],
    "pytest": f"python -m pytest {pytest_args}", "concurrent_runs": int(jobs),
    "wheel": os.path.basename(wheel), "wheel_bytes": os.path.getsize(wheel), "runs": runs,
    "all_passed": bool(runs) and all(r["ok"] for r in runs),
}
with open(out + ".json", "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
lines = [f"# Wheel matrix: one wheel, several torch versions", "",
         f"- date: {report['date']}", f"- command: `{report['command']}`", f"- machine: {report['machine']}",
         f"- load average at the end: {' '.join(report['load_average'])}",
         f"- wheel: `{report['wheel']}` ({report['wheel_bytes'] / 2**20:.1f} MiB)",
         f"- tests: `{report['pytest']}` from the tree at {report['tests_commit']}; torch versions checked "
         f"{report['concurrent_runs']} at a time",
         f"- result: {'all passed' if report['all_passed'] else 'FAILURES'}", "",
         "Each row: a fresh venv, the wheel (with its test and demo extras) and the torch installed with no "
         "compiler on PATH, the tests run from a copy of tests/ outside the source tree (so the installed package "
         "is imported).", "",
         "A venv marked 'reused' was made by an earlier run of this script, with torch and the test dependencies; "
         "this run replaced only the wheel (`pip install --force-reinstall --no-deps`).", "",
         "| torch | python | passed | failed | errors | skipped | install (s) | tests (s) | venv | imported from |",
         "|---|---|---|---|---|---|---|---|---|---|"]
for r in runs:
    lines.append(f"| {r.get('torch', r['torch_spec'])} | {r['python']} | {r['passed']} | {r['failed']} | {r['errors']} | "
                 f"{r['skipped']} | {r['install_s']} | {r['tests_s']} | {'reused' if r.get('venv_reused') else 'fresh'} | "
                 f"{r.get('sgdf_erd_imported_from', r.get('import_error', '?')[:300])} |")
info = next((r["build_info"] for r in runs if "build_info" in r), None)
if info:
    lines += ["", "build_info() of the installed wheel:", "", "```"] + [f"{k}: {v}" for k, v in info.items()] + ["```"]
for r in runs:
    if r.get("skip_reasons"):
        lines += ["", f"Skip reasons with torch {r.get('torch', r['torch_spec'])}:", ""]
        lines += [f"- {n} x {reason}" for reason, n in r["skip_reasons"].items()]
with open(out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
exit $status
}
