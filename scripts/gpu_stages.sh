# Time-boxed stages for scripts/gpu_check.sh and scripts/gpu_bench.sh (sourced by them, not run).
#
# A GPU machine is lent for minutes and gives back at most 8 files from its output folder, so every stage runs
# under its own `timeout` and OUTDIR only ever holds two files:
#   summary.txt   one line per stage, `stage NAME: STATUS in Ns (budget Bs)`, then a few indented lines (counts,
#                 first failures); rewritten (atomically) as each stage ends, and every SNAPSHOT_S seconds while
#                 one runs, with a `RUNNING` line for it, so a command killed outright still says where it was
#   logs.tar.gz   every stage's full log, packed again at the same moments
# STATUS is ok, FAILED (exit N), TIMEOUT, SKIPPED or KILLED (the command got a signal while the stage ran; the
# stages after it did not run). Budgets: GPU_STAGE_BUDGET_<name>=seconds overrides a stage's budget (0 skips it).
# Also here: the arguments ([--dry-run] OUTDIR), the environment, and the stages both scripts start with (facts,
# build).

# --dry-run may come before or after OUTDIR; anything else is refused (a misspelt option must not become OUTDIR,
# nor a trailing --dry-run be dropped, which would start the GPU run)
DRY_RUN=0 OUTDIR=""
for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    -*) echo "$(basename "$0"): unknown option '$arg'; usage: bash $0 [--dry-run] OUTDIR" >&2; exit 2 ;;
    *)
      if [ -n "$OUTDIR" ]; then
        echo "$(basename "$0"): one OUTDIR, got '$OUTDIR' and '$arg'; usage: bash $0 [--dry-run] OUTDIR" >&2
        exit 2
      fi
      OUTDIR=$arg ;;
  esac
done
[ -n "$OUTDIR" ] || { echo "usage: bash $0 [--dry-run] OUTDIR" >&2; exit 2; }
export DRY_RUN PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# nothing can be downloaded there: Hugging Face libraries must not try (tests needing what is missing skip)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# torch reads this as set or not (even "0" disables the caching allocator): only gpu_check.sh's memcheck sets it
unset PYTORCH_NO_CUDA_MEMORY_CACHING

STAGES_TOTAL_S=480   # what the stages of one script may add up to (8 minutes)
SNAPSHOT_S=${SNAPSHOT_S:-15}
LOG_CAP_BYTES=$((4 << 20))  # a longer log goes into the tarball as its first and last 2 MiB

declare -A BUDGET=()  # stage name -> seconds, filled by the script before stages_begin
STAGE_NAME="" STAGE_PID="" STAGE_START=0 STAGE_LIMIT=0 SNAPSHOT_PID="" STAGES_FAILED=0

# The budget of stage $1: the script's, or GPU_STAGE_BUDGET_<name> when set.
budget_of() {
  local var="GPU_STAGE_BUDGET_$1"
  echo "${!var:-${BUDGET[$1]}}"
}

# stages_begin OUTDIR TITLE: checks the budgets, makes the work folder, writes the first summary.
stages_begin() {
  OUT=$1
  local title=$2 total=0 name
  for name in "${!BUDGET[@]}"; do total=$((total + ${BUDGET[$name]})); done
  if [ "$total" -gt "$STAGES_TOTAL_S" ]; then
    echo "$(basename "$0"): the stage budgets add up to ${total}s, over ${STAGES_TOTAL_S}s" >&2
    exit 2
  fi
  mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/$(basename "$0" .sh).XXXXXX") || exit 2
  mkdir -p "$WORK/logs"
  : >"$WORK/summary.done"
  rm -f "$OUT/summary.txt" "$OUT/logs.tar.gz"
  STAGES_T0=$SECONDS
  local commit="? (no git checkout)" head
  if head=$(git rev-parse --short HEAD 2>/dev/null); then
    commit=$head
    git diff --quiet HEAD 2>/dev/null || commit+=" (+ local changes)"
  fi
  echo "$title started $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(uname -n), commit $commit;" \
    "stage budgets add up to ${total}s" >"$WORK/summary.head"
  trap 'stages_signal TERM 15' TERM
  trap 'stages_signal INT 2' INT
  trap 'stages_signal HUP 1' HUP
  trap stages_cleanup EXIT
  write_summary
  pack_logs
}

# summary.txt from the finished stages' lines (and $1, the running stage's line, if given), replaced atomically.
write_summary() {
  local tmp="$OUT/.summary.txt.$BASHPID"
  { cat "$WORK/summary.head" "$WORK/summary.done"; [ -z "${1:-}" ] || echo "$1"; } >"$tmp" && mv -f "$tmp" "$OUT/summary.txt"
}

