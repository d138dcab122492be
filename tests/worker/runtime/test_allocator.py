"""glibc's mmap threshold held at 128 KiB: a large block freed goes back to the system, and so do the next ones."""

from __future__ import annotations

import json
import subprocess
import sys

# A 2 MB block freed, then a 1 MB block: is the second one a mapping of its own (one more `hblks` in glibc's mallinfo2)?
PROBE = """
import ctypes, json, sys
from llmq.worker.runtime.allocator import return_large_blocks

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
set_up = return_large_blocks() if sys.argv[1] == "fixed" else None
libc.free(libc.malloc(2 * 1024 * 1024))
mapped_before = libc.mallinfo2().hblks
block = libc.malloc(1024 * 1024)
print(json.dumps([set_up, libc.mallinfo2().hblks - mapped_before]))
libc.free(block)
"""


def probe(mode: str) -> tuple[bool | None, int]:
    # In a process of its own: the setting is for the life of a process.
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    set_up, mapped = json.loads(out)
    return set_up, mapped


def test_after_a_large_block_is_freed_the_next_is_still_mapped_on_its_own() -> None:
    assert probe("fixed") == (True, 1)


def test_glibc_alone_would_take_it_from_the_heap() -> None:
    """What the setting changes: glibc raised its threshold to the freed 2 MB block's size."""
    assert probe("default") == (None, 0)
