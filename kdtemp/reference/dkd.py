r"""Pure-NumPy twin of DKD, decoupled knowledge distillation (``kdtemp.dkd_loss``;
``shared/spec/kd.md``, DKD section, mdistiller's ``DKD.py``).

Test oracle and benchmark baseline: float64, whole-array NumPy, log space
throughout. Shared conventions (validation, ``-inf`` classes, skipped rows,
reductions, the CE term, float32 results) are those of :mod:`kdtemp.reference.kd`.

With labels ``y_i``, temperatures ``T_i`` and ``log pS = log_softmax(z / T)``,
``log pT = log_softmax(v / T)``::

    log(1 - pS_y) = lse_{j != y}(z / T) - lse(z / T)           (no 1 - p cancellation)
    TCKD_i = KL([pT_y, 1 - pT_y] || [pS_y, 1 - pS_y])
    qS = softmax_{j != y}(z / T),  qT = softmax_{j != y}(v / T)  (target excluded exactly)
    NCKD_i = KL(qT || qS)
    dkd_i  = (alpha TCKD_i + beta NCKD_i) T_i^2

(TCKD and NCKD are clamped at 0: a KL is >= 0, so a negative value is rounding.)
A side whose non-target logits are all ``-inf`` has ``q = 0``: NCKD is 0 (and
constant) when the teacher has no non-target mass, ``+inf`` when only the student
has none. A zero ``alpha`` or ``beta`` drops its term, even an infinite one.
    loss_i = kd_weight * dkd_i + ce_weight * ce_i
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from kdtemp._types import LossResult
from kdtemp.reference.atkd import _check_finite_counted
from kdtemp.reference.kd import (REDUCTIONS, _ce_rows, _check_choice, _check_logits,
                                 _check_n_threads, _check_not_all_neginf, _check_out,
                                 _check_real, _counted_rows, _finish_grad, _kl_rows,
                                 _reduce, _temperatures)

__all__ = ["dkd_loss"]


def _lse(y: np.ndarray) -> np.ndarray:
    """log sum_j exp(y_ij) per row; ``-inf`` for a row that is all ``-inf`` (or empty)."""
    if y.shape[1] == 0:
        return np.full(y.shape[0], -np.inf)
    m = y.max(axis=1)
    safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return safe + np.log(np.exp(y - safe[:, None]).sum(axis=1))


def _xlogy_diff(p: np.ndarray, log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """p (log p - log q) elementwise with 0 log 0 = 0."""
    out = np.zeros_like(p)
    pos = p > 0
    out[pos] = p[pos] * (log_p[pos] - log_q[pos])
    return out


def _dkd_rows(z: np.ndarray, v: np.ndarray, y: np.ndarray, t: np.ndarray,
              alpha: float, beta: float, compute_grad: bool):
    """Per-row ``(alpha TCKD + beta NCKD) T^2`` and its gradient with respect to ``z``.

    Gradient, ``d dkd_i / d z_ij = T_i * G_ij`` with::

        j == y: G = alpha (pS_y - pT_y)
        j != y: G = alpha (pT_y - pS_y) qS_j + beta (qS_j - qT_j)

    (``dkd`` is ``T^2`` times a function of ``z / T``).
    """
    n, c = z.shape
    r = np.arange(n)
    a = z / t[:, None]
    b = v / t[:, None]
    lse_s, lse_t = _lse(a), _lse(b)
    target = np.zeros((n, c), bool)
    target[r, y] = True
    a_nt = np.where(target, -np.inf, a)  # the target class excluded exactly
    b_nt = np.where(target, -np.inf, b)
    lse_s_nt, lse_t_nt = _lse(a_nt), _lse(b_nt)

    # binary target / non-target distributions, in log space
    log_bs = np.stack([a[r, y] - lse_s, lse_s_nt - lse_s], axis=1)
    log_bt = np.stack([b[r, y] - lse_t, lse_t_nt - lse_t], axis=1)
    tckd = _xlogy_diff(np.exp(log_bt), log_bt, log_bs).sum(axis=1)

    # non-target distributions; a side with no non-target mass (all -inf, or
    # C == 1) has q = 0
    s_nt, t_nt = lse_s_nt > -np.inf, lse_t_nt > -np.inf
    with np.errstate(invalid="ignore"):
        log_qs = np.where(s_nt[:, None], a_nt - lse_s_nt[:, None], -np.inf)
        log_qt = np.where(t_nt[:, None], b_nt - lse_t_nt[:, None], -np.inf)
    qt = np.where(target, 0.0, np.exp(np.where(target, -np.inf, log_qt)))
    nckd = _kl_rows(qt, log_qt, log_qs)
    # both are KLs, >= 0: drop the rounding below 0 (as the kernels do)
    tckd, nckd = np.maximum(tckd, 0.0), np.maximum(nckd, 0.0)
    dkd = ((alpha * tckd if alpha != 0 else 0.0) + (beta * nckd if beta != 0 else 0.0)) * t**2
    if not compute_grad:
        return dkd, None
    ps_y, pt_y = np.exp(log_bs[:, 0]), np.exp(log_bt[:, 0])
    qs = np.where(target, 0.0, np.exp(np.where(target, -np.inf, log_qs)))
    # NCKD is constant (0) when the teacher has no non-target mass
    grad = alpha * (pt_y - ps_y)[:, None] * qs + beta * np.where(t_nt[:, None], qs - qt, 0.0)
    grad[r, y] = alpha * (ps_y - pt_y)
    return dkd, t[:, None] * grad


def dkd_loss(student, teacher, labels, *, temperature=4.0, alpha: float = 1.0,
             beta: float = 8.0, ignore_index: int = -100, mask=None,
             kd_weight: float = 1.0, ce_weight: float = 0.0,
             label_smoothing: float = 0.0, reduction: str = "batchmean",
             compute_grad: bool = True, out=None, check_finite: bool = True,
             n_threads: Optional[int] = None) -> LossResult:
    r"""Decoupled KD loss and its gradient (NumPy twin of ``kdtemp.dkd_loss``).

    Per counted row ``i`` (label ``y``, temperature ``T``)::

        TCKD_i = KL([pT_y, 1 - pT_y] || [pS_y, 1 - pS_y])
        NCKD_i = KL(softmax_{j != y}(v_i / T) || softmax_{j != y}(z_i / T))
        loss_i = kd_weight (alpha TCKD_i + beta NCKD_i) T^2 + ce_weight ce_i

    Gradient, ``q`` the non-target softmaxes::

        d dkd_i / d z_iy = T alpha (pS_y - pT_y)
        d dkd_i / d z_ij = T (alpha (pT_y - pS_y) qS_j + beta (qS_j - qT_j)),  j != y

    ``labels`` are required (rows equal to ``ignore_index`` are skipped);
    ``temperature`` is a scalar or one per row; ``alpha``, ``beta`` finite and >= 0.
    mdistiller's warm-up factor ``min(epoch / 20, 1)`` belongs to ``kd_weight``.
    Other parameters as in :func:`kdtemp.reference.kd_loss`.

    Raises
    ------
    TypeError
        Bad dtypes, non-integer labels, non-numeric ``alpha``/``beta``.
    ValueError
        ``labels`` None, ``alpha``/``beta`` negative or not finite, plus the errors
        of ``kd_loss``.
    """
    student = _check_logits(student, "student")
    teacher = _check_logits(teacher, "teacher")
    if teacher.dtype != student.dtype:
        raise TypeError(f"`teacher` dtype {teacher.dtype} does not match `student` "
                        f"dtype {student.dtype}")
    if teacher.shape != student.shape:
        raise ValueError(f"`teacher` shape {teacher.shape} does not match `student` "
                         f"shape {student.shape}")
    if labels is None:
        raise ValueError("`labels` are required by DKD, got None")
    reduction = _check_choice(reduction, "reduction", REDUCTIONS)
    alpha = _check_real(alpha, "alpha")
    beta = _check_real(beta, "beta")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if value < 0:
            raise ValueError(f"`{name}` must be finite and >= 0, got {value!r}")
    kd_weight = _check_real(kd_weight, "kd_weight")
    ce_weight = _check_real(ce_weight, "ce_weight")
    eps = _check_real(label_smoothing, "label_smoothing")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"`label_smoothing` must be in [0, 1], got {eps!r}")
    _check_n_threads(n_threads)

    c = student.shape[-1]
    lead = student.shape[:-1]
    n = int(np.prod(lead, dtype=np.int64))
    t = np.asarray(temperature)
    t_all = _temperatures(t.reshape(-1) if t.ndim > 1 and t.shape == lead else temperature,
                          n, "temperature", dtype=student.dtype)
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
    loss_c = np.zeros(rows.size)
    grad_c = np.zeros((rows.size, c))
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf only if check_finite=False
        if kd_weight != 0.0 and rows.size:
            dkd, g = _dkd_rows(z[rows], v[rows], flat_labels[rows], t_all[rows], alpha, beta,
                               compute_grad)
            loss_c += kd_weight * dkd
            if compute_grad:
                grad_c += kd_weight * g
        if ce_weight != 0.0 and rows.size:
            ce, ce_grad = _ce_rows(z[rows], flat_labels[rows], eps)
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
    return LossResult(loss, grad, count)

