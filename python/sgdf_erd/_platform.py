"""Describing the machine a run happened on (for reports and benchmark results)."""

import platform


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo where available, else what `platform` knows."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return model
