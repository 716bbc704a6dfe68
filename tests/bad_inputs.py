"""Registry of bad inputs to every public kdtemp entry point and what each must raise.

One :class:`Case` per bad input: a zero-argument ``call`` that builds fresh, valid
arguments, breaks exactly one thing and calls the function; the exception type it
must raise; a regular expression its message must match (it names the offending
argument). ``tests/test_reliability.py`` asserts every case; ``tools/bad_input_table.py``
runs them and renders ``docs/bad_inputs.md`` (the exception and the full message
each one gets), together with the cases of ``tests/test_bad_input.py``.

Cases that need PyTorch carry ``needs_torch=True`` and are skipped without it.
"""
from __future__ import annotations

from typing import Any, Callable, List, NamedTuple

import numpy as np

import kdtemp

N, C = 4, 6


class Case(NamedTuple):
    func: str          # the public name, as a user writes it
    what: str          # the bad input, in words (the table's second column)
    call: Callable[[], Any]
    exc: type
    match: str         # regex the message must match
    needs_torch: bool = False

    @property
    def id(self) -> str:
        return f"{self.func}: {self.what}"


def z(dtype=np.float64, shape=(N, C), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def v(dtype=np.float64, shape=(N, C)) -> np.ndarray:
    return z(dtype, shape, seed=1)


def labels(n=N) -> np.ndarray:
    return np.arange(n, dtype=np.int64) % C


def with_(a: np.ndarray, index, value) -> np.ndarray:
    a = a.copy()
    a[index] = value
    return a


def readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def overlapping_rows(dtype=np.float64) -> np.ndarray:
    """An (N, C) view whose rows start one element apart (each overlaps the next)."""
    item = np.dtype(dtype).itemsize
    return np.lib.stride_tricks.as_strided(np.zeros(N + C - 1, dtype), shape=(N, C),
                                           strides=(item, item))


CASES: List[Case] = []


def add(func: str, what: str, exc: type, match: str, call: Callable[[], Any],
        needs_torch: bool = False) -> None:
    CASES.append(Case(func, what, call, exc, match, needs_torch))


# ---------------------------------------------------------------------------------
# the loss functions: kd_loss, dkd_loss, atkd_loss, annealing_loss, ce_loss
# (tests/test_bad_input.py covers kd_loss / ce_loss / softmax argument by argument;
# here every loss gets the same core set, plus what is particular to it)

LOSSES = {
    "kd_loss": lambda s, t, **kw: kdtemp.kd_loss(s, t, **kw),
    "dkd_loss": lambda s, t, **kw: kdtemp.dkd_loss(s, t, kw.pop("labels", labels()), **kw),
    "atkd_loss": lambda s, t, **kw: kdtemp.atkd_loss(s, t, **kw),
    "annealing_loss": lambda s, t, **kw: kdtemp.annealing_loss(s, t, kw.pop("phi", 0.5), **kw),
}

for _name, _f in LOSSES.items():
    add(_name, "integer student logits", TypeError, "student",
        lambda f=_f: f(np.ones((N, C), np.int64), v()))
    add(_name, "float16 teacher logits", TypeError, "teacher",
        lambda f=_f: f(z(), v(np.float16)))
    add(_name, "float32 student, float64 teacher", TypeError, "teacher|student",
        lambda f=_f: f(z(np.float32), v()))
    add(_name, "a list of strings as student", (TypeError, ValueError), "student",
        lambda f=_f: f([["a"] * C] * N, v()))
    add(_name, "teacher with one more class", ValueError, "teacher",
        lambda f=_f: f(z(), v(shape=(N, C + 1))))
    add(_name, "zero classes (C = 0)", ValueError, "student",
        lambda f=_f: f(z(shape=(N, 0)), v(shape=(N, 0))))
    add(_name, "0-d student", ValueError, "student",
        lambda f=_f: f(np.array(1.0), np.array(2.0)))
    add(_name, "NaN in a student row", ValueError, "student",
        lambda f=_f: f(with_(z(), (1, 2), np.nan), v()))
    add(_name, "+inf in a teacher row", ValueError, "teacher",
        lambda f=_f: f(z(), with_(v(), (2, 0), np.inf)))
    add(_name, "labels of dtype float", TypeError, "labels",
        lambda f=_f: f(z(), v(), labels=np.zeros(N)))
    add(_name, "labels one too long", ValueError, "labels",
        lambda f=_f: f(z(), v(), labels=np.zeros(N + 1, np.int64)))
    add(_name, "mask of dtype float", TypeError, "mask",
        lambda f=_f: f(z(), v(), mask=np.ones(N)))
    add(_name, "mask one too short", ValueError, "mask",
        lambda f=_f: f(z(), v(), mask=np.ones(N - 1, bool)))
    add(_name, "reduction='avg'", ValueError, "reduction",
        lambda f=_f: f(z(), v(), reduction="avg"))
    add(_name, "out of the wrong shape", ValueError, "out",
        lambda f=_f: f(z(), v(), out=np.empty((N, C + 1))))
    add(_name, "out of the wrong dtype", TypeError, "out",
        lambda f=_f: f(z(), v(), out=np.empty((N, C), np.float32)))
    add(_name, "read-only out", ValueError, "out",
        lambda f=_f: f(z(), v(), out=readonly(np.empty((N, C)))))
    add(_name, "out given with compute_grad=False", ValueError, "out",
        lambda f=_f: f(z(), v(), out=np.empty((N, C)), compute_grad=False))
    add(_name, "out is the teacher", ValueError, "out",
        lambda f=_f: (lambda t: f(z(), t, out=t))(v()))
    add(_name, "out overlaps the student without being it", ValueError, "out",
        lambda f=_f: (lambda buf: f(buf[:N], v(), out=buf[1:N + 1]))(z(shape=(N + 1, C))))
    add(_name, "out whose rows overlap each other", ValueError, "out",
        lambda f=_f: f(z(), v(), out=overlapping_rows()))
    add(_name, "n_threads=0", ValueError, "n_threads",
        lambda f=_f: f(z(), v(), n_threads=0))
    add(_name, "n_threads=1.5", TypeError, "n_threads",
        lambda f=_f: f(z(), v(), n_threads=1.5))
    add(_name, "n_threads=True", TypeError, "n_threads",
        lambda f=_f: f(z(), v(), n_threads=True))

for _name in ("kd_loss", "dkd_loss"):
    _f = LOSSES[_name]
    for _t, _w in ((0.0, "0"), (-1.0, "-1"), (np.nan, "NaN"), (np.inf, "+inf")):
        add(_name, f"temperature={_w}", ValueError, "temperature",
            lambda f=_f, t=_t: f(z(), v(), temperature=t))
    add(_name, "temperature array with a 0 in row 2", ValueError, "temperature",
        lambda f=_f: f(z(), v(), temperature=with_(np.ones(N), 2, 0.0)))
    add(_name, "temperature array one too long", ValueError, "temperature",
        lambda f=_f: f(z(), v(), temperature=np.ones(N + 1)))
    add(_name, "temperature='4'", TypeError, "temperature",
        lambda f=_f: f(z(), v(), temperature="4"))
    add(_name, "float32 logits, temperature=1e-40 (1/t overflows)", ValueError, "temperature",
        lambda f=_f: f(z(np.float32), v(np.float32), temperature=1e-40))
    add(_name, "float32 logits, temperature=1e39 (beyond float32)", ValueError, "temperature",
        lambda f=_f: f(z(np.float32), v(np.float32), temperature=1e39))
    add(_name, "float64 logits, temperature=1e-310 (1/t overflows)", ValueError, "temperature",
        lambda f=_f: f(z(), v(), temperature=1e-310))
    add(_name, "label C (out of range)", ValueError, "labels",
        lambda f=_f: f(z(), v(), labels=with_(labels(), 1, C), ce_weight=0.5))
    add(_name, "label -1 with ignore_index=-100", ValueError, "labels",
        lambda f=_f: f(z(), v(), labels=with_(labels(), 0, -1), ce_weight=0.5))
    add(_name, "label_smoothing=1.5", ValueError, "label_smoothing",
        lambda f=_f: f(z(), v(), labels=labels(), ce_weight=1.0, label_smoothing=1.5))
    add(_name, "kd_weight=NaN", ValueError, "kd_weight",
        lambda f=_f: f(z(), v(), kd_weight=np.nan))
    add(_name, "ce_weight=+inf", ValueError, "ce_weight",
        lambda f=_f: f(z(), v(), labels=labels(), ce_weight=np.inf))
    add(_name, "a counted student row all -inf", ValueError, "student",
        lambda f=_f: f(with_(z(), 3, -np.inf), v()))
    add(_name, "a counted teacher row all -inf", ValueError, "teacher",
        lambda f=_f: f(z(), with_(v(), 0, -np.inf)))

add("kd_loss", "teacher_temperature=-2", ValueError, "teacher_temperature",
    lambda: kdtemp.kd_loss(z(), v(), teacher_temperature=-2.0))
add("kd_loss", "divergence='kld'", ValueError, "divergence",
    lambda: kdtemp.kd_loss(z(), v(), divergence="kld"))
add("kd_loss", "divergence='dkd' (use dkd_loss)", ValueError, "divergence",
    lambda: kdtemp.kd_loss(z(), v(), divergence="dkd"))
add("kd_loss", "scale='T'", ValueError, "scale",
    lambda: kdtemp.kd_loss(z(), v(), scale="T"))
add("kd_loss", "beta=1 with divergence='jsd'", ValueError, "beta",
    lambda: kdtemp.kd_loss(z(), v(), divergence="jsd", beta=1.0))
add("kd_loss", "alpha=1 with divergence='skew_kl'", ValueError, "alpha",
    lambda: kdtemp.kd_loss(z(), v(), divergence="skew_kl", alpha=1.0))
add("kd_loss", "ce_weight != 0 without labels", ValueError, "labels",
    lambda: kdtemp.kd_loss(z(), v(), ce_weight=0.1))

add("dkd_loss", "labels=None", ValueError, "labels",
    lambda: kdtemp.dkd_loss(z(), v(), None))
add("dkd_loss", "alpha=-1", ValueError, "alpha",
    lambda: kdtemp.dkd_loss(z(), v(), labels(), alpha=-1.0))
add("dkd_loss", "beta=NaN", ValueError, "beta",
    lambda: kdtemp.dkd_loss(z(), v(), labels(), beta=np.nan))
add("dkd_loss", "a label out of range (row 1)", ValueError, "labels",
    lambda: kdtemp.dkd_loss(z(), v(), with_(labels(), 1, C + 7)))

add("atkd_loss", "base_temperature=0", ValueError, "base_temperature",
    lambda: kdtemp.atkd_loss(z(), v(), base_temperature=0.0))
add("atkd_loss", "base_temperature=NaN", ValueError, "base_temperature",
    lambda: kdtemp.atkd_loss(z(), v(), base_temperature=np.nan))
add("atkd_loss", "float32, base_temperature * eps = 1e-40", ValueError, "base_temperature",
    lambda: kdtemp.atkd_loss(z(np.float32), v(np.float32), base_temperature=1e-33))
add("atkd_loss", "eps=0", ValueError, "eps",
    lambda: kdtemp.atkd_loss(z(), v(), eps=0.0))
add("atkd_loss", "ddof=-1", ValueError, "ddof",
    lambda: kdtemp.atkd_loss(z(), v(), ddof=-1))
add("atkd_loss", "ddof=0.5", TypeError, "ddof",
    lambda: kdtemp.atkd_loss(z(), v(), ddof=0.5))
add("atkd_loss", "scale='T^2'", ValueError, "scale",
    lambda: kdtemp.atkd_loss(z(), v(), scale="T^2"))
add("atkd_loss", "ce_weight != 0 without labels", ValueError, "labels",
    lambda: kdtemp.atkd_loss(z(), v(), ce_weight=0.1))

add("annealing_loss", "phi=NaN", ValueError, "phi",
    lambda: kdtemp.annealing_loss(z(), v(), np.nan))
add("annealing_loss", "phi='0.5'", TypeError, "phi",
    lambda: kdtemp.annealing_loss(z(), v(), "0.5"))
add("annealing_loss", "phi=True", TypeError, "phi",
    lambda: kdtemp.annealing_loss(z(), v(), True))
add("annealing_loss", "-inf in a counted student row", ValueError, "student",
    lambda: kdtemp.annealing_loss(with_(z(), (0, 0), -np.inf), v(), 0.5))
add("annealing_loss", "reduction='avg'", ValueError, "reduction",
    lambda: kdtemp.annealing_loss(z(), v(), 0.5, reduction="avg"))

add("ce_loss", "labels=None", ValueError, "labels",
    lambda: kdtemp.ce_loss(z(), None))
add("ce_loss", "labels of dtype bool", TypeError, "labels",
    lambda: kdtemp.ce_loss(z(), np.ones(N, bool)))
add("ce_loss", "a label equal to C", ValueError, "labels",
    lambda: kdtemp.ce_loss(z(), with_(labels(), 3, C)))
add("ce_loss", "label_smoothing=-0.1", ValueError, "label_smoothing",
    lambda: kdtemp.ce_loss(z(), labels(), label_smoothing=-0.1))
add("ce_loss", "a counted row all -inf", ValueError, "student",
    lambda: kdtemp.ce_loss(with_(z(), 1, -np.inf), labels()))
add("ce_loss", "out whose rows overlap each other", ValueError, "out",
    lambda: kdtemp.ce_loss(z(), labels(), out=overlapping_rows()))

# ---------------------------------------------------------------------------------
# softmax, log_softmax, sharpness, sharpness_gap, row_stats, temperature_profile,
# match_sharpness

for _name, _f in (("softmax", kdtemp.softmax), ("log_softmax", kdtemp.log_softmax),
                  ("sharpness", kdtemp.sharpness)):
    add(_name, "integer logits", TypeError, "logits",
        lambda f=_f: f(np.ones((N, C), np.int32)))
    add(_name, "zero classes", ValueError, "logits",
        lambda f=_f: f(z(shape=(N, 0))))
    add(_name, "NaN logit", ValueError, "logits",
        lambda f=_f: f(with_(z(), (2, 2), np.nan)))
    add(_name, "a row all -inf", ValueError, "logits",
        lambda f=_f: f(with_(z(), 0, -np.inf)))
    add(_name, "temperature=0", ValueError, "temperature",
        lambda f=_f: f(z(), 0.0))
    add(_name, "temperature array one too short", ValueError, "temperature",
        lambda f=_f: f(z(), np.ones(N - 1)))
    add(_name, "float32 logits, temperature=1e-40 (1/t overflows)", ValueError, "temperature",
        lambda f=_f: f(z(np.float32), 1e-40))
    add(_name, "float32 logits, temperature=1e39 (beyond float32)", ValueError, "temperature",
        lambda f=_f: f(z(np.float32), 1e39))
    add(_name, "n_threads=0", ValueError, "n_threads",
        lambda f=_f: f(z(), n_threads=0))
for _name, _f in (("softmax", kdtemp.softmax), ("log_softmax", kdtemp.log_softmax)):
    add(_name, "out of another dtype", TypeError, "out",
        lambda f=_f: f(z(), out=np.empty((N, C), np.float32)))
    add(_name, "read-only out", ValueError, "out",
        lambda f=_f: f(z(), out=readonly(np.empty((N, C)))))
    add(_name, "out overlapping the logits", ValueError, "out",
        lambda f=_f: (lambda buf: f(buf[:N], out=buf[1:N + 1]))(z(shape=(N + 1, C))))
    add(_name, "out whose rows overlap each other", ValueError, "out",
        lambda f=_f: f(z(), out=overlapping_rows()))

add("sharpness_gap", "teacher of another shape", ValueError, "teacher",
    lambda: kdtemp.sharpness_gap(z(), v(shape=(N + 1, C))))
add("sharpness_gap", "reduction='sum'", ValueError, "reduction",
    lambda: kdtemp.sharpness_gap(z(), v(), reduction="sum"))
add("sharpness_gap", "student_temperature=-1", ValueError, "temperature",
    lambda: kdtemp.sharpness_gap(z(), v(), -1.0))
add("sharpness_gap", "mask of dtype float", TypeError, "mask",
    lambda: kdtemp.sharpness_gap(z(), v(), mask=np.ones(N)))

add("row_stats", "labels out of range", ValueError, "labels",
    lambda: kdtemp.row_stats(z(), labels=with_(labels(), 0, C)))
add("row_stats", "temperature=NaN", ValueError, "temperature",
    lambda: kdtemp.row_stats(z(), np.nan))
add("row_stats", "+inf logit", ValueError, "logits",
    lambda: kdtemp.row_stats(with_(z(), (3, 3), np.inf)))
add("row_stats", "mask of the wrong length", ValueError, "mask",
    lambda: kdtemp.row_stats(z(), mask=np.ones(N + 2, bool)))

add("temperature_profile", "temperatures=[]", ValueError, "temperatures",
    lambda: kdtemp.temperature_profile(z(), v(), []))
add("temperature_profile", "a temperature of 0", ValueError, "temperatures",
    lambda: kdtemp.temperature_profile(z(), v(), [1.0, 0.0]))
add("temperature_profile", "float32, a temperature of 1e-40", ValueError, "temperatures",
    lambda: kdtemp.temperature_profile(z(np.float32), v(np.float32), [1.0, 1e-40]))
add("temperature_profile", "2-D temperatures", ValueError, "temperatures",
    lambda: kdtemp.temperature_profile(z(), v(), [[1.0, 2.0]]))
add("temperature_profile", "teacher of another shape", ValueError, "teacher",
    lambda: kdtemp.temperature_profile(z(), v(shape=(N, C + 1))))
add("temperature_profile", "NaN teacher logit", ValueError, "teacher",
    lambda: kdtemp.temperature_profile(z(), with_(v(), (0, 1), np.nan)))

add("match_sharpness", "bounds=(1, 1)", ValueError, "bounds",
    lambda: kdtemp.match_sharpness(z(), v(), bounds=(1.0, 1.0)))
add("match_sharpness", "bounds=(0, 10)", ValueError, "bounds",
    lambda: kdtemp.match_sharpness(z(), v(), bounds=(0.0, 10.0)))
add("match_sharpness", "a mask that leaves no row", ValueError, "mask",
    lambda: kdtemp.match_sharpness(z(), v(), mask=np.zeros(N, bool)))
add("match_sharpness", "no root in bounds", ValueError, "bounds",
    lambda: kdtemp.match_sharpness(z(), v() * 100, bounds=(0.5, 0.6)))

# ---------------------------------------------------------------------------------
# per-row temperature functions

add("flsw_temperature", "base_temperature=0", ValueError, "base_temperature",
    lambda: kdtemp.flsw_temperature(z(), v(), 0.0, beta=1.0, gamma=1.0))
add("flsw_temperature", "gamma=-1", ValueError, "gamma",
    lambda: kdtemp.flsw_temperature(z(), v(), 4.0, beta=1.0, gamma=-1.0))
add("flsw_temperature", "beta='x'", TypeError, "beta",
    lambda: kdtemp.flsw_temperature(z(), v(), 4.0, beta="x", gamma=1.0))
add("flsw_temperature", "eps=-1", ValueError, "eps",
    lambda: kdtemp.flsw_temperature(z(), v(), 4.0, beta=1.0, gamma=1.0, eps=-1.0))
add("flsw_temperature", "NaN student logit", ValueError, "student",
    lambda: kdtemp.flsw_temperature(with_(z(), (0, 0), np.nan), v(), 4.0, beta=1.0, gamma=1.0))
add("flsw_temperature", "an all-zero row with eps=0", ValueError, "eps",
    lambda: kdtemp.flsw_temperature(with_(z(), 1, 0.0), v(), 4.0, beta=1.0, gamma=1.0, eps=0.0))
add("flsw_temperature", "min_temperature=0", ValueError, "min_temperature",
    lambda: kdtemp.flsw_temperature(z(), v(), 4.0, beta=1.0, gamma=1.0, min_temperature=0.0))
add("cwsm_temperature", "teacher of another shape", ValueError, "teacher",
    lambda: kdtemp.cwsm_temperature(z(), v(shape=(N + 1, C)), 4.0, beta=1.0))
add("cwsm_temperature", "a counted student row all -inf", ValueError, "student",
    lambda: kdtemp.cwsm_temperature(with_(z(), 2, -np.inf), v(), 4.0, beta=1.0))
add("cwsm_temperature", "base_temperature=inf", ValueError, "base_temperature",
    lambda: kdtemp.cwsm_temperature(z(), v(), np.inf, beta=1.0))

# ---------------------------------------------------------------------------------
# schedulers


def _dts(**kw):
    return kdtemp.DTS(**{"total_epochs": 10, **kw})


for _arg, _val, _exc in (("initial_temperature", 0.0, ValueError),
                         ("initial_temperature", np.nan, ValueError),
                         ("min_temperature", -1.0, ValueError),
                         ("max_temperature", np.inf, ValueError),
                         ("total_epochs", 0, ValueError),
                         ("total_epochs", "10", TypeError),
                         ("curve_shape", -1.0, ValueError),
                         ("momentum", 1.0, ValueError),
                         ("momentum", -0.1, ValueError),
                         ("adaptive", 1, TypeError),
                         ("scale_cap", 0.0, ValueError),
                         ("gap_eps", -1e-4, ValueError),
                         ("all_reduce", 3, TypeError),
                         ("record_history", "yes", TypeError)):
    add("DTS", f"{_arg}={_val!r}", _exc, _arg, lambda a=_arg, x=_val: _dts(**{a: x}))
add("DTS", "min_temperature > max_temperature", ValueError, "min_temperature",
    lambda: _dts(min_temperature=5.0, max_temperature=4.0))
add("DTS.update", "epoch=-1", ValueError, "epoch",
    lambda: _dts().update(-1, 1.0, 2.0))
add("DTS.update", "teacher_ce=NaN", ValueError, "teacher_ce",
    lambda: _dts().update(1, np.nan, 2.0))
add("DTS.update", "student_ce=+inf", ValueError, "student_ce",
    lambda: _dts().update(1, 1.0, np.inf))
add("DTS.update", "student_ce missing", TypeError, "student_ce",
    lambda: _dts().update(1, 1.0))
add("DTS.update", "means and sums both given", TypeError, "teacher_ce",
    lambda: _dts().update(1, 1.0, 2.0, teacher_ce_sum=1.0, student_ce_sum=2.0, count=1))
add("DTS.update", "count=-1", ValueError, "count",
    lambda: _dts().update(1, teacher_ce_sum=1.0, student_ce_sum=2.0, count=-1))
add("DTS.update", "a 1-D array as teacher_ce", TypeError, "teacher_ce",
    lambda: _dts().update(1, np.ones(2), 2.0))
add("DTS.update", "all_reduce returning shape (2,)", ValueError, "all_reduce",
    lambda: _dts(all_reduce=lambda a: a[:2]).update(1, 1.0, 2.0))
add("DTS.update", "all_reduce returning NaN", ValueError, "all_reduce",
    lambda: _dts(all_reduce=lambda a: a * np.nan).update(1, 1.0, 2.0))
add("DTS.update_from_logits", "labels out of range", ValueError, "labels",
    lambda: _dts().update_from_logits(1, z(), v(), with_(labels(), 0, C)))
add("DTS.update_from_logits", "NaN in teacher", ValueError, "teacher",
    lambda: _dts().update_from_logits(1, z(), with_(v(), (2, 1), np.nan), labels()))
add("DTS.update_from_logits", "teacher with fewer rows", ValueError, "labels",
    lambda: _dts().update_from_logits(1, z(), v(shape=(N - 1, C)), labels()))
add("DTS.load_state_dict", "a list", TypeError, "state_dict",
    lambda: _dts().load_state_dict([]))
add("DTS.load_state_dict", "no 'temperature' entry", ValueError, "temperature",
    lambda: (lambda d: d.load_state_dict(
        {k: x for k, x in d.state_dict().items() if k != "temperature"}))(_dts()))
add("DTS.load_state_dict", "version 99", ValueError, "version",
    lambda: (lambda d: d.load_state_dict({**d.state_dict(), "version": 99}))(_dts()))
add("DTS.load_state_dict", "history columns of different lengths", ValueError, "history",
    lambda: (lambda d: (d.update(1, 1.0, 2.0), d.load_state_dict(
        {**d.state_dict(), "history": {**d.state_dict()["history"], "epoch": []}})))(_dts()))

add("ConstantTemperature", "temperature=0", ValueError, "temperature",
    lambda: kdtemp.ConstantTemperature(0.0))
add("LinearTemperature", "total_epochs=0", ValueError, "total_epochs",
    lambda: kdtemp.LinearTemperature(4.0, 1.0, 0))
add("CosineTemperature", "end=NaN", ValueError, "end",
    lambda: kdtemp.CosineTemperature(4.0, np.nan, 10))
add("StepTemperature", "gamma=0", ValueError, "gamma",
    lambda: kdtemp.StepTemperature(4.0, 0.0, 5))
add("StepTemperature", "gamma=1.5", ValueError, "gamma",
    lambda: kdtemp.StepTemperature(4.0, 1.5, 5))
add("CosineTemperature.step", "epoch=-1", ValueError, "epoch",
    lambda: kdtemp.CosineTemperature(4.0, 1.0, 10).step(-1))
add("CosineTemperature.step", "epoch='3'", TypeError, "epoch",
    lambda: kdtemp.CosineTemperature(4.0, 1.0, 10).step("3"))
add("WeightWarmup", "warmup=-1", ValueError, "warmup",
    lambda: kdtemp.WeightWarmup(-1))
add("AnnealingSchedule", "max_temperature=0", ValueError, "max_temperature",
    lambda: kdtemp.AnnealingSchedule(0, phase1_epochs=10, phase2_epochs=5))
add("AnnealingSchedule", "phase1_epochs=2.5", TypeError, "phase1_epochs",
    lambda: kdtemp.AnnealingSchedule(10, phase1_epochs=2.5, phase2_epochs=5))
add("AnnealingSchedule", "phase1_epochs=0", ValueError, "phase1_epochs",
    lambda: kdtemp.AnnealingSchedule(10, phase1_epochs=0, phase2_epochs=5))
add("AnnealingSchedule.phi", "epoch=-1", ValueError, "epoch",
    lambda: kdtemp.AnnealingSchedule(10, phase1_epochs=10, phase2_epochs=5).phi(-1))

add("set_num_threads", "0", ValueError, "n_threads", lambda: kdtemp.set_num_threads(0))
add("set_num_threads", "'4'", TypeError, "n_threads", lambda: kdtemp.set_num_threads("4"))

# ---------------------------------------------------------------------------------
# kdtemp.torch (the autograd functions and modules)


def _kt():
    import kdtemp.torch
    return kdtemp.torch


def _t(x):
    import torch
    return torch.from_numpy(x)


def _tt(x):
    import torch
    return torch.from_numpy(x).requires_grad_(True)


add("torch.kd_loss", "integer tensors", TypeError, "student",
    lambda: _kt().kd_loss(
        _t(np.ones((N, C), np.int64)), _t(np.ones((N, C), np.int64))), needs_torch=True)
add("torch.kd_loss", "temperature=0", ValueError, "temperature",
    lambda: _kt().kd_loss(_tt(z()), _t(v()), temperature=0.0),
    needs_torch=True)
add("torch.kd_loss", "NaN student logit", ValueError, "student",
    lambda: _kt().kd_loss(_tt(with_(z(), (0, 0), np.nan)), _t(v())),
    needs_torch=True)
add("torch.kd_loss", "teacher of another shape", ValueError, "teacher",
    lambda: _kt().kd_loss(_tt(z()), _t(v(shape=(N, C + 1)))),
    needs_torch=True)
add("torch.dkd_loss", "label out of range", ValueError, "labels",
    lambda: _kt().dkd_loss(
        _tt(z()), _t(v()), _t(with_(labels(), 0, C))), needs_torch=True)
add("torch.atkd_loss", "eps=0", ValueError, "eps",
    lambda: _kt().atkd_loss(_tt(z()), _t(v()), eps=0.0),
    needs_torch=True)
add("torch.annealing_loss", "phi=inf", ValueError, "phi",
    lambda: _kt().annealing_loss(_tt(z()), _t(v()), np.inf),
    needs_torch=True)
add("torch.KDLoss", "divergence='kld'", ValueError, "divergence",
    lambda: _kt().KDLoss(divergence="kld")(_tt(z()), _t(v())),
    needs_torch=True)
