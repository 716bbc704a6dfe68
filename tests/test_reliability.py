"""Reliability: bad inputs, sizes beyond 32-bit indexing, concurrency, fork, leaks.

- every case of the bad-input registry (tests/bad_inputs.py) raises what it must,
  and docs/bad_inputs.md is the table those cases generate;
- N x C > 2**31 elements (row-stride-0 views) and row offsets beyond 2**31
  elements (a sparse memory-mapped file) compute what the small inputs compute;
- many Python threads calling the kernels at once get the serial results bit for
  bit (the kernels release the GIL);
- a fork after the OpenMP pool has started (multiprocessing, a DataLoader worker)
  does not hang;
- 10,000 calls of each public function, on success and error paths, do not grow
  the process (RSS, allocated Python blocks), and inputs keep their reference counts;
- regression tests of the kernel bugs found by fuzz/fuzz_kd.c (fuzz/README.md).

Environment: KDTEMP_TEST_LEAK_CALLS overrides the 10,000 calls (the sanitizer
run lowers it); KDTEMP_TEST_SKIP_HUGE=1 skips the > 2**31-element computations
(seconds of work natively, minutes under ASan/valgrind).
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import kdtemp

sys.path.insert(0, os.path.dirname(__file__))
import bad_inputs  # noqa: E402
import edge_rows  # noqa: E402
from isa_builds import NAMES, builds, each_build, using  # noqa: E402

import kdtemp.reference  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEAK_CALLS = int(os.environ.get("KDTEMP_TEST_LEAK_CALLS", "10000"))
SKIP_HUGE = os.environ.get("KDTEMP_TEST_SKIP_HUGE") == "1"

try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None


def _rng(seed=0):
    return np.random.default_rng(seed)


def _logits(shape, dtype=np.float64, seed=0):
    return _rng(seed).normal(size=shape).astype(dtype)


# ---------------------------------------------------------------------------------
# bad inputs


@pytest.mark.parametrize("case", bad_inputs.CASES, ids=[c.id for c in bad_inputs.CASES])
def test_bad_input_registry(case):
    if case.needs_torch and torch is None:
        pytest.skip("needs torch")
    with pytest.raises(case.exc) as info:
        case.call()
    assert re.search(case.match, str(info.value)), (
        f"message does not name {case.match!r}: {info.value}")


@pytest.mark.skipif(torch is None, reason="the committed table includes the torch cases")
def test_bad_input_table_is_current():
    """docs/bad_inputs.md is what tools/bad_input_table.py generates from the tests."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import bad_input_table

    with open(bad_input_table.OUT, encoding="utf-8") as f:
        current = f.read()
    assert current == bad_input_table.render(bad_input_table.collect()), (
        "docs/bad_inputs.md is out of date: run `python tools/bad_input_table.py`")


# ---------------------------------------------------------------------------------
# sizes beyond 32-bit indexing


def _repeat_rows(row, n):
    """A read-only (n, C) view of one row (row stride 0): no memory per row."""
    v = np.lib.stride_tricks.as_strided(row, shape=(n, row.size), strides=(0, row.itemsize))
    v.flags.writeable = False
    return v


@pytest.mark.skipif(SKIP_HUGE, reason="KDTEMP_TEST_SKIP_HUGE=1")
def test_more_than_2_31_elements():
    """N x C = 2**31 + 1024 elements (float32, stride-0 rows): the sums, counts and
    per-row results equal those of one row; no index arithmetic overflows."""
    C = 1024
    n = 2**31 // C + 1
    assert n * C > 2**31
    z_row, v_row = _logits(C, np.float32, 1), _logits(C, np.float32, 2)
    z, v = _repeat_rows(z_row, n), _repeat_rows(v_row, n)

    # every core (explicitly: torch.set_num_threads(1) in conftest also sets the
    # OpenMP default of the libgomp that torch and kdtemp share)
    cores = os.cpu_count() or 2
    one = kdtemp.kd_loss(z_row[None], v_row[None], compute_grad=False)
    big = kdtemp.kd_loss(z, v, compute_grad=False, n_threads=cores)
    assert big.count == n and big.grad is None
    assert big.loss == pytest.approx(one.loss, rel=1e-9)  # 2M equal terms summed in order

    lse = kdtemp.sharpness(z, 2.0, n_threads=cores)
    assert lse.shape == (n,) and np.all(lse == kdtemp.sharpness(z_row[None], 2.0)[0])


