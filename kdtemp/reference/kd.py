r"""Pure-NumPy twins of the KD loss kernels (``kdtemp.kd_loss``, ``kdtemp.ce_loss``,
``kdtemp.softmax``, ``kdtemp.log_softmax``).

This module is the test oracle and the benchmark baseline: every formula is written
out the way ``shared/spec/kd.md`` states it, in float64, one whole-array NumPy
expression at a time. It is meant to be read, not to be fast.

Notation (``shared/spec/README.md``): ``z`` student logits, ``v`` teacher logits,
shape ``(N, C)`` after flattening the leading axes; ``tS_i``, ``tT_i`` the student and
teacher temperatures of row ``i``;

    log pS_ij = z_ij / tS_i - lse(z_i / tS_i),   lse(x) = m + log sum_j exp(x_j - m),
                                                 m = max_j x_j,

evaluated as ``(y_ij - m_i) - log sum_k exp(y_ik - m_i)`` with ``y = z / tS`` (never
``log(softmax)``), ``pS = exp(log pS)``, likewise ``pT`` from ``v`` and ``tT``,
and ``KL(P || Q) = sum_j P_j (log P_j - log Q_j)`` with ``0 * log 0 = 0``.

Decisions shared with the C kernels, beyond kd.md:

* float32 input is computed in float64 and the results (gradient, per-row losses for
  ``reduction="none"``) are cast back to float32; reduced losses are Python floats.
* A row whose divergence is ``+inf`` gets a zero gradient row for every divergence
  except ``"kl"``, whose gradient ``(s/tS)(pS - pT)`` stays finite and is kept. The
  CE term's gradient ``softmax(z) - q`` is always finite and is always kept.
* A term whose weight (``kd_weight``, ``ce_weight``) is 0 contributes exactly 0 (it is
  not evaluated, so ``0 * inf`` never makes a NaN).
* Skipped rows are never checked: NaN/+inf logits and out-of-range labels are errors
  in counted rows only (kd.md says "any logit"; the kernels never read skipped rows).
* Per-row arrays (temperatures, labels, mask) have shape ``(N,)`` or the leading
  shape of the input. ``out`` together with ``compute_grad=False`` is a ValueError.
"""
from __future__ import annotations

import numbers
from typing import Optional, Tuple, Union

import numpy as np

from kdtemp._types import LossResult

__all__ = ["kd_loss", "ce_loss", "softmax", "log_softmax"]

DIVERGENCES = ("kl", "reverse_kl", "symmetric_kl", "jsd", "skew_kl",
               "skew_reverse_kl", "tvd")
REDUCTIONS = ("batchmean", "sum", "none")
SCALES = ("T2", "none")

# --------------------------------------------------------------------------------
# Validation helpers (every message names the argument)
# --------------------------------------------------------------------------------

