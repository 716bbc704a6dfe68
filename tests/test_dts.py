"""DTS: the C update rule against its Python twin, the spec's numbers, and the
scheduler class (statistics, all-reduce, state, history, argument checking)."""
import json
import math
import os
import pickle
import random
import re
import struct
import sys
import threading

import numpy as np
import pytest

import kdtemp
from kdtemp import _kdtemp
from kdtemp.dts import DTS, ce_pair
from kdtemp.reference.dts import ce_pair as ref_ce_pair
from kdtemp.reference.dts import dts_update as ref_update

sys.path.insert(0, os.path.dirname(__file__))
from isa_builds import each_build  # noqa: E402

DEFAULTS = dict(initial_temperature=4.0, min_temperature=2.0, max_temperature=4.0,
                total_epochs=240.0, curve_shape=1.0, momentum=0.9, scale_cap=1.35,
                gap_eps=0.0, adaptive=1)
ORDER = ("initial_temperature", "min_temperature", "max_temperature", "total_epochs",
         "curve_shape", "momentum", "scale_cap", "gap_eps", "adaptive")


def params(**kw):
    p = dict(DEFAULTS, **kw)
    return tuple(p[k] for k in ORDER)


def bits(x):
    return struct.pack("<d", x)


def c_update(*args):
    return _kdtemp.dts_update(*args)


def same(a, b):
    """Bitwise equality of two (new_temperature, target) pairs."""
    return all(bits(x) == bits(y) for x, y in zip(a, b)) and len(a) == len(b) == 2


# ---------------------------------------------------------------------------
# the C rule and its twin

def test_binding_exists():
    assert hasattr(_kdtemp, "dts_update")


def _random_case(rng):
    t_min = rng.uniform(0.1, 5.0)
    t_max = t_min + rng.choice([0.0, rng.uniform(0.0, 10.0)])
    gap_eps = rng.choice([0.0, 1e-4, rng.uniform(0.0, 1.0)])
    p = (rng.uniform(0.1, 10.0), t_min, t_max,
         rng.choice([1.0, 240.0, 14.0, rng.uniform(0.5, 500.0)]),
         rng.choice([1.0, 0.0, rng.uniform(0.0, 3.0)]),
         rng.choice([0.0, 0.9, rng.uniform(0.0, 0.999)]),
         rng.choice([1.35, 1.5, rng.uniform(0.5, 3.0)]), gap_eps, rng.randint(0, 1))
    temperature = rng.uniform(0.1, 12.0)
    epoch = rng.choice([rng.randint(0, 600), rng.uniform(0.0, 600.0)])
    ce_t = rng.choice([rng.uniform(0.0, 8.0), 0.0, 1.0])
    # gaps on and around the scale's break points, and d + 1 + gap_eps == 0
    ce_s = rng.choice([rng.uniform(0.0, 8.0), ce_t + 1.0, ce_t + 2.0, ce_t + 1.5,
                       ce_t + 0.5, ce_t + 1.0 + gap_eps, ce_t - 1.0,
                       ce_t + rng.uniform(0.9, 2.1)])
    return p, temperature, epoch, ce_t, ce_s


def test_c_matches_twin_bitwise_random():
    rng = random.Random(12345)
    for _ in range(20000):
        args = _random_case(rng)
        assert same(c_update(*args), ref_update(*args)), args


def test_c_matches_twin_bitwise_numpy_sweep():
    # a dense sweep over gap and epoch with the vision recipe, adaptive on and off
    for adaptive in (0, 1):
        p = params(adaptive=adaptive, momentum=0.5, min_temperature=1.0,
                   max_temperature=8.0)
        for epoch in (0, 1, 7, 60, 119, 120, 121, 239, 240, 241, 480):
            for g in np.linspace(-3.0, 6.0, 181):
                args = (p, 3.3, epoch, 0.25, 0.25 + float(g))
                assert same(c_update(*args), ref_update(*args)), args


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("which", ["teacher", "student"])
def test_c_and_twin_reject_nonfinite_statistics(bad, which):
    ce = [1.0, 2.0]
    ce[0 if which == "teacher" else 1] = bad
    for f in (c_update, ref_update):
        with pytest.raises(ValueError):
            f(params(), 3.0, 5, *ce)


@pytest.mark.parametrize("override, temperature, epoch", [
    (dict(total_epochs=0.0), 3.0, 1.0),
    (dict(total_epochs=-5.0), 3.0, 1.0),
    (dict(min_temperature=5.0, max_temperature=4.0), 3.0, 1.0),
    (dict(momentum=math.nan), 3.0, 1.0),
    (dict(initial_temperature=math.inf), 3.0, 1.0),
    (dict(gap_eps=math.nan), 3.0, 1.0),
    ({}, math.nan, 1.0),
    ({}, math.inf, 1.0),
    ({}, 3.0, math.nan),
    ({}, 3.0, math.inf),
    (dict(total_epochs=1e-300), 3.0, 1e300),  # c * pi * e / E overflows
])
def test_c_and_twin_reject_bad_arguments(override, temperature, epoch):
    for f in (c_update, ref_update):
        with pytest.raises(ValueError):
            f(params(**override), temperature, epoch, 1.0, 2.0)


def test_huge_finite_statistics_stay_finite():
    # d overflows to -inf: inf / inf is NaN, which leaves the target unscaled
    for args in [(params(), 3.0, 10, -1e308, 1e308), (params(), 3.0, 10, 1e308, -1e308),
                 (params(), 3.0, 10, 0.0, 1e308)]:
        r = c_update(*args)
        assert same(r, ref_update(*args))
        assert all(math.isfinite(x) for x in r)


# ---------------------------------------------------------------------------
# the spec's numbers

