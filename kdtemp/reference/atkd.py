r"""Pure-NumPy twins of ATKD (``kdtemp.atkd_loss``), ``kdtemp.sharpness`` and
``kdtemp.sharpness_gap`` (``shared/spec/atkd.md``).

Test oracle and benchmark baseline: float64 throughout, whole-array NumPy, written
the way the spec states the formulas; meant to be read, not to be fast. Shared
conventions (validation, ``-inf`` classes, skipped rows, reductions, the CE term,
float32 results) are those of :mod:`kdtemp.reference.kd`.

Notation: ``z`` student logits, ``v`` teacher logits, rows ``i`` of shape ``(N, C)``
after flattening the leading axes; ``F_i`` the finite entries of a row (``-inf``
entries are masked classes, left out of the mean and the std), ``n_i = |F_i|``::

    mean(x_i) = sum_{j in F_i} x_ij / n_i
    std(x_i)  = sqrt(sum_{j in F_i} (x_ij - mean(x_i))^2 / (n_i - ddof))   (0 if n_i <= ddof)
    lse(y)    = m + log sum_j exp(y_j - m),  m = max_j y_j
"""
from __future__ import annotations

import numbers
from types import MappingProxyType
from typing import Optional, Union

import numpy as np

from kdtemp._types import ATKDResult, LossResult
from kdtemp.reference.kd import (REDUCTIONS, _ce_rows, _check_choice, _check_finite,
                                 _check_logits, _check_temperature_range, _check_n_threads,
                                 _check_not_all_neginf,
                                 _check_out, _check_real, _counted_rows, _finish_grad,
                                 _kl_rows, _log_softmax_rows, _reduce, _row_array,
                                 _temperatures)

__all__ = ["atkd_loss", "presets", "sharpness", "sharpness_gap"]

SCALES = ("none", "base", "T2")


class _Presets:
    """The two papers' settings of :func:`atkd_loss` (the same values as
    ``kdtemp.presets``)::

        atkd                   b = 1, ddof 0, eps 1e-7, scale "none", kd 0.9, ce 0.1
        logit_standardization  b = 2, ddof 1, eps 1e-7, scale "base", kd 9,   ce 0.1
    """

    atkd = MappingProxyType(dict(base_temperature=1.0, ddof=0, eps=1e-7, scale="none",
                                 kd_weight=0.9, ce_weight=0.1))
    logit_standardization = MappingProxyType(dict(base_temperature=2.0, ddof=1, eps=1e-7,
                                                  scale="base", kd_weight=9.0,
                                                  ce_weight=0.1))

    def __getitem__(self, name: str):
        if name not in ("atkd", "logit_standardization"):
            raise KeyError(f"unknown preset {name!r}; have 'atkd', 'logit_standardization'")
        return getattr(self, name)


presets = _Presets()


def _check_finite_counted(x: np.ndarray, counted: np.ndarray, name: str) -> None:
    """NaN or +inf in a counted row is an error; skipped rows are never checked
    (padding may hold anything), as in the C kernels."""
    bad = (np.isnan(x) | np.isposinf(x)) & counted[:, None]
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"`{name}` contains NaN or +inf (row {i}, class {j}: "
                         f"{x[i, j]}); pass check_finite=False to skip this check")


# --------------------------------------------------------------------------------
# Row statistics
# --------------------------------------------------------------------------------

def _finite_mean_std(x: np.ndarray, ddof: int):
    """(mean, std, n_finite) of each row's finite entries, float64.

    ``std = sqrt(sum_{j in F} (x_j - mean)^2 / (n - ddof))``, 0 when ``n <= ddof``.
    Rows must have at least one finite entry (checked by the caller). Deviations are
    taken of ``x - max(x)`` (as the kernels do), so a constant row has a std of
    exactly 0, not the rounding of an inexact mean.
    """
    fin = np.isfinite(x)
    n = fin.sum(axis=1)
    shift = np.where(fin, x, -np.inf).max(axis=1, initial=-np.inf)
    shift = np.where(np.isfinite(shift), shift, 0.0)
    d = np.where(fin, x - shift[:, None], 0.0)
    mean_d = d.sum(axis=1) / np.maximum(n, 1)
    mean = shift + mean_d
    dev = np.where(fin, d - mean_d[:, None], 0.0)
    dof = n - ddof
    std = np.sqrt((dev * dev).sum(axis=1) / np.where(dof > 0, dof, 1))
    return mean, np.where(dof > 0, std, 0.0), n


