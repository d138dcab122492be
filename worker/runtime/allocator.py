"""The C allocator's settings for the long-running processes (API and worker): large blocks go back to the system.

glibc's malloc gives a request of 128 KiB or more a mapping of its own, unmapped when freed, but after each such
block is freed it raises that threshold to the block's size (up to 32 MiB). After the first 1 MB job, the API
and the worker took the next 1 MB requests, answers and records from their heaps, where a small block left above
them keeps the freed space: rounds of ten 1 MB jobs left the API 12 MB (15 %) and a worker 4-17 MB larger than
before them. A fixed threshold (`mallopt(M_MMAP_THRESHOLD, 128 KiB)`, which also turns the raising off) keeps
every large block in a mapping of its own: the same jobs leave both within 0.4 MB of where they were. The cost
is a `mmap`/`munmap` pair per large block (a body, request or answer of 128 KiB or more). Other C libraries
(musl, macOS) keep their own rules.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's default, held there


def return_large_blocks() -> bool:
    """Fix glibc's mmap threshold for this process; False where the C library has no `mallopt` or refuses."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
