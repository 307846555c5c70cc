"""Peak resident memory of the calling process, for the benchmarks."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    On Linux this is ``VmHWM`` from ``/proc/self/status``: the high-water mark of the process's own
    address space. ``getrusage``'s ``ru_maxrss`` is not used there because the kernel carries a parent's
    resident size into a child started with fork + exec (``subprocess``), so a worker started by a
    parent that held gigabytes (say, a simulated matrix) would report the parent's peak, not its own.
    Elsewhere ``ru_maxrss`` is the fallback (KiB on Linux, bytes on macOS).

    Examples
    --------
    >>> peak_rss_mb() > 0
    True
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    import sys

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024.0