# --------------------------------------------------------------------------------
# ATKD loss
# --------------------------------------------------------------------------------

def atkd_loss(student, teacher, *, base_temperature: float = 1.0, ddof: int = 0,
              eps: float = 1e-7, scale: str = "none", detach_temperature: bool = False,
              labels=None, ignore_index: int = -100, mask=None, kd_weight: float = 1.0,
              ce_weight: float = 0.0, reduction: str = "batchmean",
              compute_grad: bool = True, out=None, check_finite: bool = True,
              n_threads: Optional[int] = None,
              return_temperatures: bool = False) -> Union[LossResult, ATKDResult]:
    r"""ATKD loss and its gradient (NumPy twin of ``kdtemp.atkd_loss``).

    Per counted row ``i`` (``b = base_temperature``)::

        tT_i = b (std(v_i) + eps),    tS_i = b (std(z_i) + eps)
        pT_i = softmax(v_i / tT_i),   pS_i = softmax(z_i / tS_i)
        atkd_i = s_i KL(pT_i || pS_i)
        loss_i = kd_weight * atkd_i + ce_weight * ce_i

    ``std`` over the row's finite entries with ``ddof``; ``s_i = 1`` (``"none"``),
    ``b^2`` (``"base"``) or ``tS_i tT_i`` (``"T2"``); ``ce_i`` as in
    :func:`kdtemp.reference.kd_loss` (no label smoothing).

    Gradient (the student's temperature is part of the function unless
    ``detach_temperature``), with ``u = z_i / tS_i``, ``g = s_i (pS_i - pT_i)``,
    ``sigma = std(z_i)``::

        dtS/dz_ij = b (z_ij - mean(z_i)) / ((n_i - ddof) sigma)   (0 for -inf entries,
                                                                   0 when sigma == 0)
        d atkd_i / d z_ij = g_j / tS - P_i s_i / tS^2 * dtS/dz_ij
                          [+ KL_i tT_i dtS/dz_ij          for scale="T2"]
        P_i = mT sum_k pS_k z_ik - sum_{k in F} pT_k z_ik,   mT = sum_{k in F} pT_k

    ``F`` the finite entries of ``z_i`` (a ``-inf`` entry does not move with tS);
    ``mT = 1`` unless the teacher has mass where the student is ``-inf`` (an
    infinite KL, whose finite part P then differentiates, shift invariant).

    ``detach_temperature=True`` keeps only ``g_j / tS``. The teacher's temperature
    never carries gradient. Rows, reductions, ``-inf`` and ``out`` as in
    :func:`kdtemp.reference.kd_loss`.

    Returns
    -------
    LossResult, or ATKDResult with ``return_temperatures=True`` (``tS``, ``tT`` per
    row as float64 of the leading shape, NaN on skipped rows).

    Raises
    ------
    TypeError
        Bad dtypes, a non-integer ``ddof``.
    ValueError
        Unknown ``scale``/``reduction``, ``ddof < 0``, ``base_temperature`` or
        ``eps`` not finite and > 0, plus the errors of ``kd_loss``.
    """
    student = _check_logits(student, "student")
    teacher = _check_logits(teacher, "teacher")
    if teacher.dtype != student.dtype:
        raise TypeError(f"`teacher` dtype {teacher.dtype} does not match `student` "
                        f"dtype {student.dtype}")
    if teacher.shape != student.shape:
        raise ValueError(f"`teacher` shape {teacher.shape} does not match `student` "
                         f"shape {student.shape}")
    scale = _check_choice(scale, "scale", SCALES)
    reduction = _check_choice(reduction, "reduction", REDUCTIONS)
    if isinstance(ddof, bool) or not isinstance(ddof, numbers.Integral):
        raise TypeError(f"`ddof` must be an int, got {type(ddof).__name__}")
    ddof = int(ddof)
    if ddof < 0:
        raise ValueError(f"`ddof` must be >= 0, got {ddof}")
    b = _check_real(base_temperature, "base_temperature")
    if not b > 0:
        raise ValueError(f"`base_temperature` must be finite and > 0, got {b!r}")
    eps = _check_real(eps, "eps")
    if not eps > 0:
        raise ValueError(f"`eps` must be finite and > 0, got {eps!r}")
    _check_temperature_range(b * eps, "base_temperature * eps", student.dtype)  # tS, tT >= b eps
    kd_weight = _check_real(kd_weight, "kd_weight")
    ce_weight = _check_real(ce_weight, "ce_weight")
    if ce_weight != 0.0 and labels is None:
        raise ValueError(f"`labels` are required when `ce_weight` != 0 "
                         f"(got ce_weight={ce_weight!r})")
    _check_n_threads(n_threads)

    c = student.shape[-1]
    lead = student.shape[:-1]
    n = int(np.prod(lead, dtype=np.int64))
    counted, flat_labels = _counted_rows(labels, mask, int(ignore_index), lead, n, c)
    if compute_grad and out is not None:
        _check_out(out, student)

    z = np.array(student, dtype=np.float64).reshape(n, c)  # a copy: `out` may alias it
    v = np.array(teacher, dtype=np.float64).reshape(n, c)
    if check_finite:
        _check_finite_counted(z, counted, "student")
        _check_finite_counted(v, counted, "teacher")
    _check_not_all_neginf(z, counted, "student")
    _check_not_all_neginf(v, counted, "teacher")

    rows = np.flatnonzero(counted)
    zc, vc = z[rows], v[rows]
    loss_c = np.zeros(rows.size)
    grad_c = np.zeros_like(zc)
    t_s_c = np.zeros(rows.size)
    t_t_c = np.zeros(rows.size)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf only if check_finite=False
        mean_z, sigma_z, n_z = _finite_mean_std(zc, ddof)
        _, sigma_v, _ = _finite_mean_std(vc, ddof)
        t_s_c = b * (sigma_z + eps)
        t_t_c = b * (sigma_v + eps)
        if kd_weight != 0.0:
            log_ps = _log_softmax_rows(zc, t_s_c)
            log_pt = _log_softmax_rows(vc, t_t_c)
            # a KL is >= 0: a negative value is rounding, dropped (as the kernel does)
            kl = np.maximum(_kl_rows(np.exp(log_pt), log_pt, log_ps), 0.0)
            s = {"none": np.ones(rows.size), "base": np.full(rows.size, b * b),
                 "T2": t_s_c * t_t_c}[scale]
            loss_c += kd_weight * s * kl
            if compute_grad:
                g = s[:, None] * (np.exp(log_ps) - np.exp(log_pt))  # d atkd / d u
                grad_kd = g / t_s_c[:, None]
                if not detach_temperature:
                    fin = np.isfinite(zc)
                    live = sigma_z > 0
                    # dtS/dz_ij, 0 on -inf entries and on rows with sigma == 0
                    denom = np.where(live, (n_z - ddof) * sigma_z, 1.0)
                    dts_dz = np.where(fin & live[:, None],
                                      b * (zc - mean_z[:, None]) / denom[:, None], 0.0)
                    ps, pt = np.exp(log_ps), np.exp(log_pt)
                    dz = np.where(fin, zc - mean_z[:, None], 0.0)  # sum pS = 1: any shift
                    m_t = np.where(fin, pt, 0.0).sum(axis=1)
                    p_tS = m_t * (ps * dz).sum(axis=1) - (pt * dz).sum(axis=1)
                    d_ts = -s * p_tS / t_s_c**2  # d atkd / d tS through u
                    if scale == "T2":
                        # through s = tS tT; an infinite KL has no finite share here
                        d_ts = d_ts + np.where(np.isfinite(kl), kl * t_t_c, 0.0)
                    grad_kd = grad_kd + d_ts[:, None] * dts_dz
                grad_c += kd_weight * grad_kd
        if ce_weight != 0.0:
            ce, ce_grad = _ce_rows(zc, flat_labels[rows], 0.0)
            loss_c += ce_weight * ce
            if compute_grad:
                grad_c += ce_weight * ce_grad

    per_row = np.zeros(n)
    per_row[rows] = loss_c
    grad64 = None
    if compute_grad:
        grad64 = np.zeros((n, c))
        grad64[rows] = grad_c
    loss, grad64, count = _reduce(per_row, grad64, counted, reduction, lead, student.dtype)
    grad = _finish_grad(grad64, student, out) if compute_grad else None
    if not return_temperatures:
        return LossResult(loss, grad, count)
    t_s = np.full(n, np.nan)
    t_t = np.full(n, np.nan)
    t_s[rows] = t_s_c
    t_t[rows] = t_t_c
    return ATKDResult(loss, grad, count, t_s.reshape(lead), t_t.reshape(lead))


