"""Data-parallel training with kdtemp.torch over torch.distributed (gloo, loopback).

Two processes each take half of a token-level batch (ragged padding, so the
halves count different tokens), train a small student with ``KDLoss`` under
``DistributedDataParallel`` for a few steps, and update a shared ``DTS`` whose
``all_reduce`` is ``kdtemp.torch.all_reduce_sum``. Both ranks must end with the
same temperatures, equal to one process training on the whole batch, and the
same weights as that process.

This file is also the worker: ``python test_torch_distributed.py RANK WORLD PORT OUT``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

STEPS = 6
BATCH, LENGTH, FEATURES, VOCAB = 8, 5, 6, 11


def _data():
    """The global batch, identical in every process (seeded)."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(BATCH, LENGTH, FEATURES, generator=g, dtype=torch.float64)
    y = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=g)
    for i in range(BATCH):                      # ragged padding
        y[i, LENGTH - i % 4:] = -100
    y[0, :] = -100                              # a fully padded sequence
    return x, y


def _models():
    torch.manual_seed(0)
    teacher = torch.nn.Linear(FEATURES, VOCAB).double()
    student = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(),
                                  torch.nn.Linear(16, VOCAB)).double()
    return teacher, student


def train(rank: int, world: int) -> dict:
    """The training loop of one rank (``world == 1``: one process, whole batch)."""
    import kdtemp
    import kdtemp.torch as kt

    x, y = _data()
    per = BATCH // world
    x, y = x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
    teacher, student = _models()
    model = student
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(student)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    dts = kdtemp.DTS(4.0, 1.0, 4.0, total_epochs=4, momentum=0.5,
                     all_reduce=kt.all_reduce_sum if world > 1 else None)
    crit = kt.KDLoss(scheduler=dts, kd_weight=0.9, ce_weight=0.1, reduction="sum")
    temps, losses = [], []
    for step in range(STEPS):
        with torch.no_grad():
            v = teacher(x) * 3
        z = model(x)
        # gradient-accumulation / data-parallel recipe: the local sum over the
        # global count, times world (DDP averages the ranks' gradients)
        count = torch.tensor([float((y != -100).sum())], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(count)
        loss = crit(z, v, y) / (count[0] / world)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        dts.update(1 + step // 2, **kt.ce_stats(z.detach(), v, y))
        temps.append(dts.temperature)
    return {"temps": np.array(temps),
            "params": np.concatenate([p.detach().reshape(-1).numpy()
                                      for p in student.parameters()]),
            "losses": np.array(losses)}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    try:
        result = train(rank, world)
        # all_reduce_sum itself: the sum over ranks of [rank, 1, 2]
        result["reduced"] = __import__("kdtemp.torch", fromlist=["x"]).all_reduce_sum(
            np.array([rank, 1.0, 2.0]))
        np.savez(os.path.join(out, f"rank{rank}.npz"), **result)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                    reason="torch.distributed with gloo is not available")
def test_two_ranks_match_one_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"        # loopback only
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), str(rank), "2",
                               str(port), str(tmp_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for rank in range(2)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=120))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("the 2-process gloo run did not finish within 120 s")
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, f"rank failed:\n{out}\n{err}"

    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    single = train(0, 1)
    # both ranks: the same temperatures, bit for bit (the all-reduced sums are equal)
    assert np.array_equal(ranks[0]["temps"], ranks[1]["temps"])
    assert len(set(single["temps"].tolist())) > 1          # T actually moved
    np.testing.assert_allclose(ranks[0]["temps"], single["temps"], rtol=1e-12)
    # DDP keeps the replicas equal, and equal to one process on the whole batch
    np.testing.assert_array_equal(ranks[0]["params"], ranks[1]["params"])
    np.testing.assert_allclose(ranks[0]["params"], single["params"], rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(ranks[0]["losses"] + ranks[1]["losses"],
                               2 * single["losses"], rtol=1e-10)
    for r in ranks:
        np.testing.assert_array_equal(r["reduced"], [1.0, 2.0, 4.0])


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    # The results are written and the group destroyed. A rank once died after
    # that in the interpreter's teardown (SIGABRT, "terminate called without
    # an active exception": a Gloo thread still joinable, see
    # pytorch/pytorch#179291): leave without the teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
