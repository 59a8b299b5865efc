"""Keeping freed memory in the process, so the CPU step's temporaries are not faulted in afresh every step.

A step of 4,096 busy worlds allocates and frees about 40 MB of short-lived tensors (the obstacle reading's
[B, 10 segments, 32 points] projections, traffic's per-vehicle tables, the observation). glibc's malloc serves
a block above its mmap threshold with a fresh mapping and gives the top of its heap back to the kernel when
more than its trim threshold lies free there, so the same memory went back to the kernel and came back, zeroed,
a page at a time: about 9,700 minor page faults a step at B=4,096, a fifth of the step's time on 2 cores
(docs/benchmarks.md). Raising both thresholds once per process keeps that memory in the heap, where the next
step reuses it; the process then holds its peak heap rather than returning it between steps.

Only glibc has these knobs (``mallopt``); elsewhere (macOS, musl) this does nothing and says so by its result.
"""

from __future__ import annotations

import ctypes
import functools
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
# A block above this comes from its own mapping (returned to the kernel when freed). Large enough for every
# temporary of a CPU step up to B=16,384 (the largest, the projection's [B, 20, 32] floats, is 42 MB there).
MMAP_THRESHOLD_BYTES = 64 << 20
TRIM_THRESHOLD_BYTES = 512 << 20  # free memory at the heap's top kept in the process, up to this much


@functools.cache
def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (idempotent). True if they were set; False
    where the C library is not glibc (nothing is changed there)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the process's own symbols, glibc's among them
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD,
                                                                            TRIM_THRESHOLD_BYTES) == 1
