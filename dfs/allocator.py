"""glibc malloc settings for the processes that stream data (mount and chunk
servers).

Their data moves in buffers of 1-4 MiB. By default glibc hands a buffer that
size fresh pages from mmap, or gives the heap's free top back to the kernel
soon after it is freed, so the next buffer faults in every page again: about
4 ms per 4 MiB here, more than receiving or writing the data. With these
settings such buffers come from the heap, and up to HEAP_KEEP of free heap is
kept for the next ones: what the process took at its busiest stays its to
reuse, up to that much.
"""

import ctypes

from . import logs

log = logs.get_logger("allocator")

# mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# Larger than any buffer of ours (glibc takes at most 32 MiB here).
MMAP_ABOVE = 32 * 1024 * 1024
HEAP_KEEP = 64 * 1024 * 1024


def keep_large_buffers() -> bool:
    """Apply the settings; False (and a log line) where the C library refuses
    them or has no mallopt."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        if mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE) and mallopt(M_TRIM_THRESHOLD, HEAP_KEEP):
            return True
    log.info("malloc settings left as they are: the C library is not glibc")
    return False
