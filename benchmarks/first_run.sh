#!/usr/bin/env bash
# Times a user's first contact: a fresh clone of this repository, then `bash scripts/run.sh demo` (venv, torch,
# dependencies, build, the demo) to the demo's report, and records it with the machine's load.
#
#   bash benchmarks/first_run.sh [OUTFILE] [-- demo args...]
#
# OUTFILE defaults to benchmarks/results/first_run_cpu.md (with a .json beside it). The clone is of the committed
# HEAD, in a temporary folder removed at the end; pip's download cache is not cleared (a user's first install
# downloads torch and the dependencies, which this measurement does not include when they are cached).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUTFILE=$ROOT/benchmarks/results/first_run_cpu.md
if [ $# -gt 0 ] && [ "$1" != -- ]; then OUTFILE=$(realpath -m "$1"); shift; fi
[ "${1:-}" = -- ] && shift
OUTFILE=${OUTFILE%.md}

work=$(mktemp -d "${TMPDIR:-/tmp}/sgdf_erd_first_run.XXXXXX")
trap 'rm -rf "$work"' EXIT
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
uptime_before=$(uptime)
commit=$(git -C "$ROOT" rev-parse --short HEAD)
start=$(date +%s.%N)
git clone -q "$ROOT" "$work/sgdf-erd"
# run.sh's step lines ("== ...") get the seconds since the start, so the report shows where the time goes
(cd "$work/sgdf-erd" && bash scripts/run.sh demo "$@") 2>&1 | python3 -u -c '
import sys, time
start = float(sys.argv[1])
for line in sys.stdin:
    sys.stdout.write(f"== [{time.time() - start:6.1f} s] {line[3:]}" if line.startswith("== ") else line)
' "$start" | tee "$work/log"
status=${PIPESTATUS[0]}
end=$(date +%s.%N)
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
uptime_after=$(uptime)
report=$(grep -o '[^ ]*report\.md' "$work/log" | tail -1 || true)

python3 - "$OUTFILE" "$start" "$end" "$status" "$commit" "$load_before" "$load_after" "$uptime_before" \
  "$uptime_after" "$*" "$work/log" "$report" <<'EOF'
import json, os, platform, re, subprocess, sys
out, start, end, status, commit, lb, la, ub, ua, args, log, report = sys.argv[1:]
wall = float(end) - float(start)
text = open(log).read()
phases = re.findall(r"^== (.*)$", text, re.M)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
gpu = subprocess.run(["sh", "-c", "nvidia-smi -L 2>/dev/null"], capture_output=True, text=True).stdout.strip()
r = {"date": subprocess.run(["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"], capture_output=True, text=True).stdout.strip(),
     "command": "bash benchmarks/first_run.sh" + (f" -- {args}" if args else ""),
     "what": "git clone of the repository, then bash scripts/run.sh demo" + (f" {args}" if args else ""),
     "commit": commit, "exit_status": int(status), "wall_s": round(wall, 1),
     "machine": f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), GPU: {gpu or 'none'}",
     "load_average_before": lb, "load_average_after": la, "uptime_before": ub, "uptime_after": ua,
     "phases": phases, "report": report}
json.dump(r, open(out + ".json", "w"), indent=2)
m, s = divmod(round(wall), 60)
lines = ["# First run on a machine without a GPU", "",
         f"- date: {r['date']}, commit {commit}", f"- command: `{r['command']}` ({r['what']})",
         f"- machine: {r['machine']}",
         f"- load average (1, 5, 15 min) before: {lb}; after: {la} (the machine was shared with other jobs)",
         f"- `uptime` before: `{ub.strip()}`", f"- `uptime` after: `{ua.strip()}`",
         f"- exit status: {status}", f"- **wall time, clone to the demo's report: {m} min {s} s**", "",
         "Steps run.sh printed:", ""] + [f"- {p}" for p in phases]
open(out + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
exit "$status"
