"""The cache of freed output buffers that kdtemp's returned arrays come from."""
from __future__ import annotations

import os
from typing import Dict

import numpy as np

from kdtemp import _kdtemp

_ENV = "KDTEMP_BUFFER_CACHE"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def set_buffer_cache(max_bytes: int) -> int:
    """Set how many bytes of freed output buffers kdtemp keeps for reuse; return the old limit.

    Gradients and other N x C arrays kdtemp returns (1 MiB and larger) come
    from a small cache of blocks freed by earlier results. A training loop
    that drops its gradient and asks for one of the same size at the next step
    then gets memory whose pages are already mapped, instead of paying the
    operating system to map and zero fresh pages (on a 2-core VM, 30-50 ms for
    a 2048 x 32000 float32 gradient: as long as the forward-KL call itself).

    The cache holds at most 4 blocks and at most `max_bytes` (default 1 GiB,
    or the ``KDTEMP_BUFFER_CACHE`` environment variable at import: bytes, with
    an optional K/M/G suffix); the least recently freed block goes first. A
    block is reused for any request of its size class (four classes per power
    of two), so up to 25% of a block may go unused. The arrays are ordinary
    NumPy arrays that own their data; only the memory behind them is recycled.
    With ``out=`` nothing is allocated and the cache is not involved. When the
    caller has installed a NumPy memory handler of their own (NEP 49, through
    NumPy's C API), kdtemp allocates with that one instead.

    Parameters
    ----------
    max_bytes : int
        ``0`` turns the cache off (and frees what it holds).

    Raises
    ------
    TypeError
        If `max_bytes` is not an int.
    ValueError
        If `max_bytes` is negative.
    """
    if isinstance(max_bytes, (bool, np.bool_)) or not isinstance(max_bytes, (int, np.integer)):
        raise TypeError(f"`max_bytes` must be an int, got {type(max_bytes).__name__}")
    if max_bytes < 0:
        raise ValueError(f"`max_bytes` must be >= 0, got {max_bytes}")
    return int(_kdtemp.set_buffer_cache(int(max_bytes)))


def empty_buffer_cache() -> None:
    """Free every block the output-buffer cache holds (the limit stays)."""
    _kdtemp.empty_buffer_cache()


def buffer_cache_info() -> Dict[str, int]:
    """The cache's ``limit`` and what it holds now (``bytes``, ``blocks``), with the
    counts of cacheable allocations served from it (``hits``) and not (``misses``)."""
    return dict(_kdtemp.buffer_cache_info())


def _parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in ("K", "M", "G") else ""
    try:
        n = int(t[:-1] if unit else t)
    except ValueError:
        n = -1
    if n < 0:
        raise ValueError(f"{_ENV} must be a byte count >= 0 with an optional K/M/G suffix, "
                         f"got {text!r}")
    return n * _UNITS[unit]


if os.environ.get(_ENV):
    set_buffer_cache(_parse_size(os.environ[_ENV]))
