r"""Pure-NumPy twins of the diagnostics (``kdtemp.row_stats``,
``kdtemp.temperature_profile``, ``kdtemp.match_sharpness``;
``shared/spec/diagnostics.md``). Same signatures and return types; every formula
written out once, in float64, on whole arrays. They are the tests' oracle, not
fast: the profile here makes one pass over the data *per temperature*.

Notation: logits ``x`` (or student ``z``, teacher ``v``), shape ``(N, C)`` after
flattening the leading axes; ``t`` a temperature (scalar or one per row);

    lse(x_i / t) = m_i / t + log sum_j exp((x_ij - m_i) / t),   m_i = max_j x_ij,
    p_i = softmax(x_i / t),   H(p_i) = -sum_j p_ij log p_ij  (0 log 0 = 0).

``-inf`` entries (masked classes) have probability 0 and are left out of the
mean and std of their row. A row is skipped (not counted) when
``labels[i] == ignore_index`` or ``mask[i]`` is false; skipped rows are never
checked. NaN/+inf in a counted row is a ``ValueError`` (unless
``check_finite=False``), as is a counted row that is all ``-inf``.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from kdtemp.diagnostics import RowStats, TemperatureProfile
from kdtemp.reference.kd import _check_temperature_range

__all__ = ["row_stats", "temperature_profile", "match_sharpness"]


# --------------------------------------------------------------------------------
# Validation (every message names the argument)
# --------------------------------------------------------------------------------

def _logits(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != np.float32 and a.dtype != np.float64:
        raise TypeError(f"`{name}` must be float32 or float64, got {a.dtype}")
    if a.ndim == 0:
        raise ValueError(f"`{name}` must have a class axis, got a 0-d array")
    if a.shape[-1] == 0:
        raise ValueError(f"`{name}` must have at least one class (C = 0)")
    return a


def _n_threads(n_threads: Any) -> None:
    """Validated only: the twin is single-threaded."""
    if n_threads is None:
        return
    if isinstance(n_threads, (bool, np.bool_)) or not isinstance(n_threads, numbers.Integral):
        raise TypeError(f"`n_threads` must be an int or None, got {type(n_threads).__name__}")
    if int(n_threads) == 0:
        raise ValueError("`n_threads` must not be 0 (use None for the default, -1 for all)")


def _per_row(t: Any, lead: Tuple[int, ...], n: int, name: str, dtype) -> np.ndarray:
    """A scalar or one value per row (shape ``lead`` or ``(n,)``) as float64 (n,),
    every value finite and > 0, and one the kernels take for logits of ``dtype``."""
    a = np.asarray(t)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"`{name}` must be a number or an array of numbers, got dtype {a.dtype}")
    if a.ndim == 0:
        a = np.full(n, float(a))
    elif a.shape == lead or a.shape == (n,):
        a = a.reshape(n).astype(np.float64)
    else:
        raise ValueError(f"`{name}` must be a scalar or have shape {lead} (one per row), "
                         f"got shape {a.shape}")
    bad = ~(np.isfinite(a) & (a > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"`{name}` must be finite and > 0, got {a[i]!r} (row {i})")
    _check_temperature_range(a, name, dtype, None if np.ndim(t) == 0 else (lambda i: f" (row {i})"))
    return a


def _counted(labels: Any, mask: Any, ignore_index: int, lead: Tuple[int, ...], n: int,
             c: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(counted rows as bool (n,), labels as int64 (n,) or None)."""
    counted = np.ones(n, dtype=bool)
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype.kind in "iu":
            m = m != 0
        elif m.dtype != np.bool_:
            raise TypeError(f"`mask` must be bool (or 0/1 integers), got dtype {m.dtype}")
        if m.shape != lead and m.shape != (n,):
            raise ValueError(f"`mask` must have shape {lead} (one per row), got {m.shape}")
        counted &= m.reshape(n)
    y = None
    if labels is not None:
        lab = np.asarray(labels)
        if lab.dtype.kind not in "iu":
            raise TypeError(f"`labels` must be integers, got dtype {lab.dtype}")
        if lab.shape != lead and lab.shape != (n,):
            raise ValueError(f"`labels` must have shape {lead} (one per row), got {lab.shape}")
        y = lab.reshape(n).astype(np.int64)
        counted &= y != ignore_index
        bad = counted & ((y < 0) | (y >= c))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"`labels` must be in [0, {c}) or equal ignore_index="
                             f"{ignore_index}, got {y[i]} (row {i})")
    return counted, y


