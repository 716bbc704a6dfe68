"""Simple temperature schedules, DKD's weight warm-up and Annealing-KD's schedule."""
import json
import math

import numpy as np
import pytest

import kdtemp
from kdtemp.dts import DTS
from kdtemp.reference.schedules import annealing_phi, annealing_t_prime_authors
from kdtemp.schedules import (AnnealingSchedule, ConstantTemperature,
                              CosineTemperature, LinearTemperature, StepTemperature,
                              WeightWarmup)

# ---------------------------------------------------------------------------
# Annealing-KD


def _check_annealing(sched, tau, p1, p2):
    phis = [sched.phi(e) for e in range(p1 + p2)]
    temps = [sched.temperature(e) for e in range(p1 + p2)]
    # Phi never exceeds 1, starts at 1/tau, non-decreasing, exactly 1 at the end
    # of phase 1 and through phase 2
    assert max(phis) == 1.0
    assert phis[0] == 1.0 / tau and temps[0] == tau
    assert all(a <= b for a, b in zip(phis, phis[1:]))
    assert phis[p1 - 1] == 1.0 and temps[p1 - 1] == 1
    assert all(phi == 1.0 for phi in phis[p1:])
    # T is an integer from tau down to 1, every value used, steps of 1
    assert all(isinstance(t, int) for t in temps)
    assert sorted(set(temps[:p1])) == list(range(1, tau + 1))
    assert all(a - b in (0, 1) for a, b in zip(temps, temps[1:]))
    for e in range(p1 + p2):
        # Phi(T) = 1 - (T - 1) / tau
        assert phis[e] == pytest.approx(1.0 - (temps[e] - 1) / tau, rel=0, abs=1e-15)
        # the twin (the authors' loop with the cap)
        assert phis[e] == annealing_phi(e, tau, p1, p2)
        assert sched.phase(e) == (1 if e < p1 else 2)
    return phis, temps


