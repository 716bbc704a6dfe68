"""DTS: the Dynamic Temperature Scheduler (shared/spec/dts.md).

The update rule runs in C (``csrc/dts.c``, bound as ``kdtemp._kdtemp.dts_update``);
its pure-Python twin is :func:`kdtemp.reference.dts.dts_update`. The batch
statistics of :meth:`DTS.update_from_logits` come from one fused kernel,
:func:`ce_pair` (``kd_ce_pair`` in ``csrc/kd_impl.h``, bound as ``kdtemp._kdtemp.ce_pair``; twin
:func:`kdtemp.reference.dts.ce_pair`). This module adds the state around them:
argument checking, sums and counts with an optional all-reduce for
data-parallel training, the history, and ``state_dict``.
"""
from __future__ import annotations

import math
import numbers
from array import array
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from ._args import as_rows, labels_rows, mask_rows

__all__ = ["DTS", "ce_pair"]

_DTS_UPDATE: Optional[Callable[..., Tuple[float, float]]] = None

_HISTORY_KEYS = ("step", "epoch", "teacher_ce", "student_ce", "target", "temperature")
_STATE_VERSION = 1


def _c_update_rule() -> Callable[..., Tuple[float, float]]:
    """``kdtemp._kdtemp.dts_update``, imported on first use."""
    global _DTS_UPDATE
    if _DTS_UPDATE is None:
        from . import _kdtemp

        _DTS_UPDATE = _kdtemp.dts_update
    return _DTS_UPDATE


# ---------------------------------------------------------------------------
# argument checking (shared with kdtemp.schedules)

