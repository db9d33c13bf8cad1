"""The few lines of a stage's log that go into summary.txt (scripts/gpu_stages.sh): counts and first failures.

    python scripts/gpu_stage_digest.py pytest LOG [JUNIT_XML]
    python scripts/gpu_stage_digest.py sanitizer LOG

pytest: the counts from the JUnit XML when the run finished, else (cut off by its time box) from the `-v` lines of
the log, with the test that was running; then the first failures with their first message line. sanitizer: the
tool's summary line, the first errors with the kernel each was in, and whether the workload finished.
"""

import re
import sys
import xml.etree.ElementTree as ET

FIRST = 5  # failures / errors listed


def pytest_digest(log_path: str, junit_path: str = None) -> list:
    log = open(log_path, errors="replace").read()
    try:
        suites = ET.parse(junit_path).getroot() if junit_path else None
    except (OSError, ET.ParseError):
        suites = None
    if suites is not None:
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        for suite in suites.iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
        passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        lines = [f"{passed} passed, {counts['failures']} failed, {counts['errors']} errors, "
                 f"{counts['skipped']} skipped"]
        failed = []
        for case in suites.iter("testcase"):
            for kind in ("failure", "error"):
                element = case.find(kind)
                if element is not None:
                    message = (element.get("message") or element.text or "").strip().splitlines()
                    failed.append(f"{kind.upper()} {case.get('classname')}::{case.get('name')}: "
                                  f"{message[0][:160] if message else ''}")
        skips = {}
        for case in suites.iter("testcase"):
            element = case.find("skipped")
            if element is not None:
                reason = (element.get("message") or "").strip()[:120]
                skips[reason] = skips.get(reason, 0) + 1
        lines += failed[:FIRST] + ([f"... and {len(failed) - FIRST} more"] if len(failed) > FIRST else [])
        lines += [f"skipped {n}: {reason}" for reason, n in sorted(skips.items(), key=lambda kv: -kv[1])[:3]]
        if "KeyboardInterrupt" in log:  # stopped at its time box (SIGINT): the counts are of what finished
            running = [line for line in log.splitlines() if re.match(r"tests/\S+::\S+ *$", line.strip())]
            lines.append("interrupted at the time box" + (f" while running {running[-1].strip()}" if running else ""))
        return lines
    # no XML: the run was cut off (or never started); count what the -v lines say
    outcomes = re.findall(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", log)
    counts = {o: outcomes.count(o) for o in dict.fromkeys(outcomes)}
    lines = ["no JUnit XML (cut off?); from the log: " + (", ".join(f"{n} {o}" for o, n in counts.items()) or
                                                          "no test outcome")]
    lines += [line.strip()[:200] for line in log.splitlines() if re.search(r"\b(FAILED|ERROR)\b", line)][:FIRST]
    tail = [line for line in log.splitlines() if line.strip()][-2:]
    lines += [f"last: {line.strip()[:200]}" for line in tail]
    return lines


def sanitizer_digest(log_path: str) -> list:
    log = open(log_path, errors="replace").read().splitlines()
    summary = [l.strip("= ").strip() for l in log if re.search(r"(ERROR|RACECHECK) SUMMARY", l)]
    lines = summary[-1:] or ["no sanitizer summary line (cut off, or compute-sanitizer failed to start)"]
    # an error report: a "=========" line naming the problem, then "at <kernel>+0x.. in file:line"
    errors, previous = [], ""
    for line in log:
        text = line.lstrip("= ").rstrip()
        if text.startswith("at ") and previous and not previous.startswith(("at ", "by ", "Address", "Saved")):
            errors.append(f"{previous[:100]} | {text[3:160]}")
        if text:
            previous = text
    ours = sum("sgdf_erd" in e for e in errors)
    if errors:
        lines.append(f"{len(errors)} reports shown, {ours} in sgdf_erd's kernels, {len(errors) - ours} in others")
    lines += errors[:FIRST] + ([f"... and {len(errors) - FIRST} more"] if len(errors) > FIRST else [])
    lines += [l.strip()[:200] for l in log if "Program hit" in l or "Internal Sanitizer Error" in l][:2]
    ran = [l for l in log if l.startswith("ran ")]
    finished = any("all kernels ran and agree" in l for l in log)
    lines.append(f"workload: {len(ran)} cases ran, " + ("finished" if finished else "did NOT finish"))
    return lines


def main() -> None:
    kind, args = sys.argv[1], sys.argv[2:]
    lines = pytest_digest(*args) if kind == "pytest" else sanitizer_digest(*args)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