# logs.tar.gz from the work folder's logs (each capped at LOG_CAP_BYTES), replaced atomically.
pack_logs() {
  local stage_dir="$WORK/pack.$BASHPID" tmp="$OUT/.logs.tar.gz.$BASHPID" f
  rm -rf "$stage_dir" && mkdir -p "$stage_dir/logs"
  for f in "$WORK"/logs/*; do
    [ -f "$f" ] || continue
    if [ "$(stat -c %s "$f")" -gt "$LOG_CAP_BYTES" ]; then
      { head -c $((LOG_CAP_BYTES / 2)) "$f"; printf '\n[... cut to its first and last %d bytes ...]\n' \
          $((LOG_CAP_BYTES / 2)); tail -c $((LOG_CAP_BYTES / 2)) "$f"; } >"$stage_dir/logs/${f##*/}"
    else
      cp "$f" "$stage_dir/logs/"
    fi
  done
  tar -czf "$tmp" -C "$stage_dir" logs && mv -f "$tmp" "$OUT/logs.tar.gz"
  rm -rf "$stage_dir" "$tmp"
}

# Appends lines (stdin) to the summary, indented, at most $1 of them (default 40).
summary_lines() {
  sed -e "s/^/  /" | head -n "${1:-40}" >>"$WORK/summary.done"
}

finish_stage() {  # finish_stage STATUS SECONDS BUDGET
  echo "stage $STAGE_NAME: $1 in $2s (budget $3s)" >>"$WORK/summary.done"
}

# stage NAME DIGEST COMMAND...: runs COMMAND under timeout (output to logs/NAME.log), records its line, then runs
# the function DIGEST NAME LOG STATUS (may be -) for the indented lines. Returns 0 when the stage passed.
stage() {
  local name=$1 digest=$2; shift 2
  local budget status rc limit left
  budget=$(budget_of "$name")
  STAGE_NAME=$name
  if [ "$budget" -le 0 ]; then  # skipped on purpose: the stages after it run as if it passed
    skip_stage "$name" "budget 0 (GPU_STAGE_BUDGET_$name)"
    return 0
  fi
  left=$((STAGES_TOTAL_S - (SECONDS - STAGES_T0)))
  if [ "$left" -lt 3 ]; then
    skip_stage "$name" "no time left of the ${STAGES_TOTAL_S}s"
    return 1
  fi
  limit=$((budget < left ? budget : left))
  # STAGE_SIGNAL (default TERM) at the time box less a grace, KILL after the grace: the stage never outlives its
  # budget. pytest stages take INT: pytest then stops as on Ctrl-C and still writes its report of what ran.
  local grace=$((limit > 40 ? 10 : limit > 20 ? 5 : 1))
  local term_after=$((limit > grace + 1 ? limit - grace - 1 : 1)) log="$WORK/logs/$name.log"
  # a shell function (exported by the script with export -f) runs in a bash of its own, as timeout needs a program
  if declare -F "$1" >/dev/null; then set -- bash -c '"$@"' stage "$@"; fi
  STAGE_START=$SECONDS STAGE_LIMIT=$budget
  # timeout puts the command in a process group of its own, and on a signal or at the limit signals all of it
  # (pytest-xdist workers, compute-sanitizer's target)
  timeout --signal="${STAGE_SIGNAL:-TERM}" --kill-after="$grace" "$term_after" "$@" >"$log" 2>&1 </dev/null &
  STAGE_PID=$!
  start_snapshots
  wait "$STAGE_PID" 2>/dev/null  # (without bash's "Killed" notice: timeout KILLs its group, itself included)
  rc=$?
  STAGE_PID=""
  stop_snapshots
  local took=$((SECONDS - STAGE_START))
  if [ "$rc" -eq 0 ]; then
    status=ok
  elif [ "$rc" -eq 124 ] || { [ "$rc" -eq 137 ] && [ "$took" -ge "$term_after" ]; }; then
    status=TIMEOUT
  else
    status="FAILED (exit $rc)"
  fi
  [ "$status" = ok ] || STAGES_FAILED=1
  finish_stage "$status" "$took" "$budget"
  [ "$digest" = - ] || "$digest" "$name" "$log" "$status" 2>&1 | summary_lines
  write_summary
  pack_logs
  [ "$status" = ok ]
}

skip_stage() {  # skip_stage NAME REASON
  STAGE_NAME=$1
  finish_stage SKIPPED 0 "$(budget_of "$1")"
  echo "$2" | summary_lines 3
  write_summary
}

