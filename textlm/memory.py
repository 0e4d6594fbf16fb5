"""Memory the C allocator holds — where PyTorch's CPU tensors live (glibc's ``mallinfo2``: in-use
heap plus mmapped blocks). The difference across a forward pass is what the backward pass keeps."""

from __future__ import annotations

import ctypes

__all__ = ["allocated_bytes"]


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def allocated_bytes() -> int:
    """Bytes in use by the C allocator now (Linux/glibc ≥ 2.33)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd
