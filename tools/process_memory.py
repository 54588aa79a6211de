"""A process's peak memory, measured the way the benchmarks report it."""

from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB: ``VmHWM`` from /proc where there is one.

    Not ``ru_maxrss`` on Linux: the kernel folds the high-water mark of the address space a
    process had *before* ``exec`` into it, and a child forked (or vforked) from the benchmark
    parent starts with the parent's whole RSS, so ``ru_maxrss`` reports at least the parent's
    size (about 150 MB here, onnx and onnxruntime loaded). ``VmHWM`` belongs to the address space
    created by ``exec``: the engine's own peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return ru_maxrss_mb()


def ru_maxrss_mb() -> float:
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0   # bytes there, KiB here
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