def test_spec_simulated_trajectory():
    # adaptive off, T0=4, Tmin=2, Tmax=4, E=240, 391 updates per epoch
    dts = DTS(4.0, 2.0, 4.0, total_epochs=240, adaptive=False)
    after = {}
    for epoch in range(1, 241):
        for _ in range(391):
            dts.update(epoch, teacher_ce=0.5, student_ce=3.0)
        after[epoch] = dts.temperature
    expected = {1: 4.00, 30: 3.85, 60: 3.41, 90: 2.77, 120: 2.00}
    for epoch, value in expected.items():
        assert round(after[epoch], 2) == value, (epoch, after[epoch])
    for epoch in range(120, 241):
        assert round(after[epoch], 2) == 2.00
    # and strictly decreasing from epoch 1 to 120
    traj = [after[e] for e in range(1, 121)]
    assert all(a > b for a, b in zip(traj, traj[1:]))
    h = dts.history
    assert len(h["step"]) == 240 * 391
    # the same trajectory from the twin, bit for bit
    t = 4.0
    p = params(adaptive=0)
    for i in range(len(h["step"])):
        t, target = ref_update(p, t, h["epoch"][i], 0.5, 3.0)
        assert bits(t) == bits(h["temperature"][i].item())
        assert bits(target) == bits(h["target"][i].item())


def _scale(g, *, scale_cap=1.35, gap_eps=0.0):
    """target / (T0 * cosine) for a gap g = ceS - ceT, with a wide clamp,
    cosine = 1 (curve_shape 0) and T0 = 1, so the target is the scale itself."""
    p = params(initial_temperature=1.0, min_temperature=1e-6, max_temperature=1e6,
               curve_shape=0.0, momentum=0.0, scale_cap=scale_cap, gap_eps=gap_eps)
    new_t, target = c_update(p, 3.0, 10, 0.0, float(g))
    assert bits(new_t) == bits(target)  # momentum 0
    assert same((new_t, target), ref_update(p, 3.0, 10, 0.0, float(g)))
    return target


@pytest.mark.parametrize("g", [-5.0, -1.0, -0.5, 0.0, 0.3, 0.5, 0.9, 0.999999])
def test_scale_none_below_gap_one(g):
    assert _scale(g) == 1.0


@pytest.mark.parametrize("g", [1.0 + 1e-9, 1.01, 1.2, 1.5, 1.8, 1.999999])
def test_scale_capped_between_one_and_two(g):
    assert _scale(g) == 1.35
    assert _scale(g, scale_cap=1.5) == 1.5


@pytest.mark.parametrize("g", [2.0, 2.000001, 2.5, 3.0, 4.0, 10.0, 1000.0])
def test_scale_g_over_g_minus_one_from_two(g):
    assert _scale(g) == g / (g - 1.0)
    assert 1.0 < _scale(g) <= 2.0


def test_scale_not_monotonic():
    # the reference behaviour: 1.35 just below g = 2, 2.0 at g = 2
    assert _scale(1.99) == 1.35 and _scale(2.0) == 2.0 and _scale(3.0) == 1.5


def test_zero_denominator_gives_capped_scale():
    # g = 1, gap_eps = 0: d + 1 == 0
    assert _scale(1.0) == 1.35
    # g = 1.5, gap_eps = 0.5: d + 1 + gap_eps == -1.5 + 1 + 0.5 == 0
    assert _scale(1.5, gap_eps=0.5) == 1.35
    assert _scale(1.5, gap_eps=0.5, scale_cap=1.7) == 1.7
    # through the class as well, with the default clamp and momentum
    dts = DTS(total_epochs=240, gap_eps=0.5, min_temperature=1.0, max_temperature=8.0)
    t = dts.update(120, teacher_ce=0.0, student_ce=1.5)  # cosine 0.5
    assert dts.history["target"][-1] == 4.0 * 0.5 * 1.35
    assert t == 0.9 * 4.0 + (1.0 - 0.9) * (4.0 * 0.5 * 1.35)
    assert math.isfinite(t)


def test_gap_eps_moves_the_break_point():
    # with gap_eps = 1e-4, g = 1 is below the break point 1 + gap_eps: no scaling
    assert _scale(1.0, gap_eps=1e-4) == 1.0
    assert _scale(1.001, gap_eps=1e-4) == 1.35


def test_clamp():
    # cosine at epoch 0 is 1: target T0 = 6 above Tmax = 5 -> 5
    p = params(initial_temperature=6.0, min_temperature=2.0, max_temperature=5.0,
               momentum=0.0, adaptive=0)
    assert c_update(p, 3.0, 0, 1.0, 1.0) == (5.0, 5.0)
    # at the end of the cosine the target 0 is below Tmin -> 2
    assert c_update(p, 3.0, 240, 1.0, 1.0) == (2.0, 2.0)
    # scaled up beyond Tmax: clamped after the scale
    p = params(initial_temperature=4.0, max_temperature=4.5, momentum=0.0)
    assert c_update(p, 3.0, 0, 0.0, 3.0) == (4.5, 4.5)  # 4 * 1.5 = 6 -> 4.5
    # in range: untouched
    p = params(initial_temperature=4.0, min_temperature=1.0, max_temperature=8.0,
               momentum=0.0, adaptive=0)
    assert c_update(p, 3.0, 120, 1.0, 1.0) == (2.0, 2.0)  # 4 * 0.5, exact


@pytest.mark.parametrize("m", [0.0, 0.5, 0.9, 0.99])
def test_momentum(m):
    dts = DTS(4.0, 1.0, 8.0, total_epochs=100, momentum=m)
    t_prev = dts.temperature
    rng = random.Random(1)
    for step in range(50):
        t = dts.update(step % 100 + 1, teacher_ce=rng.uniform(0, 2),
                       student_ce=rng.uniform(0, 5))
        target = dts.history["target"][-1]
        assert t == m * t_prev + (1.0 - m) * target
        t_prev = t


