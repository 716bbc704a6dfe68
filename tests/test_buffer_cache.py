"""The cache of freed output buffers behind kdtemp's returned arrays
(csrc/buffer_cache.c, kdtemp.set_buffer_cache): a result freed and asked for
again of the same size class reuses the block; what a block held before never
shows through; the limits, the eviction order and the switch work; resizing,
threads and fork stay sound (the ASan/UBSan run of CI checks the memory)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import kdtemp
from test_zero_copy import OPS, _logits, op_names

MiB = 1 << 20


def _owner(a):
    while a.base is not None:
        a = a.base
    return a


@pytest.fixture(autouse=True)
def fresh_cache():
    old = kdtemp.set_buffer_cache(1 << 30)
    kdtemp.empty_buffer_cache()
    yield
    kdtemp.set_buffer_cache(old)
    kdtemp.empty_buffer_cache()


@op_names
def test_reuse_gives_the_uncached_bits(op):
    """The second call takes the first call's block; with a block that held
    something else, the result is still bit for bit the uncached one."""
    z, v = _logits((96, 4000), 0), _logits((96, 4000), 1)   # 1.46 MiB, class 1.5 MiB
    y = np.arange(96) % 4000
    kdtemp.set_buffer_cache(0)
    want = OPS[op](z, v, y, None).copy()
    kdtemp.set_buffer_cache(1 << 30)
    # a larger request of the same class, filled with garbage, then freed
    big = OPS[op](_logits((98, 4000), 2) * 50, _logits((98, 4000), 3), np.arange(98) % 4000,
                  None)
    _owner(big).fill(np.nan)
    addr = _owner(big).ctypes.data
    del big
    info = kdtemp.buffer_cache_info()
    assert info["blocks"] == 1 and info["bytes"] == 3 * MiB // 2
    got = OPS[op](z, v, y, None)
    assert _owner(got).ctypes.data == addr
    assert kdtemp.buffer_cache_info()["hits"] == info["hits"] + 1
    np.testing.assert_array_equal(got, want)
    assert got.flags.c_contiguous and got.flags.writeable


def test_other_class_and_small_outputs_are_not_reused():
    z = _logits((256, 1024), 0)                    # exactly 1 MiB: the smallest cached size
    a = kdtemp.softmax(z)
    del a
    assert kdtemp.buffer_cache_info()["blocks"] == 1
    before = kdtemp.buffer_cache_info()
    b = kdtemp.softmax(_logits((256, 1400), 1))    # 1.37 MiB: class 1.5 MiB, a miss
    after = kdtemp.buffer_cache_info()
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"] + 1)
    del b
    c = kdtemp.softmax(_logits((16, 1000), 2))     # 62.5 KiB: not the cache's business
    del c
    info = kdtemp.buffer_cache_info()
    assert info["blocks"] == 2 and info["misses"] == after["misses"]
    assert info["bytes"] == MiB + 3 * MiB // 2


def test_out_never_touches_the_cache():
    z, v = _logits((256, 2048), 0), _logits((256, 2048), 1)
    out = np.empty_like(z)
    before = kdtemp.buffer_cache_info()
    r = kdtemp.kd_loss(z, v, temperature=2.0, out=out)
    assert r.grad is out
    del r
    assert kdtemp.buffer_cache_info() == before


def test_at_most_four_blocks_least_recently_freed_first():
    sizes = [1024, 1280, 1536, 1792, 2048]          # rows of 256 floats x these: 5 classes
    arrays = [kdtemp.softmax(_logits((256, c), c)) for c in sizes]
    addrs = [_owner(a).ctypes.data for a in arrays]
    for i in range(len(arrays)):
        arrays[i] = None
    info = kdtemp.buffer_cache_info()
    assert info["blocks"] == 4
    assert info["bytes"] == sum(256 * c * 4 for c in sizes[1:])
    # the first one freed is gone, the last one is there
    last = kdtemp.softmax(_logits((256, sizes[-1]), 9))
    assert _owner(last).ctypes.data == addrs[-1]


def test_byte_limit_and_switch():
    z = _logits((512, 1024), 0)                     # 2 MiB
    assert kdtemp.set_buffer_cache(3 * MiB) == 1 << 30
    a, b = kdtemp.softmax(z), kdtemp.softmax(z)
    del a, b                                        # the second evicts the first
    assert kdtemp.buffer_cache_info()["blocks"] == 1
    assert kdtemp.buffer_cache_info()["bytes"] == 2 * MiB
    kdtemp.set_buffer_cache(MiB)                    # shrinking evicts
    assert kdtemp.buffer_cache_info()["bytes"] == 0
    c = kdtemp.softmax(z)
    del c                                           # larger than the limit: freed
    assert kdtemp.buffer_cache_info()["blocks"] == 0
    assert kdtemp.set_buffer_cache(0) == MiB
    before = kdtemp.buffer_cache_info()
    d = kdtemp.softmax(z)
    del d
    after = kdtemp.buffer_cache_info()
    assert after["blocks"] == 0 and after["misses"] == before["misses"]
    kdtemp.set_buffer_cache(1 << 30)
    e = kdtemp.softmax(z)
    del e
    assert kdtemp.buffer_cache_info()["blocks"] == 1
    kdtemp.empty_buffer_cache()
    info = kdtemp.buffer_cache_info()
    assert (info["blocks"], info["bytes"], info["limit"]) == (0, 0, 1 << 30)


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (1.5, TypeError), (True, TypeError),
                                      ("1G", TypeError), (None, TypeError)])
def test_bad_limit(bad, exc):
    with pytest.raises(exc, match="max_bytes"):
        kdtemp.set_buffer_cache(bad)
    assert kdtemp.buffer_cache_info()["limit"] == 1 << 30


def test_resized_result_frees_soundly():
    """ndarray.resize goes through the handler's realloc; the block then
    belongs to its new size class (ASan would see a mismatch)."""
    g = _owner(kdtemp.softmax(_logits((256, 1024), 0)))
    g.resize((256 * 3000,), refcheck=False)         # 2.93 MiB, class 3 MiB
    g[:] = 1.0
    g.resize((10,), refcheck=False)                 # below the cached sizes
    g[:] = 2.0
    g.resize((256 * 1500,), refcheck=False)         # class 1.5 MiB
    g[:] = 3.0
    del g
    info = kdtemp.buffer_cache_info()
    assert info["blocks"] == 1 and info["bytes"] == 3 * MiB // 2
    z = _logits((256, 1500), 1)
    np.testing.assert_array_equal(kdtemp.softmax(z), _uncached(kdtemp.softmax, z))


def _uncached(fn, *args):
    old = kdtemp.set_buffer_cache(0)
    try:
        return fn(*args)
    finally:
        kdtemp.set_buffer_cache(old)


def test_threads_share_the_cache_soundly():
    xs = [_logits((256, 1024 + 256 * (i % 3)), i) for i in range(6)]
    want = [_uncached(kdtemp.log_softmax, x) for x in xs]
    errors = []

    def work(i):
        for _ in range(30):
            got = kdtemp.log_softmax(xs[i], n_threads=1)
            if not np.array_equal(got, want[i]):
                errors.append(i)
            del got

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    info = kdtemp.buffer_cache_info()
    assert info["blocks"] <= 4 and info["bytes"] <= info["limit"]
    assert info["hits"] > 0


def test_torch_results_come_from_the_cache():
    torch = pytest.importorskip("torch")
    import kdtemp.torch as kt
    z = torch.from_numpy(_logits((256, 2048), 0)).requires_grad_()
    v = torch.from_numpy(_logits((256, 2048), 1))
    kt.kd_loss(z, v, temperature=2.0).backward()
    z.grad = None
    before = kdtemp.buffer_cache_info()
    kt.kd_loss(z, v, temperature=2.0).backward()
    assert kdtemp.buffer_cache_info()["hits"] > before["hits"]


def _run(code, env_value):
    env = dict(os.environ, KDTEMP_BUFFER_CACHE=env_value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("value, limit", [("0", 0), ("64M", 64 * MiB), ("2GiB", 2 << 30),
                                          ("12345", 12345)])
def test_environment_variable(value, limit):
    p = _run("import kdtemp; print(kdtemp.buffer_cache_info()['limit'])", value)
    assert p.returncode == 0, p.stderr
    assert int(p.stdout) == limit


def test_bad_environment_variable_names_itself():
    p = _run("import kdtemp", "lots")
    assert p.returncode != 0
    assert "KDTEMP_BUFFER_CACHE" in p.stderr and "'lots'" in p.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_uses_the_cache():
    import multiprocessing as mp
    z = _logits((256, 2048), 0)
    want = _uncached(kdtemp.softmax, z)
    a = kdtemp.softmax(z)
    del a                                            # the child inherits this block

    def child(q):
        ok = all(np.array_equal(kdtemp.softmax(z), want) for _ in range(3))
        q.put((ok, kdtemp.buffer_cache_info()["hits"]))

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    hits = kdtemp.buffer_cache_info()["hits"]
    p = ctx.Process(target=child, args=(q,))
    p.start()
    ok, child_hits = q.get(timeout=60)
    p.join(60)
    assert p.exitcode == 0 and ok and child_hits >= hits + 3