def _real(value: Any, name: str) -> float:
    """``value`` as a Python float: a real number, NumPy scalar, or 0-d object
    with ``.item()`` (a 0-d NumPy array or torch tensor). Bools are rejected."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a real number, got a bool ({value!r})")
    if isinstance(value, numbers.Real):
        return float(value)
    ndim = getattr(value, "ndim", None)
    item = getattr(value, "item", None)
    if callable(item):
        if ndim is not None and ndim != 0:
            shape = tuple(getattr(value, "shape", ()))
            raise TypeError(
                f"`{name}` must be a scalar (0-d), got an array of shape {shape}")
        return _real(item(), name)
    raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}")


def _finite(value: Any, name: str) -> float:
    x = _real(value, name)
    if not math.isfinite(x):
        raise ValueError(f"`{name}` must be finite, got {x!r}")
    return x


def _positive(value: Any, name: str) -> float:
    x = _finite(value, name)
    if not x > 0.0:
        raise ValueError(f"`{name}` must be > 0, got {x!r}")
    return x


def _nonnegative(value: Any, name: str) -> float:
    x = _finite(value, name)
    if not x >= 0.0:
        raise ValueError(f"`{name}` must be >= 0, got {x!r}")
    return x


def _boolean(value: Any, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"`{name}` must be a bool, got {type(value).__name__} ({value!r})")


def _check_config(
    initial_temperature: Any,
    min_temperature: Any,
    max_temperature: Any,
    total_epochs: Any,
    curve_shape: Any,
    momentum: Any,
    adaptive: Any,
    scale_cap: Any,
    gap_eps: Any,
) -> Dict[str, Any]:
    config: Dict[str, Any] = {
        "initial_temperature": _positive(initial_temperature, "initial_temperature"),
        "min_temperature": _positive(min_temperature, "min_temperature"),
        "max_temperature": _positive(max_temperature, "max_temperature"),
    }
    if config["min_temperature"] > config["max_temperature"]:
        raise ValueError(
            f"`min_temperature` must be <= `max_temperature`, got "
            f"{config['min_temperature']!r} > {config['max_temperature']!r}")
    config["total_epochs"] = _positive(total_epochs, "total_epochs")
    config["curve_shape"] = _nonnegative(curve_shape, "curve_shape")
    m = _finite(momentum, "momentum")
    if not 0.0 <= m < 1.0:
        raise ValueError(f"`momentum` must be in [0, 1), got {m!r}")
    config["momentum"] = m
    config["adaptive"] = _boolean(adaptive, "adaptive")
    config["scale_cap"] = _positive(scale_cap, "scale_cap")
    config["gap_eps"] = _nonnegative(gap_eps, "gap_eps")
    return config


# ---------------------------------------------------------------------------
# the batch statistics: both cross-entropies in one kernel call

def ce_pair(
    student: Any,
    teacher: Any,
    labels: Any,
    *,
    ignore_index: int = -100,
    mask: Any = None,
    check_finite: bool = True,
    n_threads: Optional[int] = None,
) -> Tuple[float, float, int]:
    r"""Summed cross-entropies of the teacher and the student against the labels,
    at temperature 1, from one fused C pass (what :meth:`DTS.update_from_logits`
    measures).

    .. math::

        \mathrm{ce}_i(x) = \operatorname{lse}(x_i) - x_{i, y_i}, \qquad
        \text{returns } \Big(\sum_{i \in R} \mathrm{ce}_i(v),\
                               \sum_{i \in R} \mathrm{ce}_i(z),\ |R|\Big)

    over the rows :math:`R` that count (``labels[i] != ignore_index`` and
    ``mask[i]``). One kernel call reads each row of ``student`` and ``teacher``
    once, in the same parallel pass; the per-row values are summed in row order,
    so the result is bitwise the same for any thread count, and each sum matches
    ``kdtemp.ce_loss(x, labels, reduction="sum", compute_grad=False)`` (the same
    per-row arithmetic). The GIL is released while it runs.

    Parameters
    ----------
    student, teacher : ndarray, shape (..., C)
        Logits, float32 or float64. Leading axes are flattened to rows; the two
        need the same number of rows (``labels`` must fit both) and may differ in
        their number of classes. Of mixed dtypes the float32 one is converted to
        float64 (one copy); other layouts as :func:`kdtemp.ce_loss`.
    labels : ndarray of int, shape (...) or (N,)
        True labels, in ``[0, C)`` (the smaller C) or ``ignore_index``.
    ignore_index : int, default -100
        Label value of rows to skip.
    mask : ndarray of bool, shape (...) or (N,), optional
        Rows to count (``False`` skips).
    check_finite : bool, default True
        Reject NaN or +inf in a counted row (``-inf`` entries are allowed).
    n_threads : int, optional
        Threads (None: OpenMP's default).

    Returns
    -------
    (teacher_ce_sum, student_ce_sum, count) : (float, float, int)
        The order :meth:`DTS.update` and ``all_reduce`` use.

    Raises
    ------
    TypeError
        A non-float array, non-integer labels, a non-bool mask.
    ValueError
        Bad shapes; ``labels`` missing or out of range in a counted row; NaN or
        +inf (with ``check_finite``) or an all ``-inf`` counted row, naming
        ``student`` or ``teacher`` and the row. Reported in the order of two
        ``ce_loss`` calls, student first: labels, then the student's rows,
        then the teacher's.
    """
    from . import _kdtemp
    from ._threads import _resolve

    _, z, lead_s = as_rows(student, "student")
    _, v, lead_t = as_rows(teacher, "teacher")
    n_s, n_t = z.shape[0], v.shape[0]
    y = labels_rows(labels, lead_s, n_s)
    if y is None:
        raise ValueError("`labels` are required")
    labels_rows(labels, lead_t, n_t)  # the same labels must fit the teacher's rows
    m = mask_rows(mask, lead_s, n_s)
    mask_rows(mask, lead_t, n_t)
    if z.dtype != v.dtype:  # float32 and float64: compute both in float64 (exact)
        z = z.astype(np.float64)
        v = v.astype(np.float64)
    t_sum, s_sum, count = _kdtemp.ce_pair(z, v, y, m, int(ignore_index),
                                          bool(check_finite), _resolve(n_threads))
    return t_sum, s_sum, count


class DTS:
    r"""Dynamic Temperature Scheduler: one global KD temperature that follows a
    cosine, is scaled up while the student lags the teacher, and is smoothed
    with momentum (Islam et al., "Dynamic Temperature Scheduler for Knowledge
    Distillation"; shared/spec/dts.md).

    Each :meth:`update` (once per training batch) computes, with epoch :math:`e`
    and the batch-mean cross-entropies :math:`\mathrm{ce}_T, \mathrm{ce}_S` of
    teacher and student against the true labels:

    .. math::

        \mathrm{cosine} &= \tfrac12 \left(1 + \cos(c \pi e / E)\right) \\
        d &= \mathrm{ce}_T - \mathrm{ce}_S, \qquad
        a = \frac{d}{d + 1 + \varepsilon_{gap}}
            \quad (+\infty \text{ if the denominator is } 0) \\
        \mathrm{target} &= \operatorname{clip}\left(T_0 \cdot \mathrm{cosine}
            \cdot s,\ T_{min},\ T_{max}\right), \quad
            s = \begin{cases} \mathrm{scale\_cap} & \text{adaptive and } a > 2 \\
                              a & \text{adaptive and } 1 < a \le 2 \\
                              1 & \text{otherwise} \end{cases} \\
        T &\leftarrow m T + (1 - m)\, \mathrm{target}

    With the gap :math:`g = \mathrm{ce}_S - \mathrm{ce}_T` and
    ``gap_eps = 0``: no scaling while :math:`g < 1`; ``scale_cap`` for
    :math:`1 \le g < 2` (:math:`g = 1` zeroes the denominator, the scale is
    :math:`+\infty` and the cap applies); :math:`g/(g-1)` for :math:`g \ge 2`.
    The scale is not monotonic in :math:`g`; that is the reference behaviour.
    :math:`T` starts at :math:`T_0`. The rule runs in C
    (``kdtemp._kdtemp.dts_update``); :func:`kdtemp.reference.dts.dts_update` is its
    bitwise-identical Python twin.

    Parameters
    ----------
    initial_temperature : float, default 4.0
        :math:`T_0`: the starting temperature and the cosine's amplitude. Finite, > 0.
    min_temperature, max_temperature : float, default 2.0 and 4.0
        :math:`T_{min}, T_{max}`: the clamp of the target. Finite, > 0,
        ``min_temperature <= max_temperature``. The authors' recipes:
        vision (4, 2, 4); LLM and GLUE (3, 1, 3); small CIFAR students (2, 1, 3);
        ViT (4, 1, 8) with ``scale_cap=1.5``.
    total_epochs : float
        :math:`E`, the length of the cosine. Finite, > 0. Keyword-only, required.
    curve_shape : float, default 1.0
        :math:`c`, the cosine's frequency factor. Finite, >= 0.
    momentum : float, default 0.9
        :math:`m`, the weight of the previous temperature, in [0, 1).
    adaptive : bool, default True
        Loss-gap scaling on (the paper's method); off gives cosine + momentum.
    scale_cap : float, default 1.35
        The scale used when the raw scale :math:`a` exceeds 2. Finite, > 0.
    gap_eps : float, default 0.0
        :math:`\varepsilon_{gap}`, added to the denominator :math:`d + 1` (the
        authors' LLM code uses 1e-4). Finite, >= 0.
    all_reduce : callable, optional
        For data-parallel training: called with a float64 array
        ``[teacher_ce_sum, student_ce_sum, count]`` and returning the array summed
        over all ranks, before the division, so that every rank computes the same
        :math:`T` from the global batch. Every rank must call :meth:`update` at the
        same steps (it is a collective). See the example below.
    record_history : bool, default True, keyword-only
        Keep :attr:`history`. A very long run (millions of updates) may turn it
        off to keep ``state_dict`` small; the update count is kept either way.

    Attributes
    ----------
    temperature : float
        The current temperature (read it for the KD loss).
    history : dict of ndarray
        One entry per applied update: ``step`` (int64, 0-based update index),
        ``epoch``, ``teacher_ce``, ``student_ce`` (the batch means used),
        ``target`` and ``temperature`` (after the update), all float64.
    num_updates : int
        Updates applied so far.

    Raises
    ------
    TypeError
        An argument of the wrong type (e.g. a string, a bool where a number is
        expected, a non-bool ``adaptive``, a non-callable ``all_reduce``).
    ValueError
        An argument out of range; the message names it.

    Notes
    -----
    Reading :attr:`temperature` and calling :meth:`update` are separate so both
    timings of the reference trainers work:

    * vision trainer: the batch's KD loss uses the current ``dts.temperature``,
      the optimizer steps, then ``dts.update(...)`` runs (batch k+1 uses the T
      computed from batch k);
    * LLM trainer: ``dts.update(...)`` first, then the loss with the new
      ``dts.temperature``.

    Examples
    --------
    >>> dts = DTS(4.0, 2.0, 4.0, total_epochs=240)
    >>> for epoch in range(1, 241):                      # doctest: +SKIP
    ...     for x, y in loader:
    ...         z, v = student(x), teacher(x)
    ...         loss = kd_loss(z, v, temperature=dts.temperature)
    ...         ...                                       # backward, step
    ...         dts.update(epoch, teacher_ce=ce(v, y), student_ce=ce(z, y))

    Data-parallel, with ``torch.distributed``:

    >>> def all_reduce(stats):                           # doctest: +SKIP
    ...     t = torch.from_numpy(stats).to(device)
    ...     torch.distributed.all_reduce(t)
    ...     return t.cpu().numpy()
    >>> dts = DTS(total_epochs=240, all_reduce=all_reduce)  # doctest: +SKIP
    >>> dts.update(epoch, teacher_ce_sum=sT, student_ce_sum=sS, count=n)  # doctest: +SKIP
    """

    def __init__(
        self,
        initial_temperature: float = 4.0,
        min_temperature: float = 2.0,
        max_temperature: float = 4.0,
        *,
        total_epochs: float,
        curve_shape: float = 1.0,
        momentum: float = 0.9,
        adaptive: bool = True,
        scale_cap: float = 1.35,
        gap_eps: float = 0.0,
        all_reduce: Optional[Callable[[np.ndarray], Any]] = None,
        record_history: bool = True,
    ) -> None:
        config = _check_config(initial_temperature, min_temperature, max_temperature,
                               total_epochs, curve_shape, momentum, adaptive,
                               scale_cap, gap_eps)
        if all_reduce is not None and not callable(all_reduce):
            raise TypeError(
                f"`all_reduce` must be callable or None, got {type(all_reduce).__name__}")
        self._record_history = _boolean(record_history, "record_history")
        self._rule = _c_update_rule()
        self._all_reduce = all_reduce
        self._set_config(config)
        self._temperature = config["initial_temperature"]
        self._num_updates = 0
        self._clear_history()

    # -- configuration ---------------------------------------------------------

    def _set_config(self, config: Dict[str, Any]) -> None:
        self._config = dict(config)
        c = self._config
        self._params = (c["initial_temperature"], c["min_temperature"],
                        c["max_temperature"], c["total_epochs"], c["curve_shape"],
                        c["momentum"], c["scale_cap"], c["gap_eps"],
                        int(c["adaptive"]))

    def _clear_history(self) -> None:
        self._history: Dict[str, array] = {
            k: array("q" if k == "step" else "d") for k in _HISTORY_KEYS}

    @property
    def initial_temperature(self) -> float:
        """:math:`T_0`."""
        return self._config["initial_temperature"]

    @property
    def min_temperature(self) -> float:
        """:math:`T_{min}`, the lower clamp of the target."""
        return self._config["min_temperature"]

    @property
    def max_temperature(self) -> float:
        """:math:`T_{max}`, the upper clamp of the target."""
        return self._config["max_temperature"]

    @property
    def total_epochs(self) -> float:
        """:math:`E`, the cosine's length."""
        return self._config["total_epochs"]

    @property
    def curve_shape(self) -> float:
        """:math:`c`, the cosine's frequency factor."""
        return self._config["curve_shape"]

    @property
    def momentum(self) -> float:
        """:math:`m`, the weight of the previous temperature."""
        return self._config["momentum"]

    @property
    def adaptive(self) -> bool:
        """Whether the loss-gap scaling is on."""
        return self._config["adaptive"]

    @property
    def scale_cap(self) -> float:
        """The scale used when the raw scale exceeds 2."""
        return self._config["scale_cap"]

    @property
    def gap_eps(self) -> float:
        """Added to the denominator :math:`d + 1`."""
        return self._config["gap_eps"]

    @property
    def all_reduce(self) -> Optional[Callable[[np.ndarray], Any]]:
        """The all-reduce hook, or None."""
        return self._all_reduce

    # -- state -----------------------------------------------------------------

    @property
    def temperature(self) -> float:
        """The current temperature :math:`T` (a Python float)."""
        return self._temperature

    @property
    def num_updates(self) -> int:
        """Number of updates applied so far (updates with a zero count are not
        applied)."""
        return self._num_updates

    @property
    def history(self) -> Dict[str, np.ndarray]:
        """A copy of the history as NumPy arrays: ``step`` (int64, 0-based),
        ``epoch``, ``teacher_ce``, ``student_ce``, ``target``, ``temperature``
        (float64, the temperature after each update)."""
        return {k: np.array(v, dtype=np.int64 if k == "step" else np.float64)
                for k, v in self._history.items()}

    # -- the update ------------------------------------------------------------

    def update(
        self,
        epoch: float,
        teacher_ce: Any = None,
        student_ce: Any = None,
        *,
        teacher_ce_sum: Any = None,
        student_ce_sum: Any = None,
        count: Any = None,
    ) -> float:
        r"""Apply one DTS update and return the new temperature.

        Give either the batch means (``teacher_ce`` and ``student_ce``) or the
        sums over the batch's counted rows and their number (``teacher_ce_sum``,
        ``student_ce_sum``, ``count``); the means used are then
        :math:`\mathrm{ce} = \mathrm{sum} / \mathrm{count}`.

        With ``all_reduce``, the array ``[teacher_ce_sum, student_ce_sum, count]``
        is summed over ranks before the division, so every rank gets the mean
        over the global batch and the same :math:`T`. Given means instead,
        ``[teacher_ce, student_ce, 1]`` is reduced: every rank gets the average of
        the ranks' means, which is the global mean only when all ranks count the
        same number of rows (pass sums and a count to be exact).

        Each statistic may be a Python float or int, a NumPy scalar, or a 0-d
        object with ``.item()`` (a 0-d NumPy array, a 0-d torch tensor).

        Parameters
        ----------
        epoch : float
            The epoch :math:`e` (1-based in the reference trainer, constant within
            an epoch). Finite, >= 0.
        teacher_ce, student_ce : float, optional
            Batch-mean cross-entropies of teacher and student against the labels.
        teacher_ce_sum, student_ce_sum : float, optional, keyword-only
            Their sums over the counted rows.
        count : float, optional, keyword-only
            The number of counted rows (>= 0). If the (global) count is 0 there is
            nothing to measure: :math:`T` is left as it is, no history is
            recorded, and the current temperature is returned.

        Returns
        -------
        float
            The new temperature (also :attr:`temperature`).

        Raises
        ------
        TypeError
            Both or neither form of statistics given, or one missing; a statistic
            that is not a real scalar.
        ValueError
            ``epoch`` negative or not finite; a statistic NaN or infinite (before
            or after the all-reduce), a negative count. :math:`T` is unchanged.
        """
        e = _nonnegative(epoch, "epoch")
        means = (teacher_ce, student_ce)
        sums = (teacher_ce_sum, student_ce_sum, count)
        if any(v is not None for v in sums):
            if any(v is not None for v in means):
                raise TypeError(
                    "pass either `teacher_ce` and `student_ce` (batch means) or "
                    "`teacher_ce_sum`, `student_ce_sum` and `count`, not both")
            for v, name in zip(sums, ("teacher_ce_sum", "student_ce_sum", "count")):
                if v is None:
                    raise TypeError(
                        f"`{name}` is missing: `teacher_ce_sum`, `student_ce_sum` "
                        f"and `count` go together")
            stats = [_finite(teacher_ce_sum, "teacher_ce_sum"),
                     _finite(student_ce_sum, "student_ce_sum"),
                     _nonnegative(count, "count")]
        else:
            for v, name in zip(means, ("teacher_ce", "student_ce")):
                if v is None:
                    raise TypeError(
                        f"`{name}` is missing: pass `teacher_ce` and `student_ce`, "
                        f"or `teacher_ce_sum`, `student_ce_sum` and `count`")
            stats = [_finite(teacher_ce, "teacher_ce"),
                     _finite(student_ce, "student_ce"), 1.0]

        if self._all_reduce is not None:
            stats = self._reduce(stats)
        t_sum, s_sum, n = stats
        if n == 0.0:
            return self._temperature
        ce_t, ce_s = t_sum / n, s_sum / n  # n == 1 for means: exact

        new_t, target = self._rule(self._params, self._temperature, e, ce_t, ce_s)
        new_t = float(new_t)
        if self._record_history:
            h = self._history
            h["step"].append(self._num_updates)
            h["epoch"].append(e)
            h["teacher_ce"].append(ce_t)
            h["student_ce"].append(ce_s)
            h["target"].append(float(target))
            h["temperature"].append(new_t)
        self._num_updates += 1
        self._temperature = new_t
        return new_t

    def _reduce(self, stats: list) -> list:
        local = np.array(stats, dtype=np.float64)
        out = self._all_reduce(local)  # type: ignore[misc]
        if hasattr(out, "detach"):  # a torch tensor
            out = out.detach().cpu().numpy()
        reduced = np.asarray(out, dtype=np.float64)
        if reduced.shape != (3,):
            raise ValueError(
                f"`all_reduce` must return an array of shape (3,), got shape "
                f"{reduced.shape}")
        t_sum, s_sum, n = (float(x) for x in reduced)
        for v, name in ((t_sum, "teacher_ce_sum"), (s_sum, "student_ce_sum"),
                        (n, "count")):
            if not math.isfinite(v):
                raise ValueError(f"`{name}` after `all_reduce` must be finite, got {v!r}")
        if n < 0.0:
            raise ValueError(f"`count` after `all_reduce` must be >= 0, got {n!r}")
        return [t_sum, s_sum, n]

    def update_from_logits(
        self,
        epoch: float,
        student: Any,
        teacher: Any,
        labels: Any,
        ignore_index: int = -100,
        n_threads: Optional[int] = None,
        *,
        mask: Any = None,
    ) -> float:
        r"""Measure both cross-entropies on a batch of logits, then :meth:`update`.

        :math:`\mathrm{ce}_S = \frac1n \sum_i -\log \operatorname{softmax}(z_i)_{y_i}`
        and likewise :math:`\mathrm{ce}_T` with the teacher logits :math:`v`, over
        the :math:`n` rows not skipped by ``ignore_index`` or ``mask``. Both sums
        and the count come from one fused C pass over the two arrays
        (:func:`ce_pair`: each row of ``student`` and ``teacher`` is read once;
        the values equal two :func:`kdtemp.ce_loss` calls with
        ``reduction="sum"``, bitwise the same for any thread count) and go to
        :meth:`update` as sums and a count, so ``all_reduce`` gets the global
        batch.

        Parameters
        ----------
        epoch : float
            As in :meth:`update`.
        student, teacher : ndarray, shape (N, C)
            Logits (float32 or float64), as accepted by :func:`kdtemp.ce_loss`
            (the same number of rows; see :func:`ce_pair`).
        labels : ndarray of int, shape (N,)
            True labels.
        ignore_index : int, default -100
            Label value of rows to skip.
        n_threads : int, optional
            Threads for the cross-entropy kernel (None: OpenMP's default).
        mask : ndarray of bool, shape (N,), optional, keyword-only
            Rows to count (``False`` skips).

        Returns
        -------
        float
            The new temperature. If no row counts (globally), :math:`T` is
            unchanged.

        Raises
        ------
        TypeError, ValueError
            As :func:`ce_pair` (bad shapes, dtypes, labels, non-finite logits,
            naming ``student``, ``teacher`` or ``labels``) and :meth:`update`.
        """
        e = _nonnegative(epoch, "epoch")
        t_sum, s_sum, count = ce_pair(student, teacher, labels, ignore_index=ignore_index,
                                      mask=mask, n_threads=n_threads)
        return self.update(e, teacher_ce_sum=t_sum, student_ce_sum=s_sum, count=count)

    # -- persistence -----------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """The scheduler's state as plain Python objects (floats, ints, lists,
        dicts), so it can go into a checkpoint (``torch.save`` with
        ``weights_only`` loading, JSON, pickle).

        Returns
        -------
        dict
            ``version``, ``config`` (the constructor's arguments except
            ``all_reduce`` and ``record_history``), ``temperature``,
            ``num_updates``, and ``history`` (lists).
        """
        return {
            "version": _STATE_VERSION,
            "config": dict(self._config),
            "temperature": self._temperature,
            "num_updates": self._num_updates,
            "history": {k: v.tolist() for k, v in self._history.items()},
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`: the configuration, the
        temperature and the history, so a resumed run continues bit for bit.
        ``all_reduce`` and ``record_history`` are kept (they are not part of the
        state).

        Raises
        ------
        TypeError
            ``state_dict`` is not a dict.
        ValueError
            A key missing, an unknown version, an invalid configuration or
            temperature, or history columns of different lengths.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(
                f"`state_dict` must be a dict, got {type(state_dict).__name__}")
        for key in ("version", "config", "temperature", "num_updates", "history"):
            if key not in state_dict:
                raise ValueError(f"`state_dict` has no {key!r} entry")
        if state_dict["version"] != _STATE_VERSION:
            raise ValueError(
                f"`state_dict` has version {state_dict['version']!r}; this kdtemp "
                f"reads version {_STATE_VERSION}")
        cfg = state_dict["config"]
        names = ("initial_temperature", "min_temperature", "max_temperature",
                 "total_epochs", "curve_shape", "momentum", "adaptive", "scale_cap",
                 "gap_eps")
        missing = [n for n in names if n not in cfg]
        if missing:
            raise ValueError(f"`state_dict['config']` lacks {missing}")
        config = _check_config(*(cfg[n] for n in names))
        temperature = _finite(state_dict["temperature"], "temperature")
        num_updates = state_dict["num_updates"]
        if (isinstance(num_updates, (bool, np.bool_))
                or not isinstance(num_updates, numbers.Integral) or num_updates < 0):
            raise ValueError(
                f"`state_dict['num_updates']` must be an int >= 0, got {num_updates!r}")
        hist = state_dict["history"]
        if set(hist) != set(_HISTORY_KEYS):
            raise ValueError(
                f"`state_dict['history']` must have the keys {list(_HISTORY_KEYS)}")
        lengths = {len(hist[k]) for k in _HISTORY_KEYS}
        if len(lengths) != 1:
            raise ValueError("`state_dict['history']` columns differ in length")
        history = {k: array("q" if k == "step" else "d", hist[k]) for k in _HISTORY_KEYS}

        self._set_config(config)
        self._temperature = temperature
        self._num_updates = int(num_updates)
        self._history = history

    def __repr__(self) -> str:
        c = self._config
        return (
            f"DTS(initial_temperature={c['initial_temperature']!r}, "
            f"min_temperature={c['min_temperature']!r}, "
            f"max_temperature={c['max_temperature']!r}, "
            f"total_epochs={c['total_epochs']!r}, curve_shape={c['curve_shape']!r}, "
            f"momentum={c['momentum']!r}, adaptive={c['adaptive']!r}, "
            f"scale_cap={c['scale_cap']!r}, gap_eps={c['gap_eps']!r}, "
            f"all_reduce={'None' if self._all_reduce is None else 'set'}, "
            f"record_history={self._record_history!r}; "
            f"temperature={self._temperature!r}, updates={self.num_updates})"
        )