# ---------------------------------------------------------------------------
# the class: statistics

def test_temperature_starts_at_t0_and_reading_does_not_update():
    dts = DTS(3.0, 1.0, 3.0, total_epochs=14)
    assert dts.temperature == 3.0 and isinstance(dts.temperature, float)
    for _ in range(3):
        assert dts.temperature == 3.0
    assert dts.num_updates == 0
    t = dts.update(5, 1.0, 1.2)
    assert t == dts.temperature != 3.0 and dts.num_updates == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_statistics_raise_and_leave_state(bad):
    dts = DTS(total_epochs=240)
    dts.update(1, 1.0, 2.0)
    before = (dts.temperature, dts.num_updates, dts.state_dict())
    calls = [
        lambda: dts.update(2, bad, 2.0),
        lambda: dts.update(2, 1.0, bad),
        lambda: dts.update(2, teacher_ce_sum=bad, student_ce_sum=1.0, count=4),
        lambda: dts.update(2, teacher_ce_sum=1.0, student_ce_sum=bad, count=4),
        lambda: dts.update(2, teacher_ce_sum=1.0, student_ce_sum=1.0, count=bad),
        lambda: dts.update(2, np.float32(bad), 2.0),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
        assert (dts.temperature, dts.num_updates, dts.state_dict()) == before


def test_nonfinite_after_all_reduce_raises():
    dts = DTS(total_epochs=240, all_reduce=lambda a: a * np.inf)
    with pytest.raises(ValueError, match="all_reduce"):
        dts.update(2, teacher_ce_sum=1.0, student_ce_sum=1.0, count=4)
    assert dts.temperature == 4.0 and dts.num_updates == 0


def test_sums_and_count_equal_means():
    rng = random.Random(7)
    a, b = DTS(total_epochs=50), DTS(total_epochs=50)
    for step in range(300):
        n = rng.randint(1, 300)
        st, ss = rng.uniform(0, 3) * n, rng.uniform(0, 6) * n
        ta = a.update(step // 10 + 1, teacher_ce_sum=st, student_ce_sum=ss, count=n)
        tb = b.update(step // 10 + 1, teacher_ce=st / n, student_ce=ss / n)
        assert bits(ta) == bits(tb)
    assert a.state_dict() == b.state_dict()
    assert np.array_equal(a.history["teacher_ce"], b.history["teacher_ce"])


def test_zero_count_is_a_no_op():
    dts = DTS(total_epochs=50)
    dts.update(1, 1.0, 3.0)
    t = dts.temperature
    assert dts.update(2, teacher_ce_sum=0.0, student_ce_sum=0.0, count=0) == t
    assert dts.temperature == t and dts.num_updates == 1
    assert len(dts.history["step"]) == 1


class FakeGroup:
    """Sum-all-reduce across threads that stand for data-parallel ranks; the sum
    is taken in rank order, as a real collective does deterministically."""

    def __init__(self, world_size):
        self.slots = [None] * world_size
        self.barrier = threading.Barrier(world_size, timeout=30)
        self.calls = 0

    def hook(self, rank):
        def all_reduce(stats):
            assert isinstance(stats, np.ndarray) and stats.dtype == np.float64
            assert stats.shape == (3,)
            self.slots[rank] = stats.copy()
            self.barrier.wait()
            total = self.slots[0].copy()
            for s in self.slots[1:]:
                total = total + s
            self.barrier.wait()  # everyone has read before the next round
            if rank == 0:
                self.calls += 1
            return total
        return all_reduce


def _run_ranks(group, dtss, work):
    errors = []

    def target(rank):
        try:
            work(rank, dtss[rank])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(len(dtss))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]


def test_all_reduce_two_ranks_match_concatenated_batch():
    rng = np.random.default_rng(3)
    steps = 200
    counts = rng.integers(0, 64, size=(steps, 2))
    counts[5] = (0, 17)  # a rank with no counted rows
    sums_t = rng.uniform(0.0, 2.0, size=(steps, 2)) * counts
    sums_s = rng.uniform(0.0, 5.0, size=(steps, 2)) * counts
    group = FakeGroup(2)
    ranks = [DTS(total_epochs=20, all_reduce=group.hook(r)) for r in range(2)]

    def work(rank, dts):
        for i in range(steps):
            dts.update(i // 10 + 1, teacher_ce_sum=sums_t[i, rank],
                       student_ce_sum=sums_s[i, rank], count=int(counts[i, rank]))

    _run_ranks(group, ranks, work)
    assert group.calls == steps
    single = DTS(total_epochs=20)
    for i in range(steps):
        single.update(i // 10 + 1, teacher_ce_sum=sums_t[i, 0] + sums_t[i, 1],
                      student_ce_sum=sums_s[i, 0] + sums_s[i, 1],
                      count=int(counts[i, 0] + counts[i, 1]))
    assert bits(ranks[0].temperature) == bits(ranks[1].temperature)
    assert bits(ranks[0].temperature) == bits(single.temperature)
    for k in ("temperature", "teacher_ce", "student_ce", "target"):
        assert np.array_equal(ranks[0].history[k], single.history[k])
        assert np.array_equal(ranks[1].history[k], single.history[k])
    # and the ranks did not see the same local data
    assert not np.array_equal(sums_t[:, 0], sums_t[:, 1])


def test_all_reduce_with_means_averages_the_ranks():
    group = FakeGroup(2)
    ranks = [DTS(total_epochs=20, all_reduce=group.hook(r)) for r in range(2)]
    means = [(0.5, 2.0), (1.0, 3.5)]

    def work(rank, dts):
        dts.update(3, *means[rank])

    _run_ranks(group, ranks, work)
    single = DTS(total_epochs=20)
    single.update(3, (0.5 + 1.0) / 2, (2.0 + 3.5) / 2)
    assert ranks[0].temperature == ranks[1].temperature == single.temperature


def test_all_reduce_result_checked_and_torch_accepted():
    with pytest.raises(ValueError, match="shape"):
        DTS(total_epochs=5, all_reduce=lambda a: a[:2]).update(1, 1.0, 2.0)
    with pytest.raises(ValueError, match="count"):
        DTS(total_epochs=5, all_reduce=lambda a: -a).update(1, 1.0, 2.0)
    torch = pytest.importorskip("torch")
    dts = DTS(total_epochs=5, all_reduce=lambda a: torch.from_numpy(a) * 2)
    ref = DTS(total_epochs=5)
    assert dts.update(1, teacher_ce_sum=1.0, student_ce_sum=3.0, count=2) == \
        ref.update(1, teacher_ce_sum=2.0, student_ce_sum=6.0, count=4)


def test_statistics_accept_numpy_and_torch_scalars():
    ref = DTS(total_epochs=10)
    t_ref = ref.update(2, 0.75, 2.5)
    values = [(np.float64(0.75), np.float64(2.5)), (np.float32(0.75), np.float32(2.5)),
              (np.array(0.75), np.array(2.5))]
    torch = pytest.importorskip("torch")
    values.append((torch.tensor(0.75), torch.tensor(2.5, dtype=torch.float64)))
    for ct, cs in values:
        assert DTS(total_epochs=10).update(np.int64(2), ct, cs) == t_ref
    # sums and counts as tensors / NumPy integers
    t = DTS(total_epochs=10).update(2, teacher_ce_sum=torch.tensor(1.5),
                                    student_ce_sum=torch.tensor(5.0),
                                    count=torch.tensor(2))
    assert t == t_ref
    assert DTS(total_epochs=10).update(2, teacher_ce_sum=np.float64(1.5),
                                       student_ce_sum=5, count=np.int32(2)) == t_ref


@pytest.mark.parametrize("bad, exc", [
    (True, TypeError), ("1.0", TypeError), (np.array([1.0, 2.0]), TypeError),
    (None, TypeError), (1 + 2j, TypeError),
])
def test_statistics_bad_types(bad, exc):
    dts = DTS(total_epochs=10)
    with pytest.raises(exc, match="teacher_ce"):
        dts.update(1, bad, 1.0)
    assert dts.num_updates == 0


def test_update_argument_errors():
    dts = DTS(total_epochs=10)
    with pytest.raises(TypeError, match="not both"):
        dts.update(1, 1.0, 2.0, count=3)
    with pytest.raises(TypeError, match="student_ce_sum"):
        dts.update(1, teacher_ce_sum=1.0, count=3)
    with pytest.raises(TypeError, match="count"):
        dts.update(1, teacher_ce_sum=1.0, student_ce_sum=2.0)
    with pytest.raises(TypeError, match="student_ce"):
        dts.update(1, 1.0)
    with pytest.raises(TypeError, match="teacher_ce"):
        dts.update(1)
    with pytest.raises(ValueError, match="count"):
        dts.update(1, teacher_ce_sum=1.0, student_ce_sum=2.0, count=-1)
    with pytest.raises(ValueError, match="epoch"):
        dts.update(-1, 1.0, 2.0)
    with pytest.raises(ValueError, match="epoch"):
        dts.update(math.nan, 1.0, 2.0)
    with pytest.raises(TypeError, match="epoch"):
        dts.update("3", 1.0, 2.0)
    assert dts.num_updates == 0 and dts.temperature == 4.0


# ---------------------------------------------------------------------------
# update_from_logits

def _np_ce_sum(logits, labels, ignore_index=-100, mask=None):
    z = np.asarray(logits, dtype=np.float64)
    keep = labels != ignore_index
    if mask is not None:
        keep &= mask
    zmax = z.max(axis=1, keepdims=True)
    lse = (np.log(np.exp(z - zmax).sum(axis=1)) + zmax[:, 0])
    rows = np.nonzero(keep)[0]
    return float((lse[rows] - z[rows, labels[rows]]).sum()), int(keep.sum())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_update_from_logits_matches_numpy_ce(dtype):
    rng = np.random.default_rng(0)
    n, c = 37, 11
    student = rng.normal(size=(n, c)).astype(dtype) * 3
    teacher = rng.normal(size=(n, c)).astype(dtype) * 3
    labels = rng.integers(0, c, size=n)
    labels[[2, 5, 30]] = -100
    dts = DTS(total_epochs=10, min_temperature=1.0, max_temperature=8.0)
    t = dts.update_from_logits(3, student, teacher, labels)
    ss, n_s = _np_ce_sum(student, labels)
    st, _ = _np_ce_sum(teacher, labels)
    assert n_s == n - 3
    h = dts.history
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert h["student_ce"][0] == pytest.approx(ss / n_s, rel=tol)
    assert h["teacher_ce"][0] == pytest.approx(st / n_s, rel=tol)
    ref = DTS(total_epochs=10, min_temperature=1.0, max_temperature=8.0)
    assert t == pytest.approx(
        ref.update(3, teacher_ce=st / n_s, student_ce=ss / n_s), rel=tol)


def test_update_from_logits_ignore_index_and_all_ignored():
    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))
    labels = rng.integers(0, 5, size=8)
    labels[:3] = 7
    dts = DTS(total_epochs=10)
    dts.update_from_logits(1, student, teacher, labels, ignore_index=7)
    ss, n_s = _np_ce_sum(student, labels, ignore_index=7)
    assert n_s == 5
    assert dts.history["student_ce"][0] == pytest.approx(ss / n_s, rel=1e-12)
    t = dts.temperature
    assert dts.update_from_logits(2, student, teacher, np.full(8, 7), ignore_index=7) == t
    assert dts.num_updates == 1


