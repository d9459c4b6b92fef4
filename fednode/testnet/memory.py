"""Memory of the node processes, read from ``/proc/<pid>/status`` (Linux; elsewhere nothing is measured).

``VmHWM`` is the kernel's own peak of the resident set, so sampling it now and then (the launcher
does, about once a second) still gives the true peak as of the last sample before the process ends.
"""

from __future__ import annotations


def rss_mb(pid: int) -> tuple[float, float] | None:
    """(current RSS, peak RSS) of a live process in MiB, or None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    vals: dict[str, float] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            parts = rest.split()
            if parts and parts[0].isdigit():
                vals[key] = int(parts[0]) / 1024.0  # kB
    if "VmRSS" not in vals or "VmHWM" not in vals:
        return None
    return vals["VmRSS"], vals["VmHWM"]