def _check_logits(x, name: str) -> np.ndarray:
    """``x`` as an ndarray of float32/float64 with at least one axis and C > 0."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"`{name}` must be float32 or float64, got dtype {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"`{name}` must have shape (..., C) with at least one axis, "
                         f"got a 0-d array")
    if x.shape[-1] == 0:
        raise ValueError(f"`{name}` must have at least one class (C > 0), "
                         f"got shape {x.shape}")
    return x


def _check_finite(rows: np.ndarray, name: str, counted: Optional[np.ndarray] = None) -> None:
    """NaN or +inf in a counted row is an error; -inf (a masked class) is allowed.

    Skipped rows (``counted[i]`` false) are not checked: the kernels never read them.
    ``counted=None`` checks every row.
    """
    bad = np.isnan(rows) | np.isposinf(rows)
    if counted is not None:
        bad &= counted[:, None]
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"`{name}` contains NaN or +inf (row {i}, class {j}: "
                         f"{rows[i, j]}); pass check_finite=False to skip this check")


def _check_not_all_neginf(rows: np.ndarray, counted: np.ndarray, name: str) -> None:
    """A counted row must have at least one logit > -inf."""
    dead = np.all(np.isneginf(rows), axis=1) & counted
    if dead.any():
        i = int(np.flatnonzero(dead)[0])
        raise ValueError(f"`{name}` row {i} is all -inf (no class has probability "
                         f"> 0); skip it with `labels`/`mask` or fix the logits")


def _check_choice(value, name: str, choices: Tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}, "
                         f"got {value!r}")
    return value


def _check_real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value!r}")
    return value


def _check_n_threads(n_threads) -> None:
    """Validated only; the reference is single-threaded."""
    if n_threads is None:
        return
    if isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral):
        raise TypeError(f"`n_threads` must be an int or None, got "
                        f"{type(n_threads).__name__}")
    if n_threads == 0:
        raise ValueError("`n_threads` must be != 0 (None for the default, a negative "
                         "count to count back from the maximum), got 0")


def min_temperature(dtype) -> float:
    """The smallest temperature the kernels take for logits of ``dtype``: the one
    whose inverse is the dtype's largest finite value (float32 2.9e-39, float64
    5.6e-309); below it ``x / t`` overflows at every logit."""
    return 1.0 / float(np.finfo(dtype).max)


def _check_temperature_range(t: np.ndarray, name: str, dtype, where=None) -> None:
    """ValueError naming ``name`` for the first value of ``t`` below
    :func:`min_temperature` or above the dtype's largest value (whose inverse
    would underflow); ``where(i)`` says where it is."""
    lo, hi = min_temperature(dtype), float(np.finfo(dtype).max)
    bad = (np.asarray(t) < lo) | (np.asarray(t) > hi)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        at = where(i) if where else ""
        raise ValueError(f"`{name}` must be in [{lo:.3g}, {hi:.3g}] for {np.dtype(dtype).name} "
                         f"logits (it and its inverse must be finite), "
                         f"got {float(np.ravel(t)[i])!r}{at}")


def _temperatures(t, n: int, name: str, lead: Optional[Tuple[int, ...]] = None,
                  dtype=None) -> np.ndarray:
    """A scalar, a length-N 1-D array or (if given) an array of the leading shape
    ``lead`` of temperatures -> float64 array of shape (N,). Every value must be
    finite and > 0, and with ``dtype`` (of the logits) >= ``min_temperature(dtype)``.
    """
    lead = (n,) if lead is None else lead
    arr = np.asarray(t)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"`{name}` must be a real number or a 1-D array of them, "
                        f"got {type(t).__name__} of dtype {arr.dtype}")
    if arr.ndim == 0:
        arr = np.full(n, float(arr), dtype=np.float64)
    elif arr.shape == (n,) or arr.shape == lead:
        arr = arr.reshape(n).astype(np.float64)
    else:
        raise ValueError(f"`{name}` must be a scalar or an array of shape {lead} or "
                         f"({n},) (one per row), got shape {arr.shape}")
    bad = ~(np.isfinite(arr) & (arr > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = "" if np.ndim(t) == 0 else f" (row {i})"
        raise ValueError(f"`{name}` must be finite and > 0, got {arr[i]!r}{where}")
    if dtype is not None:
        _check_temperature_range(arr, name, dtype,
                               None if np.ndim(t) == 0 else (lambda i: f" (row {i})"))
    return arr


def _row_array(a, name: str, lead: Tuple[int, ...], n: int) -> np.ndarray:
    """``labels``/``mask`` as a flat length-N array; shape ``lead`` or ``(N,)``."""
    a = np.asarray(a)
    if a.shape != lead and a.shape != (n,):
        raise ValueError(f"`{name}` must have shape {lead} (the leading axes of "
                         f"`student`) or ({n},), got shape {a.shape}")
    return a.reshape(n)


def _counted_rows(labels, mask, ignore_index: int, lead: Tuple[int, ...], n: int,
                  c: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Which rows count, and the labels as flat int64 (or None).

    Row i is skipped when ``labels[i] == ignore_index`` or ``mask[i]`` is false
    (an integer mask counts where it is != 0). A counted row's label must be in
    ``[0, C)``; a skipped row's label is not checked.
    """
    counted = np.ones(n, dtype=bool)
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype.kind not in "biu":
            raise TypeError(f"`mask` must be a boolean (or integer) array, "
                            f"got dtype {m.dtype}")
        counted &= _row_array(m, "mask", lead, n) != 0
    flat_labels = None
    if labels is not None:
        lab = np.asarray(labels)
        if lab.dtype.kind not in "iu":
            raise TypeError(f"`labels` must be an integer array, got dtype {lab.dtype}")
        lab = _row_array(lab, "labels", lead, n).astype(np.int64)
        counted &= lab != ignore_index
        bad = counted & ((lab < 0) | (lab >= c))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"`labels` must be in [0, {c}) or equal to ignore_index="
                             f"{ignore_index}, got {lab[i]} (row {i})")
        flat_labels = lab
    return counted, flat_labels