def test_update_from_logits_passes_sums_to_all_reduce(monkeypatch):
    seen = []

    def fake_ce_pair(student, teacher, labels, mask, ignore_index, check_finite, n_threads):
        seen.append((ignore_index, check_finite, n_threads, mask))
        return float(np.sum(teacher)), float(np.sum(student)), 4

    monkeypatch.setattr(_kdtemp, "ce_pair", fake_ce_pair)
    reduced = []
    dts = DTS(total_epochs=10, all_reduce=lambda a: (reduced.append(a.copy()), a)[1])
    dts.update_from_logits(1, np.full((4, 2), 1.0), np.full((4, 2), 0.5),
                           np.zeros(4, dtype=np.int64), n_threads=2)
    assert reduced[0].tolist() == [4.0, 8.0, 4.0]  # teacher sum, student sum, count
    assert seen == [(-100, True, 2, None)]


# ---------------------------------------------------------------------------
# the fused statistics kernel (kdtemp.dts.ce_pair, kd_ce_pair in csrc/kd_impl.h)

def _two_ce_loss(student, teacher, labels, **kw):
    """What update_from_logits computed before the fused kernel: two ce_loss calls."""
    kw = dict(kw, reduction="sum", compute_grad=False)
    s = kdtemp.ce_loss(student, labels, **kw)
    t = kdtemp.ce_loss(teacher, labels, **kw)
    assert s.count == t.count
    return t.loss, s.loss, s.count


