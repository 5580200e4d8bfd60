"""The machine a benchmark ran on, for its results file's header."""

import os


def cpu_name() -> str:
    """e.g. "AMD EPYC 9B14, 2 cores" (Linux's /proc/cpuinfo; "unknown CPU" elsewhere). A name without a model
    number (some virtual machines report only "AMD EPYC") gets the CPU family and model: "AMD EPYC (family 25
    model 17), 2 cores"."""
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(l.split(":", 1) for l in f.read().split("\n\n")[0].splitlines() if ":" in l)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        model = fields["model name"]
    except (OSError, KeyError):
        return f"unknown CPU, {os.cpu_count()} cores"
    if not any(c.isdigit() for c in model) and "cpu family" in fields and "model" in fields:
        model += f" (family {fields['cpu family']} model {fields['model']})"
    return f"{model}, {os.cpu_count()} cores"