def _check_out(out, like: np.ndarray, compute_grad: bool = True) -> None:
    if not compute_grad:
        raise ValueError("`out` was given but compute_grad=False (there is no gradient "
                         "to write)")
    if not isinstance(out, np.ndarray):
        raise TypeError(f"`out` must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != like.dtype:
        raise TypeError(f"`out` must have dtype {like.dtype} (that of the input), "
                        f"got {out.dtype}")
    if out.shape != like.shape:
        raise ValueError(f"`out` must have shape {like.shape} (that of the input), "
                         f"got {out.shape}")
    if not out.flags.writeable:
        raise ValueError("`out` must be writable")


# --------------------------------------------------------------------------------
# Math helpers, row-wise on float64 (N, C) arrays
# --------------------------------------------------------------------------------

def _log_softmax_rows(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """log p_ij = x_ij/t_i - lse(x_i/t_i), lse(y) = m + log sum_j exp(y_j - m), m = max_j y_j.

    Evaluated as ``(y_ij - m_i) - log sum_k exp(y_ik - m_i)`` with ``y = x/t``: the
    same value, without first adding ``m`` to a small log (so a probability near 1
    keeps its full relative accuracy in ``1 - p``, as torch's log_softmax does).
    ``-inf`` entries give ``log p = -inf`` (p = 0). Rows must not be all ``-inf``.
    """
    y = x / t[:, None]
    shifted = y - y.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _log_mix(w: float, log_a: np.ndarray, log_b: np.ndarray) -> np.ndarray:
    """log M, M = w A + (1 - w) B (0 <= w < 1), from log A and log B.

    Evaluated as ``logaddexp(log w + log A, log(1 - w) + log B)`` so that M stays
    exact where A and B underflow (``log 0 = -inf`` for w = 0 or A = B = 0).
    """
    with np.errstate(divide="ignore"):
        log_w = np.log(w)
    return np.logaddexp(log_w + log_a, np.log1p(-w) + log_b)


def _kl_rows(p: np.ndarray, log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """KL(P || Q)_i = sum_j P_ij (log P_ij - log Q_ij), with 0 * log 0 = 0.

    Only entries with P_ij > 0 are evaluated; where Q_ij = 0 there the row is +inf.
    """
    terms = np.zeros_like(p)
    pos = p > 0
    terms[pos] = p[pos] * (log_p[pos] - log_q[pos])
    return terms.sum(axis=1)


def _divergence_rows(div: str, log_ps: np.ndarray, log_pt: np.ndarray, beta: float,
                     alpha: float) -> np.ndarray:
    """D_i of kd.md's table (before the scale s_i), for every row of the inputs.

    ============== ====================================================================
    kl             KL(pT || pS)
    reverse_kl     KL(pS || pT)
    symmetric_kl   KL(pT || pS) + KL(pS || pT)
    jsd            beta KL(pT || M) + (1-beta) KL(pS || M),   M = beta pT + (1-beta) pS
    skew_kl        KL(pT || M),                               M = alpha pT + (1-alpha) pS
    skew_reverse_kl KL(pS || M),                              M = alpha pS + (1-alpha) pT
    tvd            0.5 sum_j |pT_j - pS_j|
    ============== ====================================================================
    """
    ps, pt = np.exp(log_ps), np.exp(log_pt)
    if div == "kl":
        return _kl_rows(pt, log_pt, log_ps)
    if div == "reverse_kl":
        return _kl_rows(ps, log_ps, log_pt)
    if div == "symmetric_kl":
        return _kl_rows(pt, log_pt, log_ps) + _kl_rows(ps, log_ps, log_pt)
    if div == "jsd":
        log_m = _log_mix(beta, log_pt, log_ps)
        return beta * _kl_rows(pt, log_pt, log_m) + (1.0 - beta) * _kl_rows(ps, log_ps, log_m)
    if div == "skew_kl":
        return _kl_rows(pt, log_pt, _log_mix(alpha, log_pt, log_ps))
    if div == "skew_reverse_kl":
        return _kl_rows(ps, log_ps, _log_mix(alpha, log_ps, log_pt))
    if div == "tvd":
        return 0.5 * np.abs(pt - ps).sum(axis=1)
    raise AssertionError(div)  # unreachable: validated by the caller


def _divergence_grad_rows(div: str, log_ps: np.ndarray, log_pt: np.ndarray,
                          beta: float, alpha: float) -> np.ndarray:
    """dD_i/d(z_ij/tS_i) for rows whose D_i is finite.

    With g_j = dD/dpS_j (teacher fixed) and h_j = pS_j g_j, the softmax Jacobian
    gives

        dD/d(z_j/tS) = pS_j (g_j - sum_k pS_k g_k) = h_j - pS_j sum_k h_k

    ============== ==========================================================
    kl             pS - pT                       (h = -pT, simplified)
    reverse_kl     g = log pS - log pT
    symmetric_kl   the sum of the kl and reverse_kl gradients
    jsd            g = (1-beta) log(pS/M),       M = beta pT + (1-beta) pS
    skew_kl        h = -pT (1-alpha) pS/M,       M = alpha pT + (1-alpha) pS
    skew_reverse_kl g = log(pS/M) - alpha pS/M,  M = alpha pS + (1-alpha) pT
    tvd            g = 0.5 sign(pS - pT),        sign(0) = 0
    ============== ==========================================================

    Additive constants in g cancel and are dropped. h is evaluated where pS_j > 0
    only (0 elsewhere), except skew_kl's, which is -pT where alpha = 0 and pS
    underflows. ``log M`` comes from :func:`_log_mix`, and the weighted ratios
    ``w pS/M`` (at most 1) as ``exp(log w + log pS - log M)``, so that neither
    overflows where M underflows.
    """
    ps, pt = np.exp(log_ps), np.exp(log_pt)
    if div == "kl":
        return ps - pt
    if div == "symmetric_kl":
        return (_divergence_grad_rows("kl", log_ps, log_pt, beta, alpha)
                + _divergence_grad_rows("reverse_kl", log_ps, log_pt, beta, alpha))
    if div == "skew_kl":
        log_m = _log_mix(alpha, log_pt, log_ps)
        h = np.zeros_like(ps)
        on = pt > 0
        h[on] = -pt[on] * np.exp(np.log1p(-alpha) + log_ps[on] - log_m[on])
        return h - ps * h.sum(axis=1, keepdims=True)
    pos = ps > 0
    g = np.zeros_like(ps)
    if div == "reverse_kl":
        g[pos] = log_ps[pos] - log_pt[pos]
    elif div == "jsd":
        log_m = _log_mix(beta, log_pt, log_ps)
        g[pos] = (1.0 - beta) * (log_ps[pos] - log_m[pos])
    elif div == "skew_reverse_kl":
        log_m = _log_mix(alpha, log_ps, log_pt)
        with np.errstate(divide="ignore"):
            log_alpha = np.log(alpha)
        g[pos] = (log_ps[pos] - log_m[pos]) - np.exp(log_alpha + log_ps[pos] - log_m[pos])
    elif div == "tvd":
        g = 0.5 * np.sign(ps - pt)
    else:
        raise AssertionError(div)  # unreachable
    return ps * (g - (ps * g).sum(axis=1, keepdims=True))


def _reduce(per_row: np.ndarray, grad: Optional[np.ndarray], counted: np.ndarray,
            reduction: str, lead: Tuple[int, ...], dtype) -> Tuple[Union[float, np.ndarray],
                                                                   Optional[np.ndarray], int]:
    """Apply the reduction to per-row losses (0 on skipped rows) and their gradient.

    batchmean: sum_i loss_i / count (0.0 and a zero gradient when count == 0);
    sum: sum_i loss_i; none: the per-row vector, shape ``lead``, dtype ``dtype``.
    """
    count = int(counted.sum())
    if reduction == "none":
        loss: Union[float, np.ndarray] = per_row.reshape(lead).astype(dtype)
    elif reduction == "sum":
        loss = float(per_row[counted].sum())
    else:  # batchmean
        loss = float(per_row[counted].sum() / count) if count else 0.0
        if grad is not None and count:
            grad = grad / count
    return loss, grad, count


def _finish_grad(grad64: np.ndarray, student: np.ndarray,
                 out: Optional[np.ndarray]) -> np.ndarray:
    """The float64 (N, C) gradient in the student's shape and dtype, in ``out`` if given."""
    grad = grad64.reshape(student.shape)
    if out is not None:
        out[...] = grad  # casts to out.dtype (== student.dtype)
        return out
    return grad.astype(student.dtype)


# --------------------------------------------------------------------------------
# Public twins
# --------------------------------------------------------------------------------

def kd_loss(student, teacher, *, temperature=4.0, teacher_temperature=None,
            divergence: str = "kl", beta: float = 0.5, alpha: float = 0.1,
            scale: str = "T2", labels=None, ignore_index: int = -100, mask=None,
            kd_weight: float = 1.0, ce_weight: float = 0.0, label_smoothing: float = 0.0,
            reduction: str = "batchmean", compute_grad: bool = True, out=None,
            check_finite: bool = True, n_threads: Optional[int] = None) -> LossResult:
    r"""Knowledge-distillation loss and its gradient (NumPy twin of ``kdtemp.kd_loss``).

    Per counted row ``i`` (``shared/spec/kd.md``)::

        loss_i = kd_weight * s_i * D_i(pT_i, pS_i) + ce_weight * ce_i
        pS_i = softmax(z_i / tS_i),  pT_i = softmax(v_i / tT_i)
        s_i  = tS_i * tT_i  (scale="T2")  or  1  (scale="none")
        ce_i = -sum_j q_ij log softmax(z_i)_j,   q_i = (1-eps) onehot(y_i) + eps/C

    with ``D`` one of (``divergence=``)::

        kl               KL(pT || pS)
        reverse_kl       KL(pS || pT)
        symmetric_kl     KL(pT || pS) + KL(pS || pT)
        jsd              beta KL(pT || M) + (1-beta) KL(pS || M),  M = beta pT + (1-beta) pS
        skew_kl          KL(pT || M),  M = alpha pT + (1-alpha) pS
        skew_reverse_kl  KL(pS || M),  M = alpha pS + (1-alpha) pT
        tvd              0.5 sum_j |pT_j - pS_j|

    Gradient with respect to the student logits::

        d loss_i / d z_ij = kd_weight * (s_i/tS_i) * pS_ij * (g_j - sum_k pS_ik g_k)
                          + ce_weight * (softmax(z_i)_j - q_ij),     g_j = dD_i/dpS_ij

    (for kl the first term is ``kd_weight * (s_i/tS_i) * (pS_ij - pT_ij)``). A row whose
    ``D_i`` is ``+inf`` gets a zero divergence gradient, except for ``"kl"``.

    Rows with ``labels[i] == ignore_index`` or ``mask[i]`` false are skipped: loss 0,
    gradient 0, not counted. Reductions: ``"batchmean"`` sum over counted rows / their
    count (0.0 when none count), ``"sum"``, ``"none"`` (per-row, 0 on skipped rows).

    Parameters
    ----------
    student, teacher : ndarray, shape (..., C), float32 or float64 (the same dtype)
        Logits; leading axes are flattened into N rows. ``-inf`` entries are masked
        classes (probability 0).
    temperature : float or ndarray of shape (N,) or (...)
        Student temperature ``tS`` (and teacher's when ``teacher_temperature`` is None).
    teacher_temperature : float or ndarray of shape (N,) or (...), optional
        Teacher temperature ``tT``.
    divergence : str
        One of ``"kl"``, ``"reverse_kl"``, ``"symmetric_kl"``, ``"jsd"``,
        ``"skew_kl"``, ``"skew_reverse_kl"``, ``"tvd"``.
    beta : float in (0, 1)
        JSD mixing weight.
    alpha : float in [0, 1)
        Skew of the skew divergences.
    scale : {"T2", "none"}
        Temperature scale ``s_i``.
    labels : integer ndarray of shape (...) or (N,), optional
        Hard labels (for the CE term, and ``ignore_index`` rows are skipped).
    ignore_index : int
        Label value of rows to skip.
    mask : bool ndarray of shape (...) or (N,), optional
        False marks rows to skip.
    kd_weight, ce_weight : float
        Weights of the divergence term and the hard-label CE term.
    label_smoothing : float in [0, 1]
        ``eps`` of the CE term.
    reduction : {"batchmean", "sum", "none"}
    compute_grad : bool
        When False, ``grad`` is None.
    out : ndarray, optional
        Receives the gradient (same shape and dtype as ``student``; may be
        ``student`` itself).
    check_finite : bool
        Raise on NaN or +inf logits (of counted rows).
    n_threads : int, optional
        Validated only (the twin is single-threaded).

    Returns
    -------
    LossResult
        ``(loss, grad, count)``: a Python float (an array of the leading shape and
        the input dtype for ``"none"``), the gradient of the reduced loss (of the
        sum of the per-row losses for ``"none"``), the number of counted rows.

    Raises
    ------
    TypeError
        Wrong dtypes (logits not float32/float64 or different, float labels, ``out``
        of another dtype).
    ValueError
        Shape mismatch, C == 0, bad temperature, ``beta``/``alpha`` out of range,
        unknown ``divergence``/``reduction``/``scale``, labels out of range or of
        the wrong length, ``ce_weight > 0`` without ``labels``, bad ``out`` (or
        ``out`` with ``compute_grad=False``), NaN/+inf logits (unless
        ``check_finite=False``), a counted all ``-inf`` row. Skipped rows are not
        checked.
    """
    student = _check_logits(student, "student")
    teacher = _check_logits(teacher, "teacher")
    if teacher.dtype != student.dtype:
        raise TypeError(f"`teacher` dtype {teacher.dtype} does not match `student` "
                        f"dtype {student.dtype}")
    if teacher.shape != student.shape:
        raise ValueError(f"`teacher` shape {teacher.shape} does not match `student` "
                         f"shape {student.shape}")
    div = _check_choice(divergence, "divergence", DIVERGENCES)
    reduction = _check_choice(reduction, "reduction", REDUCTIONS)
    scale = _check_choice(scale, "scale", SCALES)
    beta = _check_real(beta, "beta")
    if not 0.0 < beta < 1.0:
        raise ValueError(f"`beta` must be in (0, 1), got {beta!r}")
    alpha = _check_real(alpha, "alpha")
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"`alpha` must be in [0, 1), got {alpha!r}")
    kd_weight = _check_real(kd_weight, "kd_weight")
    ce_weight = _check_real(ce_weight, "ce_weight")
    eps = _check_real(label_smoothing, "label_smoothing")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"`label_smoothing` must be in [0, 1], got {eps!r}")
    if ce_weight != 0.0 and labels is None:
        raise ValueError(f"`labels` are required when `ce_weight` != 0 "
                         f"(got ce_weight={ce_weight!r})")
    _check_n_threads(n_threads)

    c = student.shape[-1]
    lead = student.shape[:-1]
    n = int(np.prod(lead, dtype=np.int64))
    t_s = _temperatures(temperature, n, "temperature", lead, student.dtype)
    t_t = (t_s if teacher_temperature is None
           else _temperatures(teacher_temperature, n, "teacher_temperature", lead,
                              student.dtype))
    counted, flat_labels = _counted_rows(labels, mask, int(ignore_index), lead, n, c)
    if out is not None:
        _check_out(out, student, compute_grad)

    z = np.array(student, dtype=np.float64).reshape(n, c)  # a copy: `out` may alias it
    v = np.array(teacher, dtype=np.float64).reshape(n, c)
    if check_finite:
        _check_finite(z, "student", counted)
        _check_finite(v, "teacher", counted)
    _check_not_all_neginf(z, counted, "student")
    _check_not_all_neginf(v, counted, "teacher")

    # Only counted rows are evaluated; skipped rows keep loss 0 and gradient 0.
    rows = np.flatnonzero(counted)
    zc, vc, tsc, ttc = z[rows], v[rows], t_s[rows], t_t[rows]
    s = tsc * ttc if scale == "T2" else np.ones_like(tsc)

    loss_c = np.zeros(rows.size)
    grad_c = np.zeros_like(zc)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf only if check_finite=False
        if kd_weight != 0.0:
            log_ps = _log_softmax_rows(zc, tsc)
            log_pt = _log_softmax_rows(vc, ttc)
            d = _divergence_rows(div, log_ps, log_pt, beta, alpha)
            loss_c += kd_weight * s * d
            if compute_grad:
                # The divergence gradient only on rows with finite D ("kl": every row).
                ok = np.ones(rows.size, bool) if div == "kl" else np.isfinite(d)
                g = np.zeros_like(zc)
                g[ok] = _divergence_grad_rows(div, log_ps[ok], log_pt[ok], beta, alpha)
                grad_c += (kd_weight * s / tsc)[:, None] * g
        if ce_weight != 0.0:
            ce, ce_grad = _ce_rows(zc, flat_labels[rows], eps)
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


def _ce_rows(z: np.ndarray, y: np.ndarray, eps: float) -> Tuple[np.ndarray, np.ndarray]:
    """Hard-label cross-entropy of each row at temperature 1, and its gradient.

        q_i    = (1 - eps) onehot(y_i) + eps / C
        ce_i   = -sum_j q_ij log softmax(z_i)_j        (0 * log 0 = 0)
        dce_i  = softmax(z_i) - q_i

    ``ce_i`` is ``+inf`` when a class with q_ij > 0 has logit ``-inf``; the gradient
    stays finite.
    """
    n, c = z.shape
    q = np.full((n, c), eps / c)
    q[np.arange(n), y] += 1.0 - eps
    log_p = _log_softmax_rows(z, np.ones(n))
    terms = np.zeros_like(q)
    pos = q > 0
    terms[pos] = q[pos] * log_p[pos]
    return -terms.sum(axis=1), np.exp(log_p) - q


def ce_loss(student, labels, *, label_smoothing: float = 0.0, ignore_index: int = -100,
            mask=None, reduction: str = "batchmean", compute_grad: bool = True, out=None,
            check_finite: bool = True, n_threads: Optional[int] = None) -> LossResult:
    r"""Hard-label cross-entropy and its gradient (NumPy twin of ``kdtemp.ce_loss``).

    The CE term of ``kd_loss`` alone, on the raw logits (temperature 1)::

        q_i   = (1 - eps) onehot(y_i) + eps / C            (eps = label_smoothing)
        ce_i  = -sum_j q_ij log softmax(z_i)_j,  log softmax(z_i)_j = z_ij - lse(z_i)
        d ce_i / d z_ij = softmax(z_i)_j - q_ij

    Rows with ``labels[i] == ignore_index`` or ``mask[i]`` false are skipped (loss 0,
    gradient 0, not counted); reductions as in :func:`kd_loss`.

    Parameters
    ----------
    student : ndarray, shape (..., C), float32 or float64
    labels : integer ndarray of shape (...) or (N,)
        In ``[0, C)`` or equal to ``ignore_index``.
    label_smoothing, ignore_index, mask, reduction, compute_grad, out, check_finite,
    n_threads
        As in :func:`kd_loss`.

    Returns
    -------
    LossResult
        ``(loss, grad, count)`` as in :func:`kd_loss`.

    Raises
    ------
    TypeError, ValueError
        As in :func:`kd_loss` for the arguments shared with it; ``labels`` is required.
    """
    student = _check_logits(student, "student")
    reduction = _check_choice(reduction, "reduction", REDUCTIONS)
    eps = _check_real(label_smoothing, "label_smoothing")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"`label_smoothing` must be in [0, 1], got {eps!r}")
    if labels is None:
        raise ValueError("`labels` are required by ce_loss, got None")
    _check_n_threads(n_threads)
    c = student.shape[-1]
    lead = student.shape[:-1]
    n = int(np.prod(lead, dtype=np.int64))
    counted, flat_labels = _counted_rows(labels, mask, int(ignore_index), lead, n, c)
    if out is not None:
        _check_out(out, student, compute_grad)

    z = np.array(student, dtype=np.float64).reshape(n, c)
    if check_finite:
        _check_finite(z, "student", counted)
    _check_not_all_neginf(z, counted, "student")

    rows = np.flatnonzero(counted)
    per_row = np.zeros(n)
    grad64 = np.zeros((n, c)) if compute_grad else None
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf only if check_finite=False
        ce, ce_grad = _ce_rows(z[rows], flat_labels[rows], eps)
    per_row[rows] = ce
    if compute_grad:
        grad64[rows] = ce_grad
    loss, grad64, count = _reduce(per_row, grad64, counted, reduction, lead, student.dtype)
    grad = _finish_grad(grad64, student, out) if compute_grad else None
    return LossResult(loss, grad, count)


