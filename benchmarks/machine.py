"""The machine a benchmark ran on, for its results file's header."""

import os


def cpu_name() -> str:
    """e.g. "AMD EPYC 9B14, 2 cores" (Linux's /proc/cpuinfo; "unknown CPU" elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"