def _pair_inputs(shape, dtype, seed=0):
    """Logits with -inf entries (every 5th class, never a label), ~20% ignored rows."""
    rng = np.random.default_rng(seed)
    n, c = shape
    student = (rng.normal(size=shape) * 3).astype(dtype)
    teacher = (rng.normal(size=shape) * 3 + 1).astype(dtype)
    student[:, ::5] = -np.inf
    teacher[:, 1::5] = -np.inf
    labels = 5 * rng.integers(0, max(1, (c - 3) // 5), size=n) + 2
    labels[labels >= c] = c - 1
    labels[rng.random(n) < 0.2] = -100
    return student, teacher, labels


TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-6}


@pytest.mark.parametrize("shape", [(1, 3), (37, 11), (129, 1001), (3, 20011)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ce_pair_equals_two_ce_loss_calls(shape, dtype):
    student, teacher, labels = _pair_inputs(shape, dtype)
    labels[0] = shape[1] - 1  # at least one counted row
    mask = np.arange(shape[0]) % 7 != 3
    tol = TOL[np.dtype(dtype)]
    other = np.where(labels == -100, 7777, labels)  # another ignore_index
    for y, kw in ((labels, {}), (labels, {"mask": mask}), (other, {"ignore_index": 7777})):
        got = ce_pair(student, teacher, y, **kw)
        want = _two_ce_loss(student, teacher, y, **kw)
        assert type(got[0]) is float and type(got[1]) is float and type(got[2]) is int
        assert got[2] == want[2]
        assert got[0] == pytest.approx(want[0], rel=tol, abs=1e-300)
        assert got[1] == pytest.approx(want[1], rel=tol, abs=1e-300)
        # the NumPy twin, written from the formula in float64
        twin = ref_ce_pair(student, teacher, y, **kw)
        assert twin[2] == got[2]
        assert got[0] == pytest.approx(twin[0], rel=tol, abs=1e-300)
        assert got[1] == pytest.approx(twin[1], rel=tol, abs=1e-300)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ce_pair_long_rows_in_blocks(dtype):
    """Rows read block by block (16 KiB blocks): whole blocks -inf, the max in
    the last partial block, a +1e4 block beside -1e4 ones; student and teacher
    of different lengths."""
    rng = np.random.default_rng(11)
    student = (rng.normal(size=(4, 12293)) * 3).astype(dtype)
    teacher = (rng.normal(size=(4, 9001)) * 3).astype(dtype)
    student[0, :8192] = -np.inf
    teacher[1, -1] = 60.0
    student[2, :4096] = rng.uniform(9000, 1e4, size=4096)
    student[2, 4096:] = rng.uniform(-1e4, -9000, size=12293 - 4096)
    labels = np.array([8500, 8999, 100, 4000])
    got = ce_pair(student, teacher, labels)
    want = ref_ce_pair(student, teacher, labels)
    tol = TOL[np.dtype(dtype)]
    assert got[2] == want[2] == 4
    assert got[0] == pytest.approx(want[0], rel=tol)
    assert got[1] == pytest.approx(want[1], rel=tol)
    student[3, -5] = np.nan
    with pytest.raises(ValueError, match="student"):
        ce_pair(student, teacher, labels)


def test_ce_pair_token_shaped_and_strided():
    """(B, L, V) logits with (B, L) labels, and non-contiguous views, as ce_loss."""
    rng = np.random.default_rng(3)
    student = rng.normal(size=(2, 5, 17))
    teacher = rng.normal(size=(2, 5, 17))
    labels = rng.integers(0, 17, size=(2, 5))
    labels[1, 2] = -100
    got = ce_pair(student, teacher, labels)
    assert got[2] == 9
    want = _two_ce_loss(student, teacher, labels)
    assert got == pytest.approx(want, rel=1e-12)
    wide = rng.normal(size=(10, 40))
    got = ce_pair(wide[:, ::2], wide[:, 1::2][:, :17], labels.reshape(-1))
    want = _two_ce_loss(wide[:, ::2], wide[:, 1::2][:, :17], labels.reshape(-1))
    assert got == pytest.approx(want, rel=1e-12)


def test_ce_pair_different_class_counts_and_dtypes():
    rng = np.random.default_rng(4)
    student, teacher = rng.normal(size=(9, 7)), rng.normal(size=(9, 12))
    labels = rng.integers(0, 7, size=9)
    assert ce_pair(student, teacher, labels) == pytest.approx(
        _two_ce_loss(student, teacher, labels), rel=1e-12)
    # mixed dtypes: both in float64 (the float32 values converted exactly)
    t32 = teacher.astype(np.float32)
    got = ce_pair(student, t32, labels)
    want = _two_ce_loss(student, t32.astype(np.float64), labels)
    assert got == want


def test_ce_pair_edge_rows():
    # all rows skipped, an empty batch: zero sums and count
    z = np.zeros((3, 4))
    assert ce_pair(z, z, np.full(3, -100)) == (0.0, 0.0, 0)
    assert ce_pair(np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0, np.int64)) == (0.0, 0.0, 0)
    # uniform rows: log C each
    t, s, n = ce_pair(z, z, np.arange(3))
    assert n == 3 and s == t == pytest.approx(3 * math.log(4), rel=1e-15)
    # an all -inf row that is skipped is never read
    v = np.zeros((3, 4))
    v[1] = -np.inf
    labels = np.array([0, -100, 2])
    assert ce_pair(z, v, labels)[2] == 2
    assert ce_pair(z, v, np.arange(3), mask=np.array([True, False, True]))[2] == 2
    # a label on a -inf logit: an infinite CE (update then rejects the sum)
    v[0, 0] = -np.inf
    t, s, n = ce_pair(z, v, labels)
    assert t == math.inf and math.isfinite(s) and n == 2
    with pytest.raises(ValueError, match="teacher_ce_sum"):
        DTS(total_epochs=10).update_from_logits(1, z, v, labels)
    # large logits: no overflow
    big = np.array([[1e4, -1e4, 0.0]])
    assert ce_pair(big, big, np.array([1]))[0] == pytest.approx(2e4, rel=1e-15)
    # check_finite=False lets NaN through
    zn = z.copy()
    zn[2, 1] = np.nan
    t, s, n = ce_pair(zn, z, np.arange(3), check_finite=False)
    assert math.isnan(s) and math.isfinite(t)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(64, 5000), (129, 1001), (5, 20011)],
                         ids=lambda s: "x".join(map(str, s)))