def _softmax_common(logits, temperature, out, check_finite, n_threads):
    """Validate, then return (float64 log-probabilities of shape (N, C), input, out)."""
    x = _check_logits(logits, "logits")
    _check_n_threads(n_threads)
    c = x.shape[-1]
    n = int(np.prod(x.shape[:-1], dtype=np.int64))
    t = _temperatures(temperature, n, "temperature", x.shape[:-1], x.dtype)
    if out is not None:
        _check_out(out, x)
    rows = np.array(x, dtype=np.float64).reshape(n, c)
    if check_finite:
        _check_finite(rows, "logits")
    _check_not_all_neginf(rows, np.ones(n, bool), "logits")
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf only if check_finite=False
        return _log_softmax_rows(rows, t), x, out


def _write(result64: np.ndarray, x: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
    result = result64.reshape(x.shape)
    if out is not None:
        out[...] = result
        return out
    return result.astype(x.dtype)


def log_softmax(logits, temperature=1.0, *, out=None, check_finite: bool = True,
                n_threads: Optional[int] = None) -> np.ndarray:
    r"""Row-wise log-softmax with temperature (NumPy twin of ``kdtemp.log_softmax``).

        log p_ij = x_ij / t_i - lse(x_i / t_i),   lse(y) = m + log sum_j exp(y_j - m),
                                                  m = max_j y_j

    Parameters
    ----------
    logits : ndarray, shape (..., C), float32 or float64
        ``-inf`` entries give ``-inf``; a row may not be all ``-inf``.
    temperature : float or ndarray of shape (N,) or (...)
        Finite and > 0.
    out : ndarray, optional
        Receives the result (same shape and dtype; may be ``logits``).
    check_finite : bool
        Raise on NaN or +inf logits.
    n_threads : int, optional
        Validated only.

    Returns
    -------
    ndarray
        Same shape and dtype as ``logits`` (``out`` when given).

    Raises
    ------
    TypeError, ValueError
        Bad dtype, C == 0, bad temperature, bad ``out``, NaN/+inf logits, an all
        ``-inf`` row.
    """
    log_p, x, out = _softmax_common(logits, temperature, out, check_finite, n_threads)
    return _write(log_p, x, out)


def softmax(logits, temperature=1.0, *, out=None, check_finite: bool = True,
            n_threads: Optional[int] = None) -> np.ndarray:
    r"""Row-wise softmax with temperature (NumPy twin of ``kdtemp.softmax``).

        p_ij = exp(x_ij / t_i - lse(x_i / t_i))

    Parameters, returns and raises as in :func:`log_softmax`.
    """
    log_p, x, out = _softmax_common(logits, temperature, out, check_finite, n_threads)
    return _write(np.exp(log_p), x, out)