def _sparse_memmap(path, n_elements, dtype):
    """A file-backed array of n_elements (tens of GiB) that uses disk only where
    written, or None where the file system does not make sparse files."""
    try:
        mm = np.memmap(path, dtype=dtype, mode="w+", shape=(n_elements,))
    except (OSError, ValueError, OverflowError):
        return None
    if os.stat(path).st_blocks * 512 > 64 * 2**20:
        del mm
        return None
    return mm


def _strided_rows(mm, rows, C, gap):
    return np.lib.stride_tricks.as_strided(mm, shape=(rows, C), strides=(gap * mm.itemsize,
                                                                          mm.itemsize))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_offsets_beyond_2_31_elements(tmp_path, dtype):
    """Rows 2**31 + 64 elements apart (row i at offset i * (2**31 + 64), in a sparse
    file): inputs and `out` are addressed in 64 bits; results equal a compact copy."""
    rows, C, gap = 3, 96, 2**31 + 64
    size = (rows - 1) * gap + C
    mz = _sparse_memmap(tmp_path / "z.bin", size, dtype)
    mo = _sparse_memmap(tmp_path / "out.bin", size, dtype)
    if mz is None or mo is None:
        pytest.skip("no sparse files here")
    z = _strided_rows(mz, rows, C, gap)
    out = _strided_rows(mo, rows, C, gap)
    z[:] = _logits((rows, C), dtype, 3)
    zc = np.ascontiguousarray(z)
    v = _logits((rows, C), dtype, 4)
    y = np.arange(rows) % C

    r, rc = kdtemp.kd_loss(z, v, out=out, labels=y, ce_weight=0.5), kdtemp.kd_loss(
        zc, v, labels=y, ce_weight=0.5)
    assert r.loss == rc.loss and np.array_equal(out, rc.grad)
    for f in (lambda a, **k: kdtemp.dkd_loss(a, v, y, **k),
              lambda a, **k: kdtemp.atkd_loss(a, v, **k),
              lambda a, **k: kdtemp.annealing_loss(a, v, 0.7, **k)):
        r, rc = f(z, out=out), f(zc)
        assert r.loss == rc.loss and np.array_equal(out, rc.grad)
    assert np.array_equal(kdtemp.softmax(z, 2.0, out=out), kdtemp.softmax(zc, 2.0))
    assert np.array_equal(kdtemp.sharpness(z), kdtemp.sharpness(zc))
    # in place, on the far rows
    expect = kdtemp.kd_loss(zc, v).grad
    kdtemp.kd_loss(z, v, out=z)
    assert np.array_equal(z, expect)
    del z, out, mz, mo


# ---------------------------------------------------------------------------------
# concurrency: the GIL is released around the kernels


def _concurrent_calls():
    """name -> function(inputs) -> tuple of results, each comparable bit for bit."""
    def res(r):
        return (np.float64(r.loss), r.grad, r.count)

    return {
        "kd_loss": lambda z, v, y: res(kdtemp.kd_loss(z, v, n_threads=2)),
        "kd_loss_jsd_ce": lambda z, v, y: res(kdtemp.kd_loss(
            z, v, divergence="jsd", labels=y, ce_weight=0.3, n_threads=1)),
        "atkd_loss": lambda z, v, y: res(kdtemp.atkd_loss(z, v, scale="T2", n_threads=2)),
        "dkd_loss": lambda z, v, y: res(kdtemp.dkd_loss(z, v, y, n_threads=2)),
        "annealing_loss": lambda z, v, y: res(kdtemp.annealing_loss(z, v, 0.6, n_threads=2)),
        "softmax": lambda z, v, y: (kdtemp.softmax(z, 3.0, n_threads=2),),
        "log_softmax": lambda z, v, y: (kdtemp.log_softmax(z, 0.5, n_threads=1),),
        "sharpness": lambda z, v, y: (kdtemp.sharpness(z, 2.0, n_threads=2),),
        "row_stats": lambda z, v, y: tuple(
            getattr(kdtemp.row_stats(z, 2.0, y, n_threads=2), k)
            for k in ("sharpness", "entropy", "top1_prob", "argmax", "ce")),
        "temperature_profile": lambda z, v, y: (
            kdtemp.temperature_profile(z, v, [1.0, 4.0], n_threads=2).kd_loss,),
        "dts_ce_pair": lambda z, v, y: kdtemp.dts.ce_pair(z, v, y, n_threads=2),
        "kd_loss_in_place": lambda z, v, y: (lambda zz: (kdtemp.kd_loss(
            zz, v, out=zz, n_threads=2).loss, zz))(z.copy()),
    }