def test_ce_pair_thread_count_is_bitwise_invisible(dtype, shape):
    student, teacher, labels = _pair_inputs(shape, dtype, seed=5)
    mask = np.arange(shape[0]) % 4 != 1
    first = ce_pair(student, teacher, labels, mask=mask, n_threads=1)
    assert first[2] > 0 and all(math.isfinite(x) for x in first[:2])
    for n in (2, 3, None, -1):
        assert [bits(x) for x in ce_pair(student, teacher, labels, mask=mask,
                                         n_threads=n)[:2]] == [bits(x) for x in first[:2]]


def test_ce_pair_isa_builds_agree():
    """Each build: the same bits for 1 and 2 threads; the builds (FMA in the
    AVX2/AVX-512 exps, sixteen lanes in AVX-512) agree to rounding."""
    def runs():
        r = [[ce_pair(*_pair_inputs((33, 1003), dt, seed=6), n_threads=n)
              for dt in (np.float32, np.float64)] for n in (1, 2)]
        assert r[0] == r[1], _kdtemp.isa()
        return r[0]

    out = each_build(runs)
    if len(out) < 2:
        pytest.skip("only the baseline build runs on this machine")
    for isa, fast in out.items():
        for (fs, ft, fn), (bs, bt, bn), rtol in zip(fast, out["baseline"], (1e-6, 1e-14)):
            assert fn == bn, isa
            assert fs == pytest.approx(bs, rel=rtol) and ft == pytest.approx(bt, rel=rtol), isa


def test_update_from_logits_is_one_kernel_call(monkeypatch):
    """Both statistics from one fused call: no ce_loss (kd_forward) call at all."""
    calls = []
    real = _kdtemp.ce_pair

    def counting(*args):
        calls.append(args)
        return real(*args)

    def forbidden(*args, **kw):
        raise AssertionError("update_from_logits must not call the ce_loss kernel")

    monkeypatch.setattr(_kdtemp, "ce_pair", counting)
    monkeypatch.setattr(_kdtemp, "kd_forward", forbidden)
    student, teacher, labels = _pair_inputs((40, 23), np.float32, seed=7)
    dts = DTS(total_epochs=10, min_temperature=1.0, max_temperature=8.0)
    dts.update_from_logits(2, student, teacher, labels, ignore_index=-100, n_threads=2)
    assert len(calls) == 1
    assert calls[0][0] is student and calls[0][1] is teacher


def _raises(call, exc, pattern):
    with pytest.raises(exc) as info:
        call()
    assert re.search(pattern, str(info.value)), str(info.value)
    return str(info.value)


