"""Thread-count semantics shared by every kernel (scikit-learn's n_jobs rules)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from kdtemp import _kdtemp

_default: Optional[int] = None


def _resolve(n_threads: Optional[int]) -> int:
    """The team size a kernel runs with.

    ``None``: the default set by :func:`set_num_threads`, else OpenMP's
    (``OMP_NUM_THREADS``, and threadpoolctl's limits, are respected);
    ``n >= 1``: exactly n; ``n < 0``: counts back from the maximum (-1 = all);
    ``0`` is an error.
    """
    if n_threads is None:
        n_threads = _default
        if n_threads is None:
            return _kdtemp.max_threads()
    if isinstance(n_threads, (bool, np.bool_)) or not isinstance(n_threads, (int, np.integer)):
        raise TypeError(f"`n_threads` must be an int or None, got {type(n_threads).__name__}")
    n = int(n_threads)
    if n == 0:
        raise ValueError("`n_threads` must not be 0 (use None for the default, -1 for all)")
    if n < 0:
        return max(1, _kdtemp.max_threads() + 1 + n)
    return n


def set_num_threads(n_threads: Optional[int]) -> None:
    """Set the default thread count of every kdtemp kernel (``None`` restores OpenMP's).

    Parameters
    ----------
    n_threads : int or None
        The count kernels called with ``n_threads=None`` use: ``n >= 1`` exactly n,
        ``n < 0`` counts back from the maximum (-1 = all), ``None`` OpenMP's default
        (``OMP_NUM_THREADS``, threadpoolctl's limits).

    Raises
    ------
    TypeError
        If `n_threads` is not an int or None.
    ValueError
        If `n_threads` is 0.

    Notes
    -----
    In a process forked after kdtemp was imported (``multiprocessing`` with
    ``fork``, a PyTorch DataLoader worker), every kernel runs with one thread,
    whatever this default or an explicit ``n_threads`` says: libgomp hangs when a
    forked child starts a team of more than one thread after the parent did.
    Results are bitwise identical for any thread count, so only speed changes.
    The setting is still validated and stored there, and :func:`get_num_threads`
    reports 1.
    """
    global _default
    if n_threads is not None:
        _resolve(n_threads)  # validate
    _default = n_threads


def get_num_threads() -> int:
    """The thread count kernels use when ``n_threads=None`` (1 in a forked child)."""
    return _kdtemp.effective_threads(_resolve(None))
