"""The command line: ``python -m kdtemp profile`` on saved logits and
``python -m kdtemp demo`` (``--quick``, as CI runs it; well under two minutes on
two cores). Each command runs in a subprocess, as a user would run it."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kdtemp

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
DEMO_DEPS = all(importlib.util.find_spec(m) is not None for m in ("torch", "sklearn"))


def run_cli(*args, cwd, timeout=300):
    env = dict(os.environ)
    env["MPLBACKEND"] = "Agg"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "kdtemp", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def saved_logits(tmp_path, dtype=np.float32, n=64, c=12):
    rng = np.random.default_rng(0)
    v = (rng.normal(size=(n, c)) * 5).astype(dtype)
    z = (rng.normal(size=(n, c)) * 2).astype(dtype)
    y = rng.integers(0, c, size=n)
    y[:4] = -100
    paths = [tmp_path / name for name in ("teacher.npy", "student.npy", "labels.npy")]
    for p, a in zip(paths, (v, z, y)):
        np.save(p, a)
    return (v, z, y), paths


# --------------------------------------------------------------------------------
# profile
# --------------------------------------------------------------------------------

@pytest.mark.skipif(not HAVE_MPL, reason="matplotlib is not installed")
def test_profile_writes_table_and_png(tmp_path):
    (v, z, y), (tp, sp, lp) = saved_logits(tmp_path)
    out = tmp_path / "figs"
    r = run_cli("profile", tp, sp, "--labels", lp, "--temperatures", "1,2,4,8",
                "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "temperature profile of 60 rows" in r.stdout  # 4 rows are -100
    lines = r.stdout.splitlines()
    head = next(k for k, ln in enumerate(lines) if ln.split()[:2] == ["T", "KD"])
    rows = [ln.split() for ln in lines[head + 1:head + 5]]
    prof = kdtemp.temperature_profile(z, v, [1, 2, 4, 8], y)
    np.testing.assert_allclose([float(r_[0]) for r_ in rows], [1, 2, 4, 8])
    np.testing.assert_allclose([float(r_[1]) for r_ in rows], prof.kd_loss, rtol=1e-3)
    np.testing.assert_allclose([float(r_[6]) for r_ in rows], prof.sharpness_gap, rtol=1e-3,
                               atol=1e-4)
    assert "teacher temperature matching the student's sharpness at T=1" in r.stdout
    png = out / "temperature_profile.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert f"figure: {png}" in r.stdout


def test_profile_no_plot_and_mixed_dtypes(tmp_path):
    (v, z, _), (tp, sp, _) = saved_logits(tmp_path)
    np.save(sp, z.astype(np.float64))  # float64 student, float32 teacher
    r = run_cli("profile", tp, sp, "--no-plot", "--out", tmp_path / "nofig", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "temperature profile of 64 rows" in r.stdout
    assert not (tmp_path / "nofig").exists()


def test_profile_bad_input_fails_with_a_message(tmp_path):
    (_, z, _), (tp, sp, _) = saved_logits(tmp_path)
    np.save(sp, z[:10])
    r = run_cli("profile", tp, sp, "--no-plot", cwd=tmp_path)
    assert r.returncode != 0
    assert "`teacher` shape" in r.stderr


def test_help_lists_the_commands():
    r = run_cli("--help", cwd=ROOT)
    assert r.returncode == 0
    assert "profile" in r.stdout and "demo" in r.stdout


# --------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------

DEMO_OPTIONS = ("--quick", "--out", "--seeds", "--teachers", "--epochs", "--teacher-epochs",
                "--methods", "--student-width", "--temperature", "--batch-size", "--lr",
                "--threads", "--no-cache", "--no-plot", "--no-progress")


def test_demo_help_documents_every_option():
    r = run_cli("demo", "--help", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    for opt in DEMO_OPTIONS:
        assert opt in r.stdout, opt
    for method in ("ce", "kd", "atkd", "ls", "dts", "annealing", "dkd"):
        assert method in r.stdout


@pytest.mark.skipif(not DEMO_DEPS, reason="the demo needs torch and scikit-learn")
def test_demo_quick(tmp_path):
    """The quick demo end to end: every method, two teachers, two seeds."""
    out = tmp_path / "demo_out"
    r = run_cli("demo", "--quick", "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("CE only", "Hinton KD", "ATKD", "logit std.", "DTS", "Annealing-KD", "DKD"):
        assert r.stdout.count(f"  {name} ") >= 3, name  # two teacher tables and the summary
    assert "Student test accuracy (%) by teacher width" in r.stdout
    assert r.stdout.count("Teacher MLP") == 2
    res = json.loads((out / "results.json").read_text())
    cfg = res["config"]
    assert res["quick"] and cfg["seeds"] == 2 and len(cfg["teachers"]) == 2
    # CE runs once per seed and is measured against each teacher
    assert len(res["runs"]) == cfg["seeds"] * len(cfg["teachers"]) * 7
    for run in res["runs"]:
        assert 0.0 < run["accuracy"] <= 1.0
        assert run["kl_T1"] >= 0.0 and np.isfinite(run["gap_T1"])
    ce = [s for s in res["summary"] if s["method"] == "ce"]
    assert all(s["accuracy_mean"] > 70 for s in ce)
    assert len(res["summary"]) == 7 * len(cfg["teachers"])
    traj = res["trajectories"]
    assert set(traj["annealing"]) == {"phi", "T", "phase1_epochs"}
    assert max(traj["annealing"]["phi"]) == 1.0
    for w in cfg["teachers"]:
        t = traj[str(w)]
        assert len(t["dts_temperature"]) > cfg["epochs"]  # one per step, plus the start
        assert len(t["atkd_teacher_T"]) == len(t["atkd_student_T"]) > 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(res["runs"])
    assert (out / "results.txt").read_text().startswith("Teacher MLP")
    if HAVE_MPL:
        assert (out / "demo.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.skipif(not DEMO_DEPS, reason="the demo needs torch and scikit-learn")
def test_demo_cache_and_determinism(tmp_path):
    out = tmp_path / "o"
    args = ("demo", "--quick", "--teachers", "8", "--methods", "kd,atkd", "--seeds", "1",
            "--epochs", "2", "--teacher-epochs", "2", "--no-plot", "--out", out)
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "teacher     8: trained" in first.stdout
    assert (out / "cache" / "teacher_w8.pt").exists()
    res1 = json.loads((out / "results.json").read_text())
    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "teacher     8: cache" in second.stdout
    res2 = json.loads((out / "results.json").read_text())
    third = run_cli(*args, "--no-cache", cwd=tmp_path)
    assert "teacher     8: trained" in third.stdout
    res3 = json.loads((out / "results.json").read_text())
    keys = ("accuracy", "kl_T1", "gap_T1", "gap_method_T")
    for a, b, c in zip(res1["runs"], res2["runs"], res3["runs"]):
        for k in keys:  # same seeds: the same numbers, bit for bit
            assert a[k] == b[k] == c[k], k


def test_demo_rejects_bad_options(tmp_path):
    for bad in (["--methods", "kd,foo"], ["--teachers", "0"], ["--teachers", "8,8"],
                ["--seeds", "0"], ["--epochs", "1"], ["--temperature", "-1"]):
        r = run_cli("demo", *bad, "--out", tmp_path / "x", cwd=tmp_path)
        assert r.returncode == 2, bad
        assert "kdtemp demo:" in r.stderr, bad
    assert not (tmp_path / "x").exists()