def test_ce_pair_bad_inputs_name_the_argument():
    rng = np.random.default_rng(8)
    z, v = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    y = np.arange(6) % 5
    dts = DTS(total_epochs=10)
    for call in (lambda *a, **k: ce_pair(*a, **k),
                 lambda *a, **k: dts.update_from_logits(1, *a, **k)):
        zn = z.copy()
        zn[3, 1] = np.nan
        vn = v.copy()
        vn[2, 4] = np.inf
        _raises(lambda: call(zn, v, y), ValueError, r"`student` has NaN or \+inf in row 3")
        _raises(lambda: call(z, vn, y), ValueError, r"`teacher` has NaN or \+inf in row 2")
        # the order of two ce_loss calls: the student's rows before the teacher's
        _raises(lambda: call(zn, vn, y), ValueError, r"`student` .* row 3")
        vi = v.copy()
        vi[4] = -np.inf
        _raises(lambda: call(z, vi, y), ValueError, r"`teacher` row 4 is all -inf")
        zi = z.copy()
        zi[5] = -np.inf
        _raises(lambda: call(zi, vi, y), ValueError, r"`student` row 5 is all -inf")
        # labels before any logit
        yb = y.copy()
        yb[4] = 5
        _raises(lambda: call(zn, vn, yb), ValueError,
                r"`labels` must be in \[0, 5\) .* got 5 at row 4")
        _raises(lambda: call(z, v[:, :3], y), ValueError, r"`labels` must be in \[0, 3\)")
        _raises(lambda: call(z, v, None), ValueError, "`labels` are required")
        _raises(lambda: call(z, v, y.astype(float)), TypeError, "`labels`")
        _raises(lambda: call(z, v, y[:5]), ValueError, "`labels`")
        _raises(lambda: call(z, v[:5], y), ValueError, "`labels`")
        _raises(lambda: call(z, v, y, mask=np.ones(5, bool)), ValueError, "`mask`")
        _raises(lambda: call(z, v, y, mask=np.ones(6)), TypeError, "`mask`")
        _raises(lambda: call(z.astype(np.int32), v, y), TypeError, "`student`")
        _raises(lambda: call(z, v.astype(np.int32), y), TypeError, "`teacher`")
        _raises(lambda: call(z, np.zeros((6, 0)), y), ValueError, "`teacher`")
        _raises(lambda: call(z[0, 0], v, y), ValueError, "`student`")
        _raises(lambda: call(z, v, y, n_threads=0), ValueError, "n_threads")
    assert dts.num_updates == 0 and dts.temperature == 4.0
    # the binding checks what the wrapper does not
    _raises(lambda: _kdtemp.ce_pair(z, v.astype(np.float32), y, None, -100, True, 1),
            TypeError, "same dtype")
    _raises(lambda: _kdtemp.ce_pair(z, v[:5], y, None, -100, True, 1), ValueError,
            "`teacher` has 5 rows but `student` has 6")
    _raises(lambda: _kdtemp.ce_pair(z, v, None, None, -100, True, 1), ValueError, "`labels`")
    _raises(lambda: _kdtemp.ce_pair(z, v, y.astype(np.int32), None, -100, True, 1),
            TypeError, "`labels`")
    _raises(lambda: _kdtemp.ce_pair(z, v, y, None, -100, True, 0), ValueError, "n_threads")
    _raises(lambda: _kdtemp.ce_pair([1.0], v, y, None, -100, True, 1), TypeError, "`student`")


def test_ce_pair_reference_twin_raises_alike():
    z, v = np.zeros((4, 3)), np.zeros((4, 3))
    y = np.arange(4) % 3
    zn = z.copy()
    zn[1, 1] = np.nan
    vn = v.copy()
    vn[0, 0] = np.nan
    for f in (ce_pair, ref_ce_pair):
        _raises(lambda: f(zn, vn, y), ValueError, "`student`")
        _raises(lambda: f(z, vn, y), ValueError, "`teacher`")
        _raises(lambda: f(zn, vn, np.array([0, 1, 2, 3])), ValueError, "`labels`")
        _raises(lambda: f(z, v, None), ValueError, "`labels`")
        assert f(zn, z, y, mask=np.array([True, False, True, True]))[2] == 3


# ---------------------------------------------------------------------------
# state and history

def _drive(dts, rng, steps, epoch0=1):
    for i in range(steps):
        dts.update(epoch0 + i // 25, teacher_ce=rng.uniform(0, 2),
                   student_ce=rng.uniform(0, 6))


