"""Pure-Python twins of DTS's kernels: the update rule in ``csrc/dts.c`` and the
fused batch statistics of ``DTS.update_from_logits`` (``kd_ce_pair`` in ``csrc/kd_impl.h``).

:func:`dts_update` performs the same operations in the same order as the C kernel
(and the same libm ``cos`` through :func:`math.cos`), so the results are bitwise
identical; it is the test oracle for ``kdtemp._kdtemp.dts_update``.
:func:`ce_pair` is the NumPy oracle of ``kdtemp.dts.ce_pair`` (float64, written
from the formula).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from kdtemp.reference.kd import (_check_finite, _check_logits, _check_n_threads,
                                 _check_not_all_neginf, _counted_rows, _log_softmax_rows)

__all__ = ["dts_update", "ce_pair"]


def dts_update(
    params: Tuple[float, float, float, float, float, float, float, float, int],
    temperature: float,
    epoch: float,
    teacher_ce: float,
    student_ce: float,
) -> Tuple[float, float]:
    r"""One DTS update (Dynamic Temperature Scheduler, shared/spec/dts.md).

    .. math::

        \mathrm{cosine} &= \tfrac12 \left(1 + \cos(c \pi e / E)\right) \\
        d &= \mathrm{ce}_T - \mathrm{ce}_S \\
        a &= d / (d + 1 + \varepsilon_{gap})
             \quad (+\infty \text{ when the denominator is } 0) \\
        \mathrm{target} &= \operatorname{clip}\left(T_0 \cdot \mathrm{cosine}
             \cdot s,\ T_{min},\ T_{max}\right), \quad
             s = \begin{cases} \mathrm{scale\_cap} & \text{adaptive and } a > 2 \\
                               a & \text{adaptive and } 1 < a \le 2 \\
                               1 & \text{otherwise} \end{cases} \\
        T' &= m T + (1 - m)\, \mathrm{target}

    In terms of the gap :math:`g = \mathrm{ce}_S - \mathrm{ce}_T` (with
    ``gap_eps = 0``): no scaling for :math:`g < 1`, ``scale_cap`` for
    :math:`1 \le g < 2` (at exactly :math:`g = 1` the denominator is 0 and the
    scale is :math:`+\infty`, so the cap applies), :math:`g/(g-1)` for
    :math:`g \ge 2`.

    Parameters
    ----------
    params : tuple
        ``(initial_temperature, min_temperature, max_temperature, total_epochs,
        curve_shape, momentum, scale_cap, gap_eps, adaptive)``: the first eight
        floats, ``adaptive`` an int (0 or 1).
    temperature : float
        The current temperature :math:`T`.
    epoch : float
        The epoch :math:`e` (1-based in the reference trainer).
    teacher_ce, student_ce : float
        Batch-mean cross-entropies :math:`\mathrm{ce}_T, \mathrm{ce}_S` of the
        teacher and the student against the true labels.

    Returns
    -------
    new_temperature : float
        :math:`T'`, always finite.
    target : float
        The clamped target.

    Raises
    ------
    ValueError
        If ``teacher_ce`` or ``student_ce`` is NaN or infinite; if the
        temperature, the epoch or a parameter is not finite, ``total_epochs <= 0``,
        ``min_temperature > max_temperature``, or :math:`c \pi e / E` or the new
        temperature overflows (the C kernel's ``KD_DTS_ERR_ARGUMENT``). These are
        checked in the kernel's order: arguments, then statistics.
    """
    (t0, t_min, t_max, total_epochs, curve_shape, momentum, scale_cap, gap_eps,
     adaptive) = params
    t0 = float(t0)
    t_min = float(t_min)
    t_max = float(t_max)
    total_epochs = float(total_epochs)
    curve_shape = float(curve_shape)
    momentum = float(momentum)
    scale_cap = float(scale_cap)
    gap_eps = float(gap_eps)
    temperature = float(temperature)
    epoch = float(epoch)
    teacher_ce = float(teacher_ce)
    student_ce = float(student_ce)

    if not (
        all(math.isfinite(v) for v in (t0, t_min, t_max, total_epochs, curve_shape,
                                       momentum, scale_cap, gap_eps))
        and total_epochs > 0.0
        and t_min <= t_max
        and math.isfinite(temperature)
        and math.isfinite(epoch)
    ):
        raise ValueError("DTS update: non-finite or invalid temperature, epoch or "
                         "parameter")
    if not (math.isfinite(teacher_ce) and math.isfinite(student_ce)):
        raise ValueError(
            f"DTS update: teacher_ce and student_ce must be finite, got "
            f"{teacher_ce!r} and {student_ce!r}")

    progress = epoch / total_epochs
    phase = curve_shape * math.pi * progress
    if not math.isfinite(phase):
        raise ValueError("DTS update: c * pi * epoch / total_epochs overflows")
    cosine = 0.5 * (1.0 + math.cos(phase))
    d = teacher_ce - student_ce  # usually negative
    if adaptive:
        denom = d + 1.0 + gap_eps
        a = math.inf if denom == 0.0 else d / denom
        if a > 1.0:
            if a > 2.0:
                a = scale_cap
            target = t0 * cosine * a
        else:
            target = t0 * cosine
    else:
        target = t0 * cosine
    if not target >= t_min:  # also maps a NaN target to Tmin, as the kernel does
        target = t_min
    if target > t_max:
        target = t_max
    new_temperature = momentum * temperature + (1.0 - momentum) * target
    if not math.isfinite(new_temperature):
        raise ValueError("DTS update: the new temperature overflows")
    return new_temperature, target


def ce_pair(student, teacher, labels, *, ignore_index: int = -100, mask=None,
            check_finite: bool = True,
            n_threads: Optional[int] = None) -> Tuple[float, float, int]:
    r"""Both batch cross-entropies of ``DTS.update_from_logits`` (NumPy twin of
    ``kdtemp.dts.ce_pair``), at temperature 1:

    .. math::

        \mathrm{ce}_i(x) = -\log \operatorname{softmax}(x_i)_{y_i}
                         = \operatorname{lse}(x_i) - x_{i, y_i}

    summed over the rows :math:`R` that count (``labels[i] != ignore_index`` and
    ``mask[i]``), in row order.

    Parameters
    ----------
    student, teacher : ndarray, shape (..., C)
        float32 or float64 logits with the same number of rows (the class counts
        may differ); computed in float64.
    labels : integer ndarray of shape (...) or (N,)
        In ``[0, C)`` (the smaller C) or equal to ``ignore_index``.
    ignore_index, mask, check_finite, n_threads
        As in ``kdtemp.reference.ce_loss``.

    Returns
    -------
    (teacher_ce_sum, student_ce_sum, count) : (float, float, int)

    Raises
    ------
    TypeError, ValueError
        As ``kdtemp.reference.ce_loss`` for each array; checked in the order of two
        ``ce_loss`` calls, student first: labels, the student's rows, the
        teacher's rows.
    """
    student = _check_logits(student, "student")
    teacher = _check_logits(teacher, "teacher")
    if labels is None:
        raise ValueError("`labels` are required, got None")
    _check_n_threads(n_threads)
    c = min(student.shape[-1], teacher.shape[-1])
    counted = None
    y = None
    for x in (student, teacher):  # the labels and the mask must fit both
        lead = x.shape[:-1]
        n = int(np.prod(lead, dtype=np.int64))
        counted, y = _counted_rows(labels, mask, int(ignore_index), lead, n, c)
    rows = np.flatnonzero(counted)
    sums = []
    for x, name in ((student, "student"), (teacher, "teacher")):
        x = np.array(x, dtype=np.float64).reshape(-1, x.shape[-1])
        if check_finite:
            _check_finite(x, name, counted)
        _check_not_all_neginf(x, counted, name)
        with np.errstate(invalid="ignore", over="ignore"):  # only if check_finite=False
            log_p = _log_softmax_rows(x[rows], np.ones(len(rows)))
        ce = -log_p[np.arange(len(rows)), y[rows]]
        total = 0.0
        for value in ce.tolist():  # row order, as the kernel sums
            total += value
        sums.append(total)
    return sums[1], sums[0], int(len(rows))
