import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")

# Run in a fresh interpreter: malloc settings are per process and cannot be undone.
PROGRAM = textwrap.dedent(
    """
    import ctypes, sys
    import torch
    from litesam.allocator import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "tuned":
        assert keep_freed_memory() is True
    block = torch.empty(8 * 2**20 // 4)  # 8 MiB, a decoder chunk's temporary
    mapped = libc.mallinfo2().hblkhd  # bytes in mmap-ed blocks while it lives
    del block
    print(mapped, libc.mallinfo2().fordblks)  # ... and free bytes kept in the heap once it is freed
    """
)


def _run(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    mapped, kept = map(int, out.stdout.split())
    return mapped, kept


def test_freed_blocks_stay_in_the_heap_instead_of_going_back_to_the_os():
    mapped, kept = _run("default")
    assert mapped >= 8 * 2**20 and kept < 8 * 2**20  # glibc's default: mmap-ed, unmapped when freed
    mapped, kept = _run("tuned")
    assert mapped < 8 * 2**20 and kept >= 8 * 2**20  # from the heap, and kept there for the next one
