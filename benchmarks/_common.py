"""What every benchmark measures the same way."""

from __future__ import annotations


def peak_rss_mb() -> float:
    """This process's peak RSS since exec, in MB (VmHWM; ru_maxrss would include the forking parent's)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status")