def test_annealing_cifar_defaults():
    sched = AnnealingSchedule(10, phase1_epochs=200, phase2_epochs=200)
    assert sched.max_temperature == 10 and sched.stage_epochs == 20
    assert sched.total_epochs == 400
    phis, temps = _check_annealing(sched, 10, 200, 200)
    # each T lasts 20 epochs: T = 10 on 0..19, 9 on 20..39, ..., 1 on 180..199
    for e in range(200):
        assert temps[e] == 10 - e // 20
        assert phis[e] == (1 + e // 20) / 10
    assert (sched.phi(19), sched.phi(20)) == (0.1, 0.2)
    assert sched.phi(179) == 0.9 and sched.phi(180) == 1.0
    # a multiple: identical to the authors' (uncapped) rule
    for e in range(200):
        assert phis[e] == annealing_t_prime_authors(e, 10, 200) / 10
    assert sched.phase(199) == 1 and sched.phase(200) == 2 and sched.phase(399) == 2


def test_annealing_glue_defaults():
    sched = AnnealingSchedule(7, phase1_epochs=14, phase2_epochs=4)
    assert sched.stage_epochs == 2 and sched.total_epochs == 18
    phis, temps = _check_annealing(sched, 7, 14, 4)
    assert temps[:14] == [7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert phis[:14] == [annealing_t_prime_authors(e, 7, 14) / 7 for e in range(14)]
    assert phis[12] == phis[13] == 1.0
    assert [sched.phase(e) for e in range(18)] == [1] * 14 + [2] * 4


def test_annealing_default_max_temperature_is_10():
    assert AnnealingSchedule(phase1_epochs=200, phase2_epochs=200).max_temperature == 10


@pytest.mark.parametrize("tau, p1, p2", [
    (10, 205, 10),   # remainder 5, k = 20
    (7, 20, 4),      # remainder 6, k = 2
    (3, 5, 0),       # remainder 2, k = 1
    (10, 19, 3),     # remainder 9, k = 1
    (4, 15, 1),      # remainder 3, k = 3
    (10, 10, 2),     # k = 1, no remainder
    (1, 3, 2),       # tau 1: Phi = 1 throughout
])
def test_annealing_remainder_never_overshoots(tau, p1, p2):
    sched = AnnealingSchedule(tau, phase1_epochs=p1, phase2_epochs=p2)
    phis, temps = _check_annealing(sched, tau, p1, p2)
    k = p1 // tau
    authors = [annealing_t_prime_authors(e, tau, p1) for e in range(p1)]
    if p1 % tau:
        # the authors' rule does overshoot here (Phi > 1) ...
        assert max(authors) > tau
    # ... kdtemp follows it up to the cap, and spends the remainder at Phi = 1
    for e in range(p1):
        assert phis[e] == min(authors[e], tau) / tau
    assert temps[:p1].count(1) == k + p1 % tau
    for t in range(2, tau + 1):
        assert temps[:p1].count(t) == k


def _old_phi(e, tau, p1, p2):
    """The schedule before fewer phase-1 epochs than temperatures were allowed
    (frozen here: it must not change for phase1_epochs >= max_temperature)."""
    if e >= p1:
        return 1.0
    return min(1 + e // (p1 // tau), tau) / tau


def test_annealing_unchanged_when_enough_phase1_epochs():
    for tau in (1, 2, 3, 7, 10):
        for p1 in list(range(tau, 3 * tau + 2)) + [200, 205]:
            sched = AnnealingSchedule(tau, phase1_epochs=p1, phase2_epochs=3)
            for e in range(p1 + 3):
                assert sched.phi(e) == _old_phi(e, tau, p1, 3), (tau, p1, e)
                assert sched.temperature(e) == tau + 1 - round(_old_phi(e, tau, p1, 3) * tau)


@pytest.mark.parametrize("tau, p1, temps", [
    (10, 4, [10, 7, 4, 1]),             # the docstring's examples
    (10, 6, [10, 9, 7, 5, 3, 1]),       # the demo's --quick (12 epochs, half of them)
    (10, 2, [10, 1]),
    (10, 3, [10, 6, 1]),
    (10, 9, [10, 9, 8, 7, 6, 5, 4, 3, 1]),
    (7, 5, [7, 6, 4, 3, 1]),
    (10, 1, [1]),                       # one epoch: the last one, Phi = 1
    (2, 1, [1]),
])
def test_annealing_fewer_phase1_epochs_than_temperatures(tau, p1, temps):
    p2 = 3
    sched = AnnealingSchedule(tau, phase1_epochs=p1, phase2_epochs=p2)
    assert sched.stage_epochs == 0
    got_t = [sched.temperature(e) for e in range(p1 + p2)]
    phis = [sched.phi(e) for e in range(p1 + p2)]
    assert got_t[:p1] == temps and got_t[p1:] == [1] * p2
    assert all(isinstance(t, int) and 1 <= t <= tau for t in got_t)
    # Phi never exceeds 1, is non-decreasing, 1 in the last phase-1 epoch and after
    assert max(phis) == 1.0 and all(a <= b for a, b in zip(phis, phis[1:]))
    assert phis[p1 - 1] == 1.0 and all(p == 1.0 for p in phis[p1:])
    if p1 >= 2:  # starts at T = tau and steps down at least 1 per epoch
        assert got_t[0] == tau and phis[0] == 1.0 / tau
        assert all(a - b >= 1 for a, b in zip(got_t[:p1], got_t[1:p1]))
    for e in range(p1 + p2):
        assert phis[e] == (tau + 1 - got_t[e]) / tau  # Phi = T'/tau
        assert phis[e] == annealing_phi(e, tau, p1, p2)  # the twin
        assert sched.phase(e) == (1 if e < p1 else 2)
    # the authors' code divides by k = 0 here
    with pytest.raises(ZeroDivisionError):
        annealing_t_prime_authors(0, tau, p1)


def test_annealing_any_epoch_counts_never_overshoot():
    for tau in range(1, 13):
        for p1 in range(1, 30):
            sched = AnnealingSchedule(tau, phase1_epochs=p1, phase2_epochs=1)
            phis = [sched.phi(e) for e in range(p1 + 1)]
            assert max(phis) == 1.0 and phis[p1 - 1] == 1.0
            assert all(a <= b for a, b in zip(phis, phis[1:]))
            assert phis == [annealing_phi(e, tau, p1, 1) for e in range(p1 + 1)]
            if p1 >= 2:
                assert phis[0] == 1.0 / tau


def test_annealing_bad_arguments():
    with pytest.raises(ValueError, match="phase1_epochs"):
        AnnealingSchedule(phase1_epochs=0, phase2_epochs=5)
    with pytest.raises(ValueError, match="phase1_epochs"):
        AnnealingSchedule(3, phase1_epochs=-2, phase2_epochs=5)
    with pytest.raises(ValueError, match="max_temperature"):
        AnnealingSchedule(0, phase1_epochs=9, phase2_epochs=5)
    with pytest.raises(ValueError, match="phase2_epochs"):
        AnnealingSchedule(2, phase1_epochs=9, phase2_epochs=-1)
    with pytest.raises(TypeError, match="max_temperature"):
        AnnealingSchedule(10.5, phase1_epochs=200, phase2_epochs=5)
    with pytest.raises(TypeError, match="phase1_epochs"):
        AnnealingSchedule(10, phase1_epochs=200.0, phase2_epochs=5)
    with pytest.raises(TypeError, match="max_temperature"):
        AnnealingSchedule(True, phase1_epochs=200, phase2_epochs=5)
    with pytest.raises(TypeError):
        AnnealingSchedule(10, 200, 200)  # phase lengths are keyword-only
    sched = AnnealingSchedule(np.int64(7), phase1_epochs=np.int32(14), phase2_epochs=4)
    for bad, exc in [(-1, ValueError), (18, ValueError), (1.0, TypeError),
                     ("3", TypeError)]:
        for method in (sched.phi, sched.temperature, sched.phase):
            with pytest.raises(exc, match="epoch"):
                method(bad)
    assert sched.phi(np.int64(13)) == 1.0


def test_annealing_state_and_repr():
    sched = AnnealingSchedule(7, phase1_epochs=20, phase2_epochs=4)
    other = AnnealingSchedule(phase1_epochs=200, phase2_epochs=200)
    other.load_state_dict(json.loads(json.dumps(sched.state_dict())))
    assert [other.phi(e) for e in range(24)] == [sched.phi(e) for e in range(24)]
    assert repr(other) == "AnnealingSchedule(max_temperature=7, phase1_epochs=20, " \
                          "phase2_epochs=4)"
    with pytest.raises(ValueError):
        other.load_state_dict({"version": 1, "config": {"max_temperature": 7,
                                                        "phase1_epochs": 0,
                                                        "phase2_epochs": 0}})
    assert other.phase1_epochs == 20
    # fewer phase-1 epochs than temperatures round-trip too
    few = AnnealingSchedule(10, phase1_epochs=4, phase2_epochs=1)
    other.load_state_dict(json.loads(json.dumps(few.state_dict())))
    assert [other.temperature(e) for e in range(5)] == [10, 7, 4, 1, 1]


# ---------------------------------------------------------------------------
# simple temperature schedules

def test_constant():
    s = ConstantTemperature(3.0)
    assert s.temperature == 3.0
    assert s.step(0) == s.step(7) == s.update(500, 1.0, 2.0) == 3.0
    assert ConstantTemperature().temperature == 4.0


def test_linear_endpoints_and_midpoint():
    s = LinearTemperature(4.0, 1.0, 100)
    assert s.temperature == 4.0  # before any step: epoch 0
    assert s.step(0) == 4.0
    assert s.step(50) == 2.5
    assert s.step(25) == 3.25
    assert s.step(100) == 1.0
    assert s.step(250) == 1.0
    # increasing too, endpoints exact even where start + (end - start) rounds
    assert 3.7 + (0.9 - 3.7) != 0.9
    assert LinearTemperature(3.7, 0.9, 3).step(3) == 0.9
    s = LinearTemperature(0.1, 0.7, 3)
    assert s.step(0) == 0.1 and s.step(3) == 0.7
    values = [s.step(e) for e in np.linspace(0, 3, 31)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_cosine_endpoints_and_midpoint():
    s = CosineTemperature(4.0, 1.0, 240)
    assert s.temperature == 4.0 and s.step(0) == 4.0
    assert s.step(120) == pytest.approx(2.5, abs=1e-15)
    assert s.step(60) == pytest.approx(1.0 + 3.0 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert s.step(240) == 1.0 and s.step(1000) == 1.0
    values = [s.step(e) for e in range(241)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    # 0.7 + (0.1 - 0.7) != 0.1 in floating point: the endpoint is still exact
    s = CosineTemperature(0.1, 0.7, 7)
    assert s.step(0) == 0.1 and s.step(7) == 0.7


def test_cosine_is_dts_without_adaptation_clamp_and_momentum():
    dts = DTS(4.0, 1e-9, 4.0, total_epochs=240, adaptive=False, momentum=0.0)
    s = CosineTemperature(4.0, 1e-300, 240)
    for e in (1, 30, 60, 90, 119):
        assert s.step(e) == pytest.approx(dts.update(e, 1.0, 1.0), rel=1e-15)


def test_step():
    s = StepTemperature(4.0, 0.5, 30, min_temperature=1.0)
    assert s.temperature == 4.0
    assert [s.step(e) for e in (0, 29, 29.9, 30, 59, 60, 89, 90, 1000)] == \
        [4.0, 4.0, 4.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    s = StepTemperature(8.0, 0.9, 1, min_temperature=0.5)
    assert s.step(10) == 8.0 * 0.9 ** 10
    assert s.step(10 ** 6) == 0.5  # no underflow to 0
    assert StepTemperature(3.0, 1.0, 5).step(100) == 3.0


@pytest.mark.parametrize("cls, kwargs, exc, name", [
    (ConstantTemperature, dict(temperature=0.0), ValueError, "temperature"),
    (ConstantTemperature, dict(temperature=math.nan), ValueError, "temperature"),
    (ConstantTemperature, dict(temperature="4"), TypeError, "temperature"),
    (LinearTemperature, dict(start=-1.0, end=1.0, total_epochs=10), ValueError, "start"),
    (LinearTemperature, dict(start=4.0, end=0.0, total_epochs=10), ValueError, "end"),
    (LinearTemperature, dict(start=4.0, end=1.0, total_epochs=0), ValueError,
     "total_epochs"),
    (LinearTemperature, dict(start=4.0, end=1.0, total_epochs=None), TypeError,
     "total_epochs"),
    (CosineTemperature, dict(start=math.inf, end=1.0, total_epochs=10), ValueError,
     "start"),
    (CosineTemperature, dict(start=4.0, end=1.0, total_epochs=-3), ValueError,
     "total_epochs"),
    (StepTemperature, dict(initial=0.0, gamma=0.5, step_size=3), ValueError, "initial"),
    (StepTemperature, dict(initial=4.0, gamma=0.0, step_size=3), ValueError, "gamma"),
    (StepTemperature, dict(initial=4.0, gamma=1.5, step_size=3), ValueError, "gamma"),
    (StepTemperature, dict(initial=4.0, gamma=0.5, step_size=0), ValueError,
     "step_size"),
    (StepTemperature, dict(initial=4.0, gamma=0.5, step_size=3, min_temperature=0.0),
     ValueError, "min_temperature"),
    (StepTemperature, dict(initial=4.0, gamma=0.5, step_size=3, min_temperature=5.0),
     ValueError, "min_temperature"),
    (WeightWarmup, dict(warmup=-1), ValueError, "warmup"),
    (WeightWarmup, dict(warmup=math.inf), ValueError, "warmup"),
    (WeightWarmup, dict(warmup="20"), TypeError, "warmup"),
])
def test_bad_constructor_arguments(cls, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        cls(**kwargs)


@pytest.mark.parametrize("make", [
    lambda: ConstantTemperature(2.0),
    lambda: LinearTemperature(4.0, 1.0, 10),
    lambda: CosineTemperature(4.0, 1.0, 10),
    lambda: StepTemperature(4.0, 0.5, 3),
])
def test_drop_in_for_dts(make):
    s = make()
    expected = s.temperature_at(3)
    # every form of DTS.update / update_from_logits is accepted, statistics ignored
    assert s.update(3, 0.5, 2.0) == expected
    assert s.update(3, teacher_ce_sum=1.0, student_ce_sum=2.0, count=4) == expected
    assert s.update(3) == expected
    x = np.zeros((2, 3))
    assert s.update_from_logits(3, x, x, np.zeros(2, dtype=np.int64)) == expected
    assert s.temperature == expected and s.last_epoch == 3.0
    with pytest.raises(ValueError, match="epoch"):
        s.step(-1)
    with pytest.raises(TypeError, match="epoch"):
        s.step("1")
    assert s.temperature == expected
    # state round trip (JSON-safe)
    state = json.loads(json.dumps(s.state_dict()))
    fresh = make()
    fresh.load_state_dict(state)
    assert fresh.temperature == s.temperature and fresh.last_epoch == 3.0
    assert fresh.step(7) == s.step(7)
    assert type(s).__name__ in repr(s)
    with pytest.raises(ValueError):
        fresh.load_state_dict({"version": 2, "config": {}, "temperature": 1.0,
                               "epoch": None})


def test_schedule_state_restores_config():
    a = LinearTemperature(4.0, 1.0, 10)
    a.step(5)
    b = LinearTemperature(9.0, 2.0, 100)
    b.load_state_dict(a.state_dict())
    assert b.temperature == 2.5 and b.step(10) == 1.0


# ---------------------------------------------------------------------------
# DKD weight warm-up

def test_weight_warmup():
    w = WeightWarmup()
    assert w.warmup == 20
    assert [w.weight(e) for e in (0, 1, 10, 19, 20, 21, 240)] == \
        [0.0, 1 / 20, 0.5, 19 / 20, 1.0, 1.0, 1.0]
    assert w(10) == 0.5
    assert WeightWarmup(0).weight(0) == 1.0
    assert WeightWarmup(5).weight(2.5) == 0.5
    with pytest.raises(ValueError, match="epoch"):
        w.weight(-1)
    other = WeightWarmup(3)
    other.load_state_dict(json.loads(json.dumps(w.state_dict())))
    assert other.warmup == 20 and repr(other) == "WeightWarmup(warmup=20.0)"


def test_exported_from_package():
    for name in ("ConstantTemperature", "LinearTemperature", "CosineTemperature",
                 "StepTemperature", "WeightWarmup", "AnnealingSchedule"):
        assert hasattr(kdtemp, name), name