def _same(a, b):
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    return a == b or (a != a and b != b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threads_get_serial_results(dtype):
    """8 Python threads, each running every kernel on its own inputs in a shuffled
    order (some with 2 OpenMP threads each), get exactly the serial results."""
    calls = _concurrent_calls()
    inputs = [(_logits((96, 512), dtype, s), _logits((96, 512), dtype, 100 + s),
               np.arange(96) % 512) for s in range(8)]
    serial = {(name, s): f(*inputs[s]) for name, f in calls.items() for s in range(8)}
    tasks = [(name, s) for name in calls for s in range(8) for _ in range(3)]
    _rng(7).shuffle(tasks)
    barrier = threading.Barrier(8)

    def run(chunk):
        barrier.wait()  # start together
        return [(t, calls[t[0]](*inputs[t[1]])) for t in chunk]

    with ThreadPoolExecutor(max_workers=8) as ex:
        parts = list(ex.map(run, [tasks[k::8] for k in range(8)], timeout=300))
    for part in parts:
        for key, got in part:
            want = serial[key]
            assert len(got) == len(want)
            for a, b in zip(got, want):
                assert _same(a, b), key


def test_shared_scheduler_reads_are_consistent():
    """Reading a scheduler's temperature from other threads while one thread
    updates it always sees a value the schedule produced (attribute reads are
    atomic). Updating one DTS from several threads at once is not supported:
    see the class docs; each training loop owns its scheduler."""
    d = kdtemp.DTS(total_epochs=50, record_history=False)
    seen = set()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            seen.add(d.temperature)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    produced = {d.temperature}
    for k in range(3000):
        produced.add(d.update(1 + k % 50, 1.0, 1.5 + (k % 7) * 0.3))
    stop.set()
    for t in readers:
        t.join(60)
    assert seen <= produced


# ---------------------------------------------------------------------------------
# fork after the OpenMP pool has started

_FORK_Z = _logits((256, 512), np.float32, 11)
_FORK_V = _logits((256, 512), np.float32, 12)


def _child_kd(q):
    r = kdtemp.kd_loss(_FORK_Z, _FORK_V, n_threads=2)
    q.put(float(r.loss))


def _start_pool():
    """Run a parallel region in this process (2 threads: above the size threshold)."""
    return float(kdtemp.kd_loss(_FORK_Z, _FORK_V, n_threads=2).loss)


# libgomp is not fork-safe: a child that starts a team of >1 threads after the parent
# did hangs. The binding's pthread_atfork child handler makes every kernel call in a
# forked child serial (csrc/_kdtemp_module.c, check_threads).


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def _run_forked(target, n_children=1, timeout=30.0):
    """Fork ``n_children`` processes running ``target(queue)``; fail the test if
    any is still alive after ``timeout`` s (killing it) or exits non-zero, else
    return what each put on the queue."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(q,)) for _ in range(n_children)]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
        hung = [p.pid for p in procs if p.is_alive()]
        assert not hung, f"forked children {hung} hung"
        assert all(p.exitcode == 0 for p in procs)
        return [q.get(timeout=5) for _ in procs]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)


def test_fork_after_openmp_pool_does_not_hang():
    expect = _start_pool()
    assert _run_forked(_child_kd, n_children=2, timeout=15) == [expect, expect]


_DATALOADER_SCRIPT = r"""
import numpy as np, torch, kdtemp
z = np.random.default_rng(11).normal(size=(256, 512)).astype(np.float32)

class DS(torch.utils.data.Dataset):  # items run a parallel kernel (soft labels in a worker)
    def __len__(self):
        return 4
    def __getitem__(self, i):
        return float(kdtemp.softmax(z, 2.0, n_threads=2)[i].sum())

kdtemp.softmax(z, 2.0, n_threads=2)  # the parent's OpenMP pool is started
loader = torch.utils.data.DataLoader(DS(), batch_size=2, num_workers=2,
                                     multiprocessing_context="fork", timeout=10)
print(sum(float(b.sum()) for b in loader))
"""


@pytest.mark.skipif(torch is None, reason="needs torch")
def test_dataloader_fork_workers_do_not_hang():
    """A torch DataLoader with fork workers that call kdtemp, in a fresh interpreter
    (killed with its workers if it hangs)."""
    import signal
    import subprocess

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-c", _DATALOADER_SCRIPT], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    try:
        out, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail("the DataLoader run hung")
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # any worker left behind
        except ProcessLookupError:
            pass
    assert p.returncode == 0, err[-2000:]
    assert np.isfinite(float(out.split()[-1]))


def _threads_child(q):
    """In a forked child: the OS threads of this process around a 4-thread request."""
    tasks = lambda: len(os.listdir("/proc/self/task"))  # noqa: E731
    before = tasks()
    r = kdtemp.kd_loss(_FORK_Z, _FORK_V, n_threads=4)
    kdtemp.set_num_threads(4)
    reported = (kdtemp.get_num_threads(), kdtemp._kdtemp.effective_threads(4),
                kdtemp._kdtemp.in_forked_child())
    q.put((before, tasks(), reported, float(r.loss)))  # the Queue's feeder thread starts here


@pytest.mark.skipif(not hasattr(os, "fork") or not os.path.isdir("/proc/self/task"),
                    reason="needs fork and /proc/self/task")
def test_fork_child_really_runs_one_thread():
    """An OpenMP team would leave its threads in /proc/self/task (the pool stays);
    a forked child asked for 4 threads stays single-threaded and says so."""
    expect = _start_pool()
    assert kdtemp._kdtemp.in_forked_child() is False
    [(before, after, reported, loss)] = _run_forked(_threads_child)
    assert (before, after) == (1, 1)
    assert reported == (1, 1, True)
    assert loss == expect


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_with_one_thread_works():
    """An explicit n_threads=1 in a forked worker works too."""
    _start_pool()
    assert _run_forked(_serial_child, timeout=60) == [_start_pool()]


def _serial_child(q):
    q.put(float(kdtemp.kd_loss(_FORK_Z, _FORK_V, n_threads=1).loss))


# ---------------------------------------------------------------------------------
# leaks and reference counts


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _leak_inputs():
    """Inputs large enough (16 x 64 float64, 8 KiB) that a leaked copy per call shows."""
    z, v = _logits((16, 64), seed=21), _logits((16, 64), seed=22)
    y = np.arange(16, dtype=np.int64) % 64
    return z, v, y


def _leak_cases():
    """(name, callable) pairs: every public function, on a success and an error path.
    An error path raises after the binding has parsed (and allocated) what it needs."""
    z, v, y = _leak_inputs()
    z32, v32 = z.astype(np.float32), v.astype(np.float32)
    t_rows = np.full(16, 2.0)
    mask = np.arange(16) % 3 != 0
    out = np.empty_like(z)
    z_nan = z.copy()
    z_nan[-1, -1] = np.nan
    t_bad = t_rows.copy()
    t_bad[-1] = -1.0
    y_bad = y.copy()
    y_bad[-1] = 64
    dts = kdtemp.DTS(total_epochs=10, record_history=False)
    cos = kdtemp.CosineTemperature(4.0, 1.0, 10)
    ann = kdtemp.AnnealingSchedule(10, phase1_epochs=10, phase2_epochs=5)
    ww = kdtemp.WeightWarmup(20)
    cases = [
        ("kd_loss", lambda: kdtemp.kd_loss(z, v, temperature=t_rows, labels=y, ce_weight=0.1,
                                           mask=mask, out=out)),
        ("kd_loss f32 none", lambda: kdtemp.kd_loss(z32, v32, divergence="jsd",
                                                    reduction="none")),
        ("kd_loss err: NaN row", lambda: kdtemp.kd_loss(z_nan, v, out=out)),
        ("kd_loss err: temperature row", lambda: kdtemp.kd_loss(z, v, temperature=t_bad)),
        ("kd_loss err: label", lambda: kdtemp.kd_loss(z, v, labels=y_bad, ce_weight=1.0)),
        ("kd_loss err: dtype", lambda: kdtemp.kd_loss(z, v32)),
        ("ce_loss", lambda: kdtemp.ce_loss(z, y, label_smoothing=0.1)),
        ("ce_loss err", lambda: kdtemp.ce_loss(z, y_bad)),
        ("softmax", lambda: kdtemp.softmax(z, t_rows)),
        ("softmax out", lambda: kdtemp.softmax(z, 2.0, out=out)),
        ("softmax err", lambda: kdtemp.softmax(z_nan)),
        ("log_softmax", lambda: kdtemp.log_softmax(z32, 3.0)),
        ("log_softmax err", lambda: kdtemp.log_softmax(z, t_bad)),
        ("atkd_loss", lambda: kdtemp.atkd_loss(z, v, return_temperatures=True, labels=y,
                                               ce_weight=0.1)),
        ("atkd_loss err", lambda: kdtemp.atkd_loss(z, v, eps=-1.0)),
        ("atkd_loss err: NaN", lambda: kdtemp.atkd_loss(z, z_nan)),
        ("sharpness", lambda: kdtemp.sharpness(z, t_rows)),
        ("sharpness err", lambda: kdtemp.sharpness(z_nan)),
        ("sharpness_gap", lambda: kdtemp.sharpness_gap(z, v, mask=mask)),
        ("sharpness_gap approx", lambda: kdtemp.sharpness_gap(z, v, approximate=True)),
        ("dkd_loss", lambda: kdtemp.dkd_loss(z, v, y, mask=mask, out=out)),
        ("dkd_loss err", lambda: kdtemp.dkd_loss(z, v, y_bad)),
        ("annealing_loss", lambda: kdtemp.annealing_loss(z, v, 0.5, reduction="mean")),
        ("annealing_loss err", lambda: kdtemp.annealing_loss(z_nan, v, 0.5)),
        ("row_stats", lambda: kdtemp.row_stats(z, 2.0, y, mask=mask)),
        ("row_stats err", lambda: kdtemp.row_stats(z, 2.0, y_bad)),
        ("temperature_profile", lambda: kdtemp.temperature_profile(z, v, [1.0, 2.0, 4.0])),
        ("temperature_profile err", lambda: kdtemp.temperature_profile(z, v, [1.0, -2.0])),
        # a bisection: ~100 sharpness calls each, so a tenth of the calls
        ("match_sharpness", lambda: kdtemp.match_sharpness(z, v), 10),
        ("flsw_temperature", lambda: kdtemp.flsw_temperature(z, v, 4.0, beta=1.0, gamma=2.0)),
        ("cwsm_temperature", lambda: kdtemp.cwsm_temperature(z, v, 4.0, beta=1.0)),
        ("flsw_temperature err", lambda: kdtemp.flsw_temperature(z_nan, v, 4.0, beta=1.0,
                                                                 gamma=2.0)),
        ("DTS.update", lambda: dts.update(3, 1.0, 2.0)),
        ("DTS.update err", lambda: dts.update(3, np.nan, 2.0)),
        ("DTS.update_from_logits", lambda: dts.update_from_logits(3, z, v, y)),
        ("DTS state_dict round trip", lambda: dts.load_state_dict(dts.state_dict())),
        ("CosineTemperature.step", lambda: cos.step(3)),
        ("AnnealingSchedule.phi", lambda: ann.phi(3)),
        ("WeightWarmup.weight", lambda: ww.weight(3)),
        ("get_num_threads", kdtemp.get_num_threads),
    ]
    if torch is not None:
        import kdtemp.torch as kt

        tz, tv = torch.from_numpy(z), torch.from_numpy(v)

        def torch_backward():
            s = tz.clone().requires_grad_(True)
            kt.kd_loss(s, tv, temperature=2.0).backward()

        cases += [
            ("torch.kd_loss backward", torch_backward, 4),
            ("torch.kd_loss err", lambda: kt.kd_loss(tz, tv, temperature=0.0)),
        ]
    return [c if len(c) == 3 else (*c, 1) for c in cases]


def _call(f):
    try:
        return f()
    except (TypeError, ValueError):
        return None


@pytest.mark.parametrize("name,f,divisor", _leak_cases(), ids=[c[0] for c in _leak_cases()])
def test_no_leak_over_many_calls(name, f, divisor):
    """LEAK_CALLS calls do not grow the resident set or the number of allocated Python
    blocks beyond noise (a leaked 8 KiB copy per call would be 80 MB; a leaked object
    per call, 10,000 blocks)."""
    if LEAK_CALLS == 0:
        pytest.skip("KDTEMP_TEST_LEAK_CALLS=0 (sanitizer runs: ASan's quarantine grows RSS)")
    for _ in range(300):  # warm up caches, free lists and arenas
        _call(f)
    gc.collect()
    calls = LEAK_CALLS // divisor
    rss0, blocks0 = _rss_bytes(), sys.getallocatedblocks()
    for _ in range(calls):
        _call(f)
    gc.collect()
    d_rss, d_blocks = _rss_bytes() - rss0, sys.getallocatedblocks() - blocks0
    # a leaked object per call would be `calls` blocks; caches (torch's
    # autograd, numpy's) settle at a few hundred
    assert d_blocks < max(500, calls // 5), f"{d_blocks} Python blocks more after {calls} calls"
    assert d_rss < 8 * 2**20, f"RSS grew {d_rss / 2**20:.1f} MiB over {calls} calls"


def _refcount_cases():
    """(name, inputs, call(inputs), raises): inputs whose reference counts are watched."""
    z, v, y = _leak_inputs()
    t = np.full(16, 2.0)
    m = np.ones(16, bool)
    out = np.empty_like(z)
    nan = z.copy()
    nan[3, 3] = np.nan
    bad_t = t.copy()
    bad_t[5] = 0.0
    return [
        ("kd_loss", (z, v, t, y, m, out),
         lambda z, v, t, y, m, o: kdtemp.kd_loss(z, v, temperature=t, labels=y, mask=m, out=o,
                                                 ce_weight=0.2), False),
        ("kd_loss in place", (z.copy(), v),
         lambda s, v: kdtemp.kd_loss(s, v, out=s), False),
        ("kd_loss NaN", (nan, v, out), lambda z, v, o: kdtemp.kd_loss(z, v, out=o), True),
        ("kd_loss bad temperature", (z, v, bad_t),
         lambda z, v, t: kdtemp.kd_loss(z, v, temperature=t), True),
        ("kd_loss bad dtype", (z, v.astype(np.float32)), lambda z, v: kdtemp.kd_loss(z, v), True),
        ("softmax", (z, t, out), lambda z, t, o: kdtemp.softmax(z, t, out=o), False),
        ("softmax NaN", (nan, t), lambda z, t: kdtemp.softmax(z, t), True),
        ("atkd_loss", (z, v, y), lambda z, v, y: kdtemp.atkd_loss(
            z, v, labels=y, ce_weight=0.1, return_temperatures=True), False),
        ("dkd_loss", (z, v, y, m), lambda z, v, y, m: kdtemp.dkd_loss(z, v, y, mask=m), False),
        ("dkd_loss bad label", (z, v, np.full(16, 99)), lambda z, v, y: kdtemp.dkd_loss(z, v, y),
         True),
        ("annealing_loss", (z, v, y), lambda z, v, y: kdtemp.annealing_loss(z, v, 0.5, labels=y),
         False),
        ("sharpness", (z, t), lambda z, t: kdtemp.sharpness(z, t), False),
        ("row_stats", (z, t, y, m), lambda z, t, y, m: kdtemp.row_stats(z, t, y, mask=m), False),
        ("temperature_profile", (z, v, np.array([1.0, 3.0])),
         lambda z, v, T: kdtemp.temperature_profile(z, v, T), False),
        ("temperature_profile bad", (z, v, np.array([1.0, np.nan])),
         lambda z, v, T: kdtemp.temperature_profile(z, v, T), True),
    ]


@pytest.mark.parametrize("name,inputs,call,raises", _refcount_cases(),
                         ids=[c[0] for c in _refcount_cases()])
def test_input_refcounts_unchanged(name, inputs, call, raises):
    before = [sys.getrefcount(a) for a in inputs]
    for _ in range(50):
        try:
            r = call(*inputs)
        except (TypeError, ValueError):
            assert raises
        else:
            assert not raises
            del r
    gc.collect()
    after = [sys.getrefcount(a) for a in inputs]
    assert after == before


# ---------------------------------------------------------------------------------
# regression tests for the kernel bugs the fuzzer found (fuzz/README.md)


def _finite_grad(r):
    return r.grad is not None and bool(np.isfinite(r.grad).all())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dkd_non_target_all_neginf(dtype):
    inf = np.inf
    y = np.array([0])
    # student: no non-target mass where the teacher has some -> NCKD = +inf
    r = kdtemp.dkd_loss(np.array([[5.0, -inf, -inf]], dtype), np.array([[1.0, 2.0, 3.0]], dtype),
                        y, temperature=1.0)
    assert r.loss == np.inf and _finite_grad(r)
    # teacher: all mass on the target -> NCKD = 0, loss = alpha T^2 TCKD = -alpha log pS_y
    z = np.array([[5.0, 1.0, 2.0]], dtype)
    r = kdtemp.dkd_loss(z, np.array([[1.0, -inf, -inf]], dtype), y, temperature=1.0,
                        alpha=1.0, beta=8.0)
    p = np.exp(z[0] - np.logaddexp.reduce(z[0].astype(np.float64)))
    assert r.loss == pytest.approx(-np.log(p[0]), rel=1e-5)
    assert _finite_grad(r)
    np.testing.assert_allclose(r.grad[0], p - [1, 0, 0], rtol=1e-4, atol=1e-6)


def test_dkd_zero_weight_does_not_cancel_the_other_term():
    z = np.array([[-np.inf, 1.0, 2.0]])
    v = np.array([[3.0, 2.0, 1.0]])
    y = np.array([0])
    expect = kdtemp.kd_loss(z[:, 1:], v[:, 1:], temperature=1.0).loss  # beta * NCKD, T = 1
    r = kdtemp.dkd_loss(z, v, y, temperature=1.0, alpha=0.0, beta=1.0)
    assert r.loss == pytest.approx(expect, rel=1e-12)


def test_label_smoothing_one_with_neginf_target_logit():
    z = np.array([[-np.inf, 1.0, 2.0]])
    y = np.array([0])
    assert kdtemp.ce_loss(z, y, label_smoothing=1.0).loss == np.inf  # q uniform, p_0 = 0
    assert kdtemp.ce_loss(z, y, label_smoothing=0.9).loss == np.inf


@pytest.mark.parametrize("dtype,t", [(np.float32, 1e-40), (np.float64, 1e-310)])
def test_tiny_temperature_is_refused_or_finite(dtype, t):
    z = _logits((2, 5), dtype, 31)
    v = _logits((2, 5), dtype, 32)
    for f in (lambda: kdtemp.kd_loss(z, v, temperature=t),
              lambda: kdtemp.softmax(z, t),
              lambda: kdtemp.sharpness(z, t)):
        try:
            r = f()
        except ValueError as e:
            assert "temperature" in str(e)
            continue
        arrays = [r.loss, r.grad] if hasattr(r, "grad") else [r]
        assert not any(np.isnan(a).any() for a in arrays)


@pytest.mark.parametrize("isa", NAMES)
def test_largest_temperature_with_masked_logits_is_not_nan(isa):
    """At the largest temperature a dtype takes, 1/t is still > 0: a masked
    (-inf) logit stays -inf after scaling (it was -inf * 0 = NaN once 1/t
    underflowed), on every build (C = 1000 leaves an AVX-512 tail)."""
    if isa not in builds():
        pytest.skip(f"no {isa} build on this CPU")
    with using(isa):
        z = _logits((3, 1000), np.float32, 41)
        v = _logits((3, 1000), np.float32, 42)
        z[:, 7] = -np.inf
        v[:, 7] = -np.inf
        t = float(np.finfo(np.float32).max)
        r = kdtemp.kd_loss(z, v, temperature=t, divergence="symmetric_kl")
        assert np.isfinite(r.loss) and not np.isnan(r.grad).any()
        p = kdtemp.softmax(z, t)
        assert np.all(p[:, 7] == 0)
        np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)


def test_kd_weight_zero_is_exactly_ce():
    z, v = _logits((3, 5), seed=41), _logits((3, 5), seed=42)
    y = np.array([0, 1, 2])
    ce = kdtemp.ce_loss(z, y).loss
    assert kdtemp.kd_loss(z, v, kd_weight=0.0, ce_weight=1.0, labels=y,
                          temperature=1e200).loss == pytest.approx(ce, rel=1e-12)
    v_bad = v.copy()
    v_bad[1, 1] = np.inf  # not checked: the teacher is not used
    r = kdtemp.atkd_loss(z, v_bad, kd_weight=0.0, ce_weight=1.0, labels=y, scale="T2")
    assert r.loss == pytest.approx(ce, rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_atkd_infinite_kl_gradient_is_shift_invariant(dtype):
    """The teacher has mass where the student is -inf: the KL is infinite,
    its gradient the finite formula (the term through tS over the student's
    finite entries only), on every build and as the NumPy twin has it."""
    z = np.array([[-np.inf, 0.0, 1.0, 2.0], [-np.inf, 0.0, 1.0, 2.0]], dtype)
    v = np.array([[0.0, 1.0, -np.inf, -np.inf], [2.0, 1.0, -np.inf, 0.5]], dtype)
    want = kdtemp.reference.atkd_loss(z, v).grad
    rtol, atol = (1e-9, 1e-12) if dtype == np.float64 else (1e-5, 1e-7)
    for isa, (g0, g1) in each_build(lambda: (kdtemp.atkd_loss(z, v).grad,
                                             kdtemp.atkd_loss(z + 100.0, v).grad)).items():
        np.testing.assert_allclose(g1, g0, rtol=rtol, atol=atol, err_msg=isa)
        np.testing.assert_allclose(g0, want, rtol=rtol, atol=atol, err_msg=isa)


def test_atkd_constant_row_gradient_does_not_depend_on_the_constant():
    v = _logits((1, 15), seed=51)
    g = [kdtemp.atkd_loss(np.full((1, 15), c), v, scale="T2").grad for c in (1.0, 709.78, 0.1)]
    np.testing.assert_allclose(g[1], g[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(g[2], g[0], rtol=1e-6, atol=1e-9)


def test_out_with_overlapping_rows_is_refused():
    z, v = _logits((4, 6), seed=61), _logits((4, 6), seed=62)
    out = np.lib.stride_tricks.as_strided(np.zeros(4 + 6), shape=(4, 6), strides=(8, 8))
    with pytest.raises(ValueError, match="out"):
        kdtemp.kd_loss(z, v, out=out)


@pytest.mark.parametrize("layout", ["one row, stride 8", "negative stride", "row gaps"])
def test_out_whose_rows_do_not_overlap_is_accepted(layout):
    z, v = _logits((4, 6), seed=61), _logits((4, 6), seed=62)
    if layout == "one row, stride 8":
        z, v = z[:1], v[:1]
        out = np.lib.stride_tricks.as_strided(np.zeros(6), shape=(1, 6), strides=(8, 8))
    elif layout == "negative stride":
        out = np.zeros((4, 6))[::-1]
    else:
        out = np.zeros((4, 9))[:, :6]
    r = kdtemp.kd_loss(z, v, out=out)
    assert r.grad is out
    np.testing.assert_array_equal(out, kdtemp.kd_loss(z, v).grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", edge_rows.CASES, ids=[c.id for c in edge_rows.CASES])
def test_edge_rows_kernel_matches_twin(case, dtype):
    """The fixed bugs' rows: the kernel and the NumPy twin give the same loss
    (+inf where it is) and the same finite gradient."""
    args = edge_rows.astype(case, dtype)
    got = getattr(kdtemp, case.func)(*args, **case.kwargs)
    exp = getattr(kdtemp.reference, case.func)(*args, **case.kwargs)
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (2e-5, 1e-6)
    assert _finite_grad(got) and _finite_grad(exp)
    assert not np.isnan(got.loss).any()
    np.testing.assert_allclose(got.loss, exp.loss, rtol=rtol, atol=atol)
    np.testing.assert_allclose(got.grad, exp.grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", edge_rows.SHIFT_INVARIANT,
                         ids=[c.id for c in edge_rows.SHIFT_INVARIANT])
def test_edge_rows_gradient_is_shift_invariant(case, dtype):
    """ATKD's loss does not change when a constant is added to a student row, and
    neither may its gradient (infinite-KL rows, constant rows)."""
    z, *rest = edge_rows.astype(case, dtype)
    g0 = kdtemp.atkd_loss(z, *rest, **case.kwargs).grad
    rtol, atol = (1e-9, 1e-11) if dtype == np.float64 else (1e-4, 1e-5)
    for c in (100.0, -37.5):
        g = kdtemp.atkd_loss(z + dtype(c), *rest, **case.kwargs).grad
        np.testing.assert_allclose(g, g0, rtol=rtol, atol=atol)