def _check_rows(x: np.ndarray, counted: np.ndarray, check_finite: bool, name: str) -> None:
    if check_finite:
        bad = (np.isnan(x) | np.isposinf(x)) & counted[:, None]
        if bad.any():
            i, j = (int(k) for k in np.argwhere(bad)[0])
            raise ValueError(f"`{name}` contains NaN or +inf (row {i}, class {j}); "
                             f"pass check_finite=False to skip this check")
    dead = np.all(np.isneginf(x), axis=1) & counted
    if dead.any():
        i = int(np.flatnonzero(dead)[0])
        raise ValueError(f"`{name}` row {i} is all -inf")


# --------------------------------------------------------------------------------
# Row-wise math on float64 (n, C) arrays
# --------------------------------------------------------------------------------

def _softmax_parts(x: np.ndarray, t: np.ndarray):
    """(m, b, s): row max, ``b = (x - m) / t`` and ``s = sum_j exp(b_j)``, so that
    ``lse(x/t) = m/t + log s`` and ``p = exp(b) / s``."""
    m = x.max(axis=1)
    with np.errstate(invalid="ignore"):
        b = (x - m[:, None]) / t[:, None]
    s = np.exp(b).sum(axis=1)
    return m, b, s


def _entropy(b: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``H(p) = log s - sum_j p_j b_j`` (terms with p_j = 0 are 0)."""
    e = np.exp(b)
    eb = np.where(e > 0, e * np.where(np.isfinite(b), b, 0.0), 0.0)
    return np.log(s) - eb.sum(axis=1) / s


def _finite_mean_std(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and population std (ddof 0) of each row's finite entries."""
    fin = np.isfinite(x)
    k = np.maximum(fin.sum(axis=1), 1)
    mean = np.where(fin, x, 0.0).sum(axis=1) / k
    dev = np.where(fin, x - mean[:, None], 0.0)
    return mean, np.sqrt((dev * dev).sum(axis=1) / k)


# --------------------------------------------------------------------------------
# Public twins
# --------------------------------------------------------------------------------

def row_stats(logits: Any, temperature: Any = 1.0, labels: Any = None, *,
              ignore_index: int = -100, mask: Any = None, check_finite: bool = True,
              n_threads: Optional[int] = None) -> RowStats:
    r"""NumPy twin of :func:`kdtemp.row_stats`. Per counted row ``x`` at temperature
    ``t`` (scalar or per row), ``p = softmax(x/t)``::

        max_logit = max_j x_j
        sharpness = lse(x/t)
        mean, std = mean and population std (ddof 0) of the finite x_j
        entropy   = -sum_j p_j log p_j
        top1_prob = max_j p_j
        argmax    = the first j with x_j = max (numpy.argmax)
        ce        = lse(x) - x_y        (t = 1; with labels)
        correct   = argmax == y         (with labels)

    Skipped rows: NaN (argmax -1, correct False). ``batch``: the mean of each
    float statistic over counted rows (0.0 if none), and ``accuracy`` (the
    mean of ``correct``) with labels.
    """
    a = _logits(logits, "logits")
    _n_threads(n_threads)
    lead, c = a.shape[:-1], a.shape[-1]
    n = int(np.prod(lead, dtype=np.int64))
    x = np.asarray(a, dtype=np.float64).reshape(n, c)
    t = _per_row(temperature, lead, n, "temperature", a.dtype)
    counted, y = _counted(labels, mask, int(ignore_index), lead, n, c)
    _check_rows(x, counted, check_finite, "logits")

    nan = np.full(n, np.nan)
    out = {k: nan.copy() for k in ("max_logit", "sharpness", "mean", "std", "entropy",
                                   "top1_prob", "ce")}
    argmax = np.full(n, -1, dtype=np.int64)
    correct = np.zeros(n, dtype=bool)
    rows = np.flatnonzero(counted)
    if rows.size:
        xc, tc = x[rows], t[rows]
        m, b, s = _softmax_parts(xc, tc)
        out["max_logit"][rows] = m
        out["sharpness"][rows] = m / tc + np.log(s)
        mean, std = _finite_mean_std(xc)
        out["mean"][rows], out["std"][rows] = mean, std
        out["entropy"][rows] = _entropy(b, s)
        out["top1_prob"][rows] = 1.0 / s  # the max has b = 0, exp(b) = 1
        argmax[rows] = np.argmax(xc, axis=1)
        if y is not None:
            yc = y[rows]
            lse1 = m + np.log(np.exp(xc - m[:, None]).sum(axis=1))
            with np.errstate(invalid="ignore"):
                out["ce"][rows] = lse1 - xc[np.arange(rows.size), yc]
            correct[rows] = argmax[rows] == yc
    count = int(rows.size)
    names = ("max_logit", "sharpness", "mean", "std", "entropy", "top1_prob")
    names += ("ce",) if y is not None else ()
    batch = {k: (float(out[k][counted].mean()) if count else 0.0) for k in names}
    if y is not None:
        batch["accuracy"] = float(correct[counted].mean()) if count else 0.0
    sh = {k: v.reshape(lead) for k, v in out.items()}
    return RowStats(max_logit=sh["max_logit"], sharpness=sh["sharpness"], mean=sh["mean"],
                    std=sh["std"], entropy=sh["entropy"], top1_prob=sh["top1_prob"],
                    argmax=argmax.reshape(lead),
                    ce=sh["ce"] if y is not None else None,
                    correct=correct.reshape(lead) if y is not None else None,
                    count=count, batch=batch)


def temperature_profile(student: Any, teacher: Any,
                        temperatures: Sequence[float] = tuple(range(1, 21)),
                        labels: Any = None, *, ignore_index: int = -100, mask: Any = None,
                        check_finite: bool = True,
                        n_threads: Optional[int] = None) -> TemperatureProfile:
    r"""NumPy twin of :func:`kdtemp.temperature_profile`, one pass per temperature.

    For each ``T``, with ``pS = softmax(z/T)``, ``pT = softmax(v/T)`` and the
    sums over the ``n`` counted rows::

        kd_loss         = (1/n) sum_i T^2 KL(pT_i || pS_i)
        grad_norm       = (1/n) sqrt(sum_i T^2 ||pS_i - pT_i||^2)
                          (the Frobenius norm of d kd_loss / d z = T (pS - pT) / n)
        teacher_entropy = (1/n) sum_i H(pT_i),   student_entropy likewise
        teacher_top1    = (1/n) sum_i max_j pT_ij
        sharpness_gap   = (1/n) sum_i [lse(v_i/T) - lse(z_i/T)]

    ``labels`` only select rows (``ignore_index``; counted labels must be in
    ``[0, C)``). With no counted row every value is 0.
    """
    za = _logits(student, "student")
    va = _logits(teacher, "teacher")
    _n_threads(n_threads)
    if va.shape != za.shape:
        raise ValueError(f"`teacher` shape {va.shape} does not match `student` shape {za.shape}")
    if va.dtype != za.dtype:
        raise TypeError("`teacher` and `student` must have the same dtype")
    if np.ndim(temperatures) > 1:
        raise ValueError("`temperatures` must be a 1-D sequence of numbers")
    try:
        temps = np.asarray(temperatures, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError("`temperatures` must be a 1-D sequence of numbers") from None
    if temps.size == 0:
        raise ValueError("`temperatures` must not be empty")
    bad = ~(np.isfinite(temps) & (temps > 0))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"`temperatures` must be finite and > 0, got {temps[k]!r} (index {k})")
    _check_temperature_range(temps, "temperatures", za.dtype, lambda k: f" (index {k})")
    lead, c = za.shape[:-1], za.shape[-1]
    n = int(np.prod(lead, dtype=np.int64))
    counted, _ = _counted(labels, mask, int(ignore_index), lead, n, c)
    z = np.asarray(za, dtype=np.float64).reshape(n, c)[counted]
    v = np.asarray(va, dtype=np.float64).reshape(n, c)[counted]
    _check_rows(z, np.ones(len(z), bool), check_finite, "student")
    _check_rows(v, np.ones(len(v), bool), check_finite, "teacher")
    count = int(counted.sum())
    K = temps.size
    cols = {k: np.zeros(K) for k in ("kd_loss", "grad2", "teacher_entropy", "student_entropy",
                                     "teacher_top1", "sharpness_gap")}
    if count:
        for k, T in enumerate(temps):
            tt = np.full(count, T)
            mz, bz, sz = _softmax_parts(z, tt)
            mv, bv, sv = _softmax_parts(v, tt)
            log_ps = bz - np.log(sz)[:, None]
            log_pt = bv - np.log(sv)[:, None]
            ps, pt = np.exp(log_ps), np.exp(log_pt)
            with np.errstate(invalid="ignore"):
                terms = np.where(pt > 0, pt * (log_pt - log_ps), 0.0)
            kl = np.maximum(terms.sum(axis=1), 0.0)
            cols["kd_loss"][k] = (T * T * kl).sum() / count
            cols["grad2"][k] = (T * T * ((ps - pt) ** 2).sum(axis=1)).sum()
            cols["teacher_entropy"][k] = _entropy(bv, sv).sum() / count
            cols["student_entropy"][k] = _entropy(bz, sz).sum() / count
            cols["teacher_top1"][k] = (1.0 / sv).sum() / count
            cols["sharpness_gap"][k] = ((mv / T + np.log(sv)) - (mz / T + np.log(sz))).sum() / count
    return TemperatureProfile(
        temperatures=temps.copy(), kd_loss=cols["kd_loss"],
        grad_norm=np.sqrt(cols["grad2"]) / max(count, 1),
        teacher_entropy=cols["teacher_entropy"], student_entropy=cols["student_entropy"],
        teacher_top1=cols["teacher_top1"], sharpness_gap=cols["sharpness_gap"], count=count)


def _lse(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    m, _, s = _softmax_parts(x, t)
    return m / t + np.log(s)


def match_sharpness(student: Any, teacher: Any, student_temperature: Any = 1.0, *,
                    bounds: Tuple[float, float] = (0.05, 100.0), mask: Any = None,
                    rtol: float = 1e-10, max_iter: int = 200,
                    n_threads: Optional[int] = None) -> float:
    r"""NumPy twin of :func:`kdtemp.match_sharpness`: the teacher temperature ``T``
    in ``bounds`` with

        f(T) = mean_i lse(v_i / T) - mean_i lse(z_i / tS_i) = 0

    (means over the rows where ``mask`` is true), by bisection on ``log T`` until
    the bracket is narrower than ``rtol`` (relative, in ``T``) or after
    ``max_iter`` halvings; returns the bracket's geometric midpoint. On
    mean-centred logits ``lse(v/T)`` falls monotonically from +inf towards
    ``log C`` as ``T`` grows, so the root is unique. ``ValueError`` (naming the
    reachable range) when ``f`` has the same sign at both ends.
    """
    lo, hi = (float(b) for b in bounds)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"`bounds` must be 0 < low < high, finite, got {bounds!r}")
    _n_threads(n_threads)
    za = _logits(student, "student")
    va = _logits(teacher, "teacher")
    if va.shape != za.shape:
        raise ValueError(f"`teacher` shape {va.shape} does not match `student` shape {za.shape}")
    lead, c = za.shape[:-1], za.shape[-1]
    n = int(np.prod(lead, dtype=np.int64))
    keep, _ = _counted(None, mask, -100, lead, n, c)
    if not keep.any():
        raise ValueError("`mask` leaves no row to match")
    z = np.asarray(za, dtype=np.float64).reshape(n, c)
    v = np.asarray(va, dtype=np.float64).reshape(n, c)
    everything = np.ones(n, bool)  # sharpness checks every row, masked or not
    _check_rows(z, everything, True, "student")
    _check_rows(v, everything, True, "teacher")
    tS = _per_row(student_temperature, lead, n, "student_temperature", za.dtype)
    target = float(_lse(z, tS)[keep].mean())

    def f(T: float) -> float:
        return float(_lse(v, np.full(n, T))[keep].mean()) - target

    f_lo, f_hi = f(lo), f(hi)
    if f_lo == 0.0:
        return lo
    if f_hi == 0.0:
        return hi
    if (f_lo > 0) == (f_hi > 0):
        raise ValueError(
            f"no teacher temperature in [{lo:g}, {hi:g}] matches the student's mean sharpness "
            f"{target:.6g}: the teacher's mean sharpness ranges over "
            f"[{min(f_lo, f_hi) + target:.6g}, {max(f_lo, f_hi) + target:.6g}] there; "
            f"widen `bounds`")
    a, b = math.log(lo), math.log(hi)
    for _ in range(max_iter):
        mid = 0.5 * (a + b)
        f_mid = f(math.exp(mid))
        if f_mid == 0.0:
            return math.exp(mid)
        if (f_mid > 0) == (f_lo > 0):
            a, f_lo = mid, f_mid
        else:
            b = mid
        if b - a <= rtol:
            break
    return math.exp(0.5 * (a + b))
