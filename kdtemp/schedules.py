"""Simple temperature schedules, DKD's loss-weight warm-up, and Annealing-KD's
schedule.

The temperature schedules (:class:`ConstantTemperature`, :class:`LinearTemperature`,
:class:`CosineTemperature`, :class:`StepTemperature`) share :class:`kdtemp.DTS`'s
interface so they are drop-in replacements: read ``.temperature`` for the loss,
call ``.update(epoch, ...)`` (which accepts and ignores the cross-entropy
statistics) or ``.step(epoch)``, and save them with ``state_dict()``. Epochs are
counted as in :class:`kdtemp.DTS` (the progress is ``epoch / total_epochs``; the
reference trainers count from 1).

:class:`AnnealingSchedule` follows Annealing-KD's authors (shared/spec/annealing.md)
and counts epochs from 0, as their code does.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Optional

import numpy as np

from .dts import _finite, _nonnegative, _positive

__all__ = [
    "ConstantTemperature",
    "LinearTemperature",
    "CosineTemperature",
    "StepTemperature",
    "WeightWarmup",
    "AnnealingSchedule",
]

_STATE_VERSION = 1


class _TemperatureSchedule:
    """Shared machinery: the current temperature, ``step``/``update``, state."""

    _config: Dict[str, Any]

    def __init__(self) -> None:
        self._temperature = self.temperature_at(0.0)
        self._epoch: Optional[float] = None

    def temperature_at(self, epoch: float) -> float:  # pragma: no cover - abstract
        """The temperature the schedule gives at ``epoch`` (no state change)."""
        raise NotImplementedError

    @property
    def temperature(self) -> float:
        """The current temperature (a Python float): the value at the epoch of the
        last :meth:`step`/:meth:`update`, or at epoch 0 before the first."""
        return self._temperature

    @property
    def last_epoch(self) -> Optional[float]:
        """The epoch of the last :meth:`step`/:meth:`update` (None before the
        first)."""
        return self._epoch

    def step(self, epoch: float) -> float:
        """Move to ``epoch`` (finite, >= 0) and return the new temperature.

        Raises
        ------
        TypeError
            ``epoch`` is not a real number.
        ValueError
            ``epoch`` is negative or not finite.
        """
        e = _nonnegative(epoch, "epoch")
        self._temperature = self.temperature_at(e)
        self._epoch = e
        return self._temperature

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
        """Same as :meth:`step`; the cross-entropy statistics are accepted and
        ignored, so this schedule can stand in for :class:`kdtemp.DTS`."""
        return self.step(epoch)

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
        """Same as :meth:`step`; the logits are ignored (nothing is computed), so
        this schedule can stand in for :class:`kdtemp.DTS`."""
        return self.step(epoch)

    def state_dict(self) -> Dict[str, Any]:
        """``version``, ``config`` (the constructor's arguments), ``temperature``
        and ``epoch`` (of the last step, or None), as plain Python objects."""
        return {"version": _STATE_VERSION, "config": dict(self._config),
                "temperature": self._temperature, "epoch": self._epoch}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (configuration included).

        Raises
        ------
        TypeError
            ``state_dict`` is not a dict.
        ValueError
            A missing entry, an unknown version, or invalid values.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(
                f"`state_dict` must be a dict, got {type(state_dict).__name__}")
        for key in ("version", "config", "temperature", "epoch"):
            if key not in state_dict:
                raise ValueError(f"`state_dict` has no {key!r} entry")
        if state_dict["version"] != _STATE_VERSION:
            raise ValueError(
                f"`state_dict` has version {state_dict['version']!r}; this kdtemp "
                f"reads version {_STATE_VERSION}")
        fresh = type(self)(**state_dict["config"])
        temperature = _positive(state_dict["temperature"], "temperature")
        epoch = state_dict["epoch"]
        if epoch is not None:
            epoch = _nonnegative(epoch, "epoch")
        self._config = fresh._config
        self._temperature = temperature
        self._epoch = epoch

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args}; temperature={self._temperature!r})"


class ConstantTemperature(_TemperatureSchedule):
    r"""A fixed temperature, :math:`T(e) = T`.

    Parameters
    ----------
    temperature : float, default 4.0
        Finite, > 0.

    Raises
    ------
    TypeError, ValueError
        ``temperature`` not a real number, not finite or <= 0.
    """

    def __init__(self, temperature: float = 4.0) -> None:
        self._config = {"temperature": _positive(temperature, "temperature")}
        super().__init__()

    def temperature_at(self, epoch: float) -> float:
        """:math:`T`, whatever ``epoch``."""
        _nonnegative(epoch, "epoch")
        return self._config["temperature"]


class LinearTemperature(_TemperatureSchedule):
    r"""Linear interpolation from ``start`` to ``end`` over ``total_epochs``.

    .. math::

        T(e) = T_{start} + (T_{end} - T_{start}) \cdot \min(e / E, 1)

    :math:`T(0) = T_{start}` and :math:`T(e) = T_{end}` exactly for
    :math:`e \ge E`.

    Parameters
    ----------
    start, end : float
        Temperatures at epoch 0 and at ``total_epochs``. Finite, > 0.
    total_epochs : float
        :math:`E`. Finite, > 0.

    Raises
    ------
    TypeError, ValueError
        An argument not a real number, not finite or <= 0 (named).
    """

    def __init__(self, start: float, end: float, total_epochs: float) -> None:
        self._config = {"start": _positive(start, "start"),
                        "end": _positive(end, "end"),
                        "total_epochs": _positive(total_epochs, "total_epochs")}
        super().__init__()

    def temperature_at(self, epoch: float) -> float:
        """:math:`T(e)` as above."""
        p = _nonnegative(epoch, "epoch") / self._config["total_epochs"]
        start, end = self._config["start"], self._config["end"]
        if p >= 1.0:
            return end
        return start + (end - start) * p


class CosineTemperature(_TemperatureSchedule):
    r"""Cosine annealing from ``start`` to ``end`` over ``total_epochs``.

    .. math::

        T(e) = T_{end} + (T_{start} - T_{end}) \cdot
               \tfrac12 \left(1 + \cos(\pi \min(e / E, 1))\right)

    :math:`T(0) = T_{start}` and :math:`T(e) = T_{end}` exactly for
    :math:`e \ge E`. (DTS with ``adaptive=False``, ``momentum=0`` and
    ``curve_shape=1`` follows the same curve with :math:`T_{end} = 0`, clamped to
    :math:`[T_{min}, T_{max}]`, for :math:`e \le E`. ``end`` must be > 0 here, so
    this class is not that limit: for it, use :class:`kdtemp.DTS`.)

    Parameters
    ----------
    start, end : float
        Temperatures at epoch 0 and at ``total_epochs``. Finite, > 0.
    total_epochs : float
        :math:`E`. Finite, > 0.

    Raises
    ------
    TypeError, ValueError
        An argument not a real number, not finite or <= 0 (named).
    """

    def __init__(self, start: float, end: float, total_epochs: float) -> None:
        self._config = {"start": _positive(start, "start"),
                        "end": _positive(end, "end"),
                        "total_epochs": _positive(total_epochs, "total_epochs")}
        super().__init__()

    def temperature_at(self, epoch: float) -> float:
        """:math:`T(e)` as above."""
        p = _nonnegative(epoch, "epoch") / self._config["total_epochs"]
        start, end = self._config["start"], self._config["end"]
        if p <= 0.0:
            return start
        if p >= 1.0:
            return end
        return end + (start - end) * (0.5 * (1.0 + math.cos(math.pi * p)))


class StepTemperature(_TemperatureSchedule):
    r"""Multiply the temperature by ``gamma`` every ``step_size`` epochs, never
    going below ``min_temperature``.

    .. math::

        T(e) = \max\left(T_0 \cdot \gamma^{\lfloor e / s \rfloor},\ T_{min}\right)

    (as ``torch.optim.lr_scheduler.StepLR`` does for the learning rate).

    Parameters
    ----------
    initial : float
        :math:`T_0`. Finite, > 0.
    gamma : float
        The factor, in (0, 1].
    step_size : float
        :math:`s`, epochs between steps. Finite, > 0.
    min_temperature : float, default 1.0
        :math:`T_{min}`, the floor. Finite, > 0, <= ``initial``.

    Raises
    ------
    TypeError, ValueError
        An argument not a real number or out of range (named).
    """

    def __init__(self, initial: float, gamma: float, step_size: float,
                 min_temperature: float = 1.0) -> None:
        initial = _positive(initial, "initial")
        gamma = _finite(gamma, "gamma")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"`gamma` must be in (0, 1], got {gamma!r}")
        min_temperature = _positive(min_temperature, "min_temperature")
        if min_temperature > initial:
            raise ValueError(
                f"`min_temperature` must be <= `initial`, got {min_temperature!r} > "
                f"{initial!r}")
        self._config = {"initial": initial, "gamma": gamma,
                        "step_size": _positive(step_size, "step_size"),
                        "min_temperature": min_temperature}
        super().__init__()

    def temperature_at(self, epoch: float) -> float:
        """:math:`T(e)` as above."""
        c = self._config
        k = math.floor(_nonnegative(epoch, "epoch") / c["step_size"])
        return max(c["initial"] * c["gamma"] ** k, c["min_temperature"])


class WeightWarmup:
    r"""Linear loss-weight warm-up, as DKD (mdistiller) applies to its KD term.

    .. math::

        w(e) = \min(e / W, 1)

    with :math:`W` = ``warmup`` (mdistiller: 20, epochs counted from 1). ``warmup=0``
    gives :math:`w = 1` always.

    Parameters
    ----------
    warmup : float, default 20
        Finite, >= 0.

    Raises
    ------
    TypeError, ValueError
        ``warmup`` not a real number, not finite or negative.
    """

    def __init__(self, warmup: float = 20) -> None:
        self._warmup = _nonnegative(warmup, "warmup")

    @property
    def warmup(self) -> float:
        """:math:`W`."""
        return self._warmup

    def weight(self, epoch: float) -> float:
        """:math:`w(e) = \\min(e / W, 1)` for ``epoch`` finite and >= 0.

        Raises
        ------
        TypeError, ValueError
            ``epoch`` not a real number, not finite or negative.
        """
        e = _nonnegative(epoch, "epoch")
        if self._warmup == 0.0:
            return 1.0
        return min(e / self._warmup, 1.0)

    __call__ = weight

    def state_dict(self) -> Dict[str, Any]:
        """``version`` and ``config`` (the warm-up has no other state)."""
        return {"version": _STATE_VERSION, "config": {"warmup": self._warmup}}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        if not isinstance(state_dict, dict):
            raise TypeError(
                f"`state_dict` must be a dict, got {type(state_dict).__name__}")
        if state_dict.get("version") != _STATE_VERSION or "config" not in state_dict:
            raise ValueError("`state_dict` is not a WeightWarmup state")
        self._warmup = _nonnegative(state_dict["config"].get("warmup"), "warmup")

    def __repr__(self) -> str:
        return f"WeightWarmup(warmup={self._warmup!r})"


def _integer(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} ({value!r})")
    return int(value)


class AnnealingSchedule:
    r"""Annealing-KD's temperature schedule (Jafari et al., EACL 2021;
    shared/spec/annealing.md). Epochs are counted from 0.

    Phase 1 (epochs ``0 .. phase1_epochs - 1``) regresses the student's logits on
    :math:`\Phi(T) v` with (for ``phase1_epochs >= max_temperature``)

    .. math::

        \Phi(T) = 1 - \frac{T - 1}{\tau_{max}}, \qquad
        T = \tau_{max} + 1 - T', \qquad
        T'(e) = \min\left(1 + \lfloor e / k \rfloor,\ \tau_{max}\right), \qquad
        k = \lfloor \mathrm{phase1\_epochs} / \tau_{max} \rfloor

    so :math:`\Phi = T' / \tau_{max}` starts at :math:`1/\tau_{max}` (T =
    :math:`\tau_{max}`) and rises by :math:`1/\tau_{max}` every :math:`k` epochs.
    This is the authors' rule (their code counts :math:`T'` up from 1 and increments
    it when ``epoch % k == 0 and epoch > 0``), except for the cap.

    **Remainder.** When ``phase1_epochs`` is not a multiple of :math:`\tau_{max}`,
    the authors' rule keeps incrementing :math:`T'` past :math:`\tau_{max}` in the
    last ``phase1_epochs % tau_max`` epochs, giving :math:`\Phi > 1`. Here
    :math:`T'` stops at :math:`\tau_{max}`: the remainder epochs are spent at the
    final stage (T = 1, :math:`\Phi = 1`), which therefore lasts
    :math:`k + (\mathrm{phase1\_epochs} \bmod \tau_{max})` epochs; every other
    stage lasts :math:`k` epochs, exactly as in the authors' code. With a multiple
    (e.g. the defaults) the schedule is identical to theirs.

    **Fewer phase-1 epochs than temperatures** (``phase1_epochs < max_temperature``,
    where the authors' :math:`k = 0` would divide by zero). The
    :math:`\tau_{max} - 1` steps of :math:`T'` are spread evenly over the
    ``phase1_epochs - 1`` epoch boundaries, rounding down:

    .. math::

        T'(e) = 1 + \left\lfloor \frac{e\,(\tau_{max} - 1)}
                                       {\mathrm{phase1\_epochs} - 1} \right\rfloor

    so phase 1 still starts at :math:`T = \tau_{max}` and ends at :math:`T = 1`,
    :math:`\Phi = 1`, and :math:`T` drops by at least 1 every epoch (some values
    are skipped). E.g. ``AnnealingSchedule(10, phase1_epochs=4, ...)`` uses
    T = 10, 7, 4, 1 (:math:`\Phi` = 0.1, 0.4, 0.7, 1.0), and ``phase1_epochs=6``
    T = 10, 9, 7, 5, 3, 1. At ``phase1_epochs == max_temperature`` this is the
    rule above (one epoch per temperature). A single phase-1 epoch cannot both
    start at :math:`\tau_{max}` and end at 1: it is the last one, T = 1,
    :math:`\Phi = 1`.

    In every case :math:`\Phi \le 1`, :math:`\Phi` is non-decreasing, and
    :math:`\Phi = 1` exactly in the last phase-1 epoch.

    Phase 2 (epochs ``phase1_epochs .. phase1_epochs + phase2_epochs - 1``) trains
    on the hard labels; it has no temperature, and :meth:`temperature` and
    :meth:`phi` report 1 and 1.0 there (the teacher is no longer used).

    Parameters
    ----------
    max_temperature : int, default 10
        :math:`\tau_{max}` >= 1. The authors: 10 for CIFAR (200 + 200 epochs), 7 for
        GLUE (14 + 4 epochs).
    phase1_epochs : int
        Epochs of phase 1, >= 1 (fewer than ``max_temperature`` skips temperatures,
        see above). Keyword-only.
    phase2_epochs : int
        Epochs of phase 2, >= 0. Keyword-only.

    Raises
    ------
    TypeError
        An argument that is not an int.
    ValueError
        ``max_temperature < 1``, ``phase1_epochs < 1``, ``phase2_epochs < 0``.
    """

    def __init__(self, max_temperature: int = 10, *, phase1_epochs: int,
                 phase2_epochs: int) -> None:
        tau = _integer(max_temperature, "max_temperature")
        if tau < 1:
            raise ValueError(f"`max_temperature` must be >= 1, got {tau!r}")
        p1 = _integer(phase1_epochs, "phase1_epochs")
        if p1 < 1:
            raise ValueError(f"`phase1_epochs` must be >= 1, got {p1!r}")
        p2 = _integer(phase2_epochs, "phase2_epochs")
        if p2 < 0:
            raise ValueError(f"`phase2_epochs` must be >= 0, got {p2!r}")
        self._tau = tau
        self._p1 = p1
        self._p2 = p2

    @property
    def max_temperature(self) -> int:
        r""":math:`\tau_{max}`."""
        return self._tau

    @property
    def phase1_epochs(self) -> int:
        """Epochs of phase 1."""
        return self._p1

    @property
    def phase2_epochs(self) -> int:
        """Epochs of phase 2."""
        return self._p2

    @property
    def total_epochs(self) -> int:
        """``phase1_epochs + phase2_epochs``."""
        return self._p1 + self._p2

    @property
    def stage_epochs(self) -> int:
        r""":math:`k = \lfloor \mathrm{phase1\_epochs} / \tau_{max} \rfloor`, the
        epochs spent at each temperature (the last stage also gets the
        remainder); 0 when ``phase1_epochs < max_temperature`` (then an epoch
        covers one or more temperature steps)."""
        return self._p1 // self._tau

    def _epoch(self, epoch: Any) -> int:
        e = _integer(epoch, "epoch")
        if not 0 <= e < self.total_epochs:
            raise ValueError(
                f"`epoch` must be in [0, {self.total_epochs}) (0-based), got {e!r}")
        return e

    def phase(self, epoch: int) -> int:
        """1 for epochs ``0 .. phase1_epochs - 1``, 2 after.

        Raises
        ------
        TypeError, ValueError
            ``epoch`` not an int, or outside ``[0, total_epochs)``.
        """
        return 1 if self._epoch(epoch) < self._p1 else 2

    def _t_prime(self, epoch: int) -> int:
        e = self._epoch(epoch)
        if e >= self._p1:
            return self._tau
        if self._p1 >= self._tau:  # the authors' stepping, capped
            return min(1 + e // self.stage_epochs, self._tau)
        if self._p1 == 1:  # the only phase-1 epoch is the last one
            return self._tau
        # fewer epochs than temperatures: the tau - 1 steps spread over p1 - 1
        return 1 + (e * (self._tau - 1)) // (self._p1 - 1)

    def temperature(self, epoch: int) -> int:
        r"""The integer temperature :math:`T = \tau_{max} + 1 - T'(e)` in phase 1
        (from :math:`\tau_{max}` down to 1); 1 in phase 2.

        Raises
        ------
        TypeError, ValueError
            ``epoch`` not an int, or outside ``[0, total_epochs)``.
        """
        return self._tau + 1 - self._t_prime(epoch)

    def phi(self, epoch: int) -> float:
        r""":math:`\Phi = 1 - (T - 1)/\tau_{max}`, in :math:`[1/\tau_{max}, 1]`;
        1.0 in phase 2.

        Computed as the authors' code does, :math:`T'/\tau_{max}`: one rounding,
        so the correctly rounded value (evaluating ``1 - (T - 1) / tau_max`` can
        differ from it in the last bit).

        Raises
        ------
        TypeError, ValueError
            ``epoch`` not an int, or outside ``[0, total_epochs)``.
        """
        return self._t_prime(epoch) / self._tau

    def state_dict(self) -> Dict[str, Any]:
        """``version`` and ``config`` (the schedule is a pure function of the
        epoch)."""
        return {"version": _STATE_VERSION,
                "config": {"max_temperature": self._tau, "phase1_epochs": self._p1,
                           "phase2_epochs": self._p2}}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        if not isinstance(state_dict, dict):
            raise TypeError(
                f"`state_dict` must be a dict, got {type(state_dict).__name__}")
        if state_dict.get("version") != _STATE_VERSION or "config" not in state_dict:
            raise ValueError("`state_dict` is not an AnnealingSchedule state")
        fresh = AnnealingSchedule(**state_dict["config"])
        self._tau, self._p1, self._p2 = fresh._tau, fresh._p1, fresh._p2

    def __repr__(self) -> str:
        return (f"AnnealingSchedule(max_temperature={self._tau!r}, "
                f"phase1_epochs={self._p1!r}, phase2_epochs={self._p2!r})")
