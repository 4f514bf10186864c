"""Peak memory of a block of code: CUDA allocator statistics on a GPU, the process's peak RSS on CPU.

torch has no peak-memory API for CPU tensors, and ``tracemalloc`` sees only Python's allocator (not torch's), so
on CPU we read Linux's resident-set high-water mark: ``/proc/self/clear_refs`` ``5`` resets it, ``VmHWM`` in
``/proc/self/status`` is the peak since. For RSS to follow tensor lifetimes, :func:`track_cpu_frees` makes glibc
serve every allocation of 64 KiB or more with its own ``mmap``, returned to the system on free. glibc still
serves a large request from free heap space first, so call it at the start of a fresh process, before anything
big is allocated and freed (a heap grown by earlier work would hide allocations); it slows allocation, so time
nothing in that process. Limits, which the output states: RSS counts every page of the process, so
:func:`peak_memory` reports the peak *above* the resident size at its start; blocks under 64 KiB come from the
heap, where a freed block is reused without RSS growth (and a first use of heap pages counts once).
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from typing import Any

import torch

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def track_cpu_frees() -> bool:
    """Serve allocations >= 64 KiB by mmap (see the module docstring); False where glibc is not available."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Run ``fn``; return the peak memory it added in MiB (None where it cannot be measured here).

    CUDA: ``max_memory_allocated`` minus ``memory_allocated`` at the start. CPU: peak RSS minus RSS at the start.
    Whatever ``fn`` builds (model copies, optimizer state, activations) counts while it is alive.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - start) / 2**20
    start = _status_kib("VmRSS")
    if not _reset_cpu_peak():
        return None
    fn()
    return (_status_kib("VmHWM") - start) / 1024