# --------------------------------------------------------------------------------
# Sharpness
# --------------------------------------------------------------------------------

def _lse_rows(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """lse(x_i / t_i) = m_i + log sum_j exp(x_ij / t_i - m_i), m_i = max_j x_ij / t_i."""
    y = x / t[:, None]
    m = y.max(axis=1)
    return m + np.log(np.exp(y - m[:, None]).sum(axis=1))


def sharpness(logits, temperature=1.0, *, check_finite: bool = True,
              n_threads: Optional[int] = None) -> np.ndarray:
    r"""Per-row sharpness (NumPy twin of ``kdtemp.sharpness``)::

        sharpness(x_i; t_i) = lse(x_i / t_i) = log sum_j exp(x_ij / t_i)

    ``temperature``: a scalar, or one per row (shape of the leading axes or (N,)),
    finite and > 0. ``-inf`` entries contribute 0. Returns float64 of the leading
    shape. NaN/+inf logits (with ``check_finite``) and all ``-inf`` rows raise
    ``ValueError``.
    """
    x = _check_logits(logits, "logits")
    _check_n_threads(n_threads)
    c = x.shape[-1]
    lead = x.shape[:-1]
    n = int(np.prod(lead, dtype=np.int64))
    t = _temperatures(_flat_per_row(temperature, lead), n, "temperature", dtype=x.dtype)
    rows = np.array(x, dtype=np.float64).reshape(n, c)
    if check_finite:
        _check_finite(rows, "logits")
    _check_not_all_neginf(rows, np.ones(n, bool), "logits")
    with np.errstate(invalid="ignore", over="ignore"):
        return _lse_rows(rows, t).reshape(lead)


def _flat_per_row(t, lead):
    """A per-row array given with the leading shape becomes flat (N,)."""
    a = np.asarray(t)
    if a.ndim > 1 and a.shape == lead:
        return a.reshape(-1)
    return t


def sharpness_gap(student, teacher, student_temperature=1.0, teacher_temperature=1.0, *,
                  approximate: bool = False, mask=None, reduction: str = "mean",
                  check_finite: bool = True,
                  n_threads: Optional[int] = None) -> Union[float, np.ndarray]:
    r"""ATKD's sharpness gap (NumPy twin of ``kdtemp.sharpness_gap``)::

        gap_i = lse(v_i / tT_i) - lse(z_i / tS_i)                        (exact)
        gap_i ~ log(1 + 0.5 (std(v_i)/tT_i)^2) - log(1 + 0.5 (std(z_i)/tS_i)^2)
                                                        (approximate=True, eq. 9)

    with the population std (ddof 0) of each row's finite entries. ``reduction="mean"``:
    the mean over rows where ``mask`` is true (0.0 if none); ``"none"``: per row
    (float64, leading shape). Inputs are validated as by :func:`sharpness` in both
    modes.
    """
    if not isinstance(reduction, str) or reduction not in ("mean", "none"):
        raise ValueError(f"`reduction` must be 'mean' or 'none', got {reduction!r}")
    z = _check_logits(student, "student")
    v = _check_logits(teacher, "teacher")
    if v.shape != z.shape:
        raise ValueError(f"`teacher` shape {v.shape} does not match `student` "
                         f"shape {z.shape}")
    lead = z.shape[:-1]
    n = int(np.prod(lead, dtype=np.int64))
    keep = np.ones(n, bool)
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype.kind not in "biu":
            raise TypeError(f"`mask` must be a boolean (or integer) array, got dtype {m.dtype}")
        keep = _row_array(m, "mask", lead, n).astype(bool)
    t_s = _temperatures(_flat_per_row(student_temperature, lead), n, "student_temperature",
                        dtype=z.dtype)
    t_t = _temperatures(_flat_per_row(teacher_temperature, lead), n, "teacher_temperature",
                        dtype=z.dtype)
    lse_s = sharpness(z, t_s, check_finite=check_finite, n_threads=n_threads).reshape(n)
    lse_t = sharpness(v, t_t, check_finite=check_finite, n_threads=n_threads).reshape(n)
    if approximate:
        zc = np.asarray(z, np.float64).reshape(n, -1)
        vc = np.asarray(v, np.float64).reshape(n, -1)
        _, sd_z, _ = _finite_mean_std(zc, 0)
        _, sd_v, _ = _finite_mean_std(vc, 0)
        gap = np.log1p(0.5 * (sd_v / t_t) ** 2) - np.log1p(0.5 * (sd_z / t_s) ** 2)
    else:
        gap = lse_t - lse_s
    if reduction == "none":
        return gap.reshape(lead)
    return float(gap[keep].mean()) if keep.any() else 0.0