# While a stage runs: the summary (with a RUNNING line) and the tarball, every SNAPSHOT_S seconds, so that a
# command killed with SIGKILL still leaves its latest state.
start_snapshots() {
  local parent=$$
  (
    trap - TERM INT HUP EXIT
    while sleep "$SNAPSHOT_S"; do
      kill -0 "$parent" 2>/dev/null || exit 0
      write_summary "stage $STAGE_NAME: RUNNING for $((SECONDS - STAGE_START))s (budget ${STAGE_LIMIT}s): the last line if the command was killed"
      pack_logs
    done
  ) </dev/null >/dev/null 2>&1 &
  SNAPSHOT_PID=$!
}

stop_snapshots() {
  if [ -n "$SNAPSHOT_PID" ]; then
    kill "$SNAPSHOT_PID" 2>/dev/null
    wait "$SNAPSHOT_PID" 2>/dev/null
    SNAPSHOT_PID=""
  fi
}

# The command got SIGNAME: stop the running stage (its process group, through timeout), record it, pack, exit.
stages_signal() {
  trap '' TERM INT HUP
  stop_snapshots
  if [ -n "$STAGE_PID" ]; then
    kill -TERM "$STAGE_PID" 2>/dev/null
    wait "$STAGE_PID" 2>/dev/null
    finish_stage KILLED "$((SECONDS - STAGE_START))" "$STAGE_LIMIT"
    echo "the command got SIG$1 during this stage; the stages after it did not run" | summary_lines
  else
    echo "killed (SIG$1) between stages after $((SECONDS - STAGES_T0))s; the stages after the last one did not run" \
      >>"$WORK/summary.done"
  fi
  write_summary
  pack_logs
  exit $((128 + $2))
}

stages_cleanup() {
  stop_snapshots
  [ -n "${WORK:-}" ] && rm -rf "$WORK"
}

# The last summary line and the exit status: non-zero when a stage failed, timed out or was skipped for a
# failure before it.
stages_end() {
  local verdict="all stages passed"
  [ "$STAGES_FAILED" -eq 0 ] || verdict="FAILED: see the stages above and logs.tar.gz"
  echo "end after $((SECONDS - STAGES_T0))s: $verdict" >>"$WORK/summary.done"
  write_summary
  pack_logs
  cat "$OUT/summary.txt"
  [ "$STAGES_FAILED" -eq 0 ]
}

# ---------------------------------------------------------------------------- the stages both scripts start with
facts() {
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')  cores: $(nproc)  $(uname -srm)"
  if [ "$DRY_RUN" = 1 ]; then
    echo "dry run on the CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  else
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"
  fi
  "$PY" - <<'EOF' || return 1
import os, sys, torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"GPU available: {torch.cuda.is_available()}")
if os.environ["DRY_RUN"] == "0":
    major, minor = torch.cuda.get_device_capability()
    open(os.path.join(os.environ["WORK"], "arch"), "w").write(f"{major}.{minor}")
    print(f"{torch.cuda.get_device_name()}: sm_{major}{minor}")
from importlib import metadata  # versions without importing the packages (transformers takes seconds)
for name in ("pytest", "pytest-xdist", "pytest-timeout", "hypothesis", "scipy", "transformers", "diffusers"):
    try:
        print(f"  {name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"  {name}: not installed")
EOF
  local sanitizer
  if sanitizer=$(find_sanitizer); then
    "$sanitizer" --version | tail -1
    "$sanitizer" --help >"$WORK/logs/compute_sanitizer_help.txt" 2>&1
  else
    echo "compute-sanitizer: not found"
  fi
  return 0
}

find_sanitizer() {
  command -v compute-sanitizer || { [ -x /usr/local/cuda/bin/compute-sanitizer ] && echo /usr/local/cuda/bin/compute-sanitizer; }
}

# The extension in place: for this GPU's architecture only (dry run: CPU-only; incremental either way).
build() {
  if [ "$DRY_RUN" = 1 ]; then
    SGDF_ERD_CUDA=0 MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" setup.py build_ext --inplace || return 1
  else
    SGDF_ERD_CUDA=1 TORCH_CUDA_ARCH_LIST="$(cat "$WORK/arch")" MAX_JOBS=${MAX_JOBS:-$(nproc)} \
      "$PY" setup.py build_ext --inplace || return 1
  fi
  "$PY" -m sgdf_erd.info
}

digest_facts() { grep -v '^  ' "$2" | head -6; }
digest_build() {
  if [ "$3" = ok ]; then
    grep -E '"(version|cuda|cuda_arch_list|cpu_capability|torch)"' "$2" | tr -d ' ,' | paste -sd' '
  else
    grep -iE 'error|killed|no space' "$2" | head -6
    tail -2 "$2"
  fi
}
