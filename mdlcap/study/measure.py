"""Cost of a call: wall seconds and peak extra memory (notebook 02's cost table, the benches).

    result, seconds, peak_bytes = measure(lambda: layer_gains(model, batches))

Why not tracemalloc or memory_profiler: tracemalloc does not see torch's CPU allocator, and
memory_profiler samples a process from outside at a coarse interval; a thread sampling
/proc/self/statm every few milliseconds is enough, and CUDA has its own peak counter.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

import torch


def rss_bytes() -> int:
    """Resident set size of this process (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(fn: Callable[[], Any], interval: float = 0.002) -> tuple[Any, float, int]:
    """(result, wall seconds, peak extra memory in bytes). Peak memory: CUDA max_memory_allocated
    when on GPU, else resident set size sampled every `interval` s above the level at the start
    (tracemalloc does not see torch's CPU allocator)."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = rss_bytes()
    peak = [base_rss]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            stop.wait(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    try:
        out = fn()
        if cuda:
            torch.cuda.synchronize()
    finally:
        dt = time.perf_counter() - t0
        stop.set()
        th.join()
    peak[0] = max(peak[0], rss_bytes())
    mem = (torch.cuda.max_memory_allocated() - base) if cuda else peak[0] - base_rss
    return out, dt, int(mem)