def test_state_dict_round_trip_resumes_bitwise():
    full = DTS(total_epochs=30, momentum=0.8, gap_eps=1e-4)
    _drive(full, random.Random(5), 300)

    first = DTS(total_epochs=30, momentum=0.8, gap_eps=1e-4)
    _drive(first, random.Random(5), 150)
    state = json.loads(json.dumps(first.state_dict()))  # plain Python types
    rng_state_after_150 = random.Random(5)
    _drive(DTS(total_epochs=30), rng_state_after_150, 150)  # advance the rng

    resumed = DTS(total_epochs=999)  # the config comes back from the state
    resumed.load_state_dict(state)
    assert resumed.total_epochs == 30.0 and resumed.momentum == 0.8
    assert bits(resumed.temperature) == bits(first.temperature)
    _drive(resumed, rng_state_after_150, 150, epoch0=1 + 150 // 25)
    assert bits(resumed.temperature) == bits(full.temperature)
    assert resumed.num_updates == full.num_updates == 300
    for k, v in full.history.items():
        assert np.array_equal(resumed.history[k], v), k
    assert resumed.state_dict() == full.state_dict()


def test_state_dict_with_torch_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    dts = DTS(total_epochs=30)
    _drive(dts, random.Random(2), 40)
    path = tmp_path / "ckpt.pt"
    torch.save({"dts": dts.state_dict()}, path)
    state = torch.load(path, weights_only=True)["dts"]
    other = DTS(total_epochs=30)
    other.load_state_dict(state)
    assert other.state_dict() == dts.state_dict()
    assert pickle.loads(pickle.dumps(dts.state_dict())) == dts.state_dict()


def test_load_state_dict_rejects_bad_states():
    dts = DTS(total_epochs=30)
    _drive(dts, random.Random(2), 5)
    good = dts.state_dict()
    with pytest.raises(TypeError):
        dts.load_state_dict([1, 2])
    for mutate, match in [
        (lambda s: s.pop("temperature"), "temperature"),
        (lambda s: s.update(version=99), "version"),
        (lambda s: s["config"].update(momentum=1.5), "momentum"),
        (lambda s: s["config"].pop("gap_eps"), "gap_eps"),
        (lambda s: s.update(temperature=math.nan), "temperature"),
        (lambda s: s["history"]["epoch"].pop(), "length"),
        (lambda s: s.update(num_updates=-1), "num_updates"),
    ]:
        bad = json.loads(json.dumps(good))
        mutate(bad)
        with pytest.raises(ValueError, match=match):
            dts.load_state_dict(bad)
        assert dts.state_dict() == good


def test_history_arrays():
    dts = DTS(4.0, 2.0, 4.0, total_epochs=20, momentum=0.7)
    rng = random.Random(9)
    stats = [(rng.uniform(0, 2), rng.uniform(0, 6)) for _ in range(60)]
    epochs = [1 + i // 3 for i in range(60)]
    for e, (ct, cs) in zip(epochs, stats):
        dts.update(e, ct, cs)
    h = dts.history
    assert set(h) == {"step", "epoch", "teacher_ce", "student_ce", "target",
                      "temperature"}
    assert h["step"].dtype == np.int64
    assert np.array_equal(h["step"], np.arange(60))
    for k in ("epoch", "teacher_ce", "student_ce", "target", "temperature"):
        assert h[k].dtype == np.float64 and h[k].shape == (60,)
    assert np.array_equal(h["epoch"], np.array(epochs, dtype=float))
    assert np.array_equal(h["teacher_ce"], [s[0] for s in stats])
    assert np.array_equal(h["student_ce"], [s[1] for s in stats])
    assert np.all((h["target"] >= 2.0) & (h["target"] <= 4.0))
    assert h["temperature"][-1] == dts.temperature
    prev = np.concatenate([[4.0], h["temperature"][:-1]])
    assert np.array_equal(h["temperature"], 0.7 * prev + (1 - 0.7) * h["target"])
    # a copy: mutating it does not touch the scheduler
    h["temperature"][:] = 0
    assert dts.history["temperature"][-1] == dts.temperature


def test_record_history_off():
    dts = DTS(total_epochs=20, record_history=False)
    ref = DTS(total_epochs=20)
    for i in range(10):
        assert dts.update(1, 0.5, 2.5 + i) == ref.update(1, 0.5, 2.5 + i)
    assert dts.num_updates == 10 and len(dts.history["step"]) == 0
    assert dts.state_dict()["num_updates"] == 10


# ---------------------------------------------------------------------------
# constructor checks

@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(initial_temperature=0.0), ValueError, "initial_temperature"),
    (dict(initial_temperature=-1.0), ValueError, "initial_temperature"),
    (dict(initial_temperature=math.nan), ValueError, "initial_temperature"),
    (dict(initial_temperature=math.inf), ValueError, "initial_temperature"),
    (dict(initial_temperature="4"), TypeError, "initial_temperature"),
    (dict(initial_temperature=True), TypeError, "initial_temperature"),
    (dict(min_temperature=0.0), ValueError, "min_temperature"),
    (dict(min_temperature=math.nan), ValueError, "min_temperature"),
    (dict(min_temperature=None), TypeError, "min_temperature"),
    (dict(max_temperature=-2.0), ValueError, "max_temperature"),
    (dict(max_temperature=math.inf), ValueError, "max_temperature"),
    (dict(min_temperature=3.0, max_temperature=2.0), ValueError, "min_temperature"),
    (dict(total_epochs=0), ValueError, "total_epochs"),
    (dict(total_epochs=-10), ValueError, "total_epochs"),
    (dict(total_epochs=math.inf), ValueError, "total_epochs"),
    (dict(total_epochs=None), TypeError, "total_epochs"),
    (dict(curve_shape=-1.0), ValueError, "curve_shape"),
    (dict(curve_shape=math.nan), ValueError, "curve_shape"),
    (dict(momentum=1.0), ValueError, "momentum"),
    (dict(momentum=-0.1), ValueError, "momentum"),
    (dict(momentum=math.nan), ValueError, "momentum"),
    (dict(momentum="0.9"), TypeError, "momentum"),
    (dict(adaptive=1), TypeError, "adaptive"),
    (dict(adaptive="yes"), TypeError, "adaptive"),
    (dict(scale_cap=0.0), ValueError, "scale_cap"),
    (dict(scale_cap=math.inf), ValueError, "scale_cap"),
    (dict(gap_eps=-1e-4), ValueError, "gap_eps"),
    (dict(gap_eps=math.nan), ValueError, "gap_eps"),
    (dict(all_reduce=3), TypeError, "all_reduce"),
    (dict(record_history=1), TypeError, "record_history"),
])
def test_constructor_rejects_bad_arguments(kwargs, exc, name):
    kw = dict(total_epochs=240)
    kw.update(kwargs)
    with pytest.raises(exc, match=name):
        DTS(**kw)


def test_total_epochs_is_required_and_keyword_only():
    with pytest.raises(TypeError):
        DTS()
    with pytest.raises(TypeError):
        DTS(4.0, 2.0, 4.0, 240)


def test_constructor_accepts_numpy_scalars_and_recipes():
    dts = DTS(np.float32(4.0), np.int64(1), 8, total_epochs=np.int32(300),
              scale_cap=1.5, adaptive=np.bool_(True))
    assert dts.initial_temperature == 4.0 and dts.min_temperature == 1.0
    assert dts.total_epochs == 300.0 and dts.adaptive is True
    for recipe in [(4, 2, 4), (3, 1, 3), (2, 1, 3), (4, 1, 8)]:
        assert DTS(*recipe, total_epochs=10).temperature == recipe[0]


def test_repr():
    dts = DTS(3.0, 1.0, 3.0, total_epochs=14, gap_eps=1e-4)
    r = repr(dts)
    for piece in ("DTS(", "initial_temperature=3.0", "min_temperature=1.0",
                  "max_temperature=3.0", "total_epochs=14.0", "gap_eps=0.0001",
                  "temperature=3.0", "updates=0"):
        assert piece in r


def test_exported_from_package():
    assert kdtemp.DTS is DTS
