r"""``python -m kdtemp demo``: the ATKD paper's degradation experiment in miniature,
on real data that ships with scikit-learn (no download).

Teachers of increasing size (two-hidden-layer MLPs of growing width) are trained
once on the handwritten digits (``sklearn.datasets.load_digits``: 1797 8x8
images, 10 classes; 70/30 stratified split) and cached under ``--out``. A small
student (one hidden layer) is then distilled from each teacher with every
temperature method of kdtemp, for several seeds, in PyTorch on the CPU through
``kdtemp.torch``:

==============  ==========================================================
``ce``          cross-entropy only (no teacher; the same runs for every teacher)
``kd``          Hinton KD, fixed T: ``0.9 T^2 KL(pT||pS) + 0.1 CE``
``atkd``        ATKD (``kdtemp.presets.atkd``): per-sample std temperatures
``ls``          logit standardisation (``kdtemp.presets.logit_standardization``)
``dts``         Hinton KD at the temperature of ``kdtemp.DTS`` (4, 2, 4), read
                before each step and updated after it from both CEs
``annealing``   Annealing-KD: phase 1 regresses on ``Phi * v``
                (``kdtemp.AnnealingSchedule``), phase 2 cross-entropy with a
                fresh optimiser
``dkd``         DKD (alpha 1, beta 8, fixed T) + CE, its weight warmed up by
                ``kdtemp.WeightWarmup``
==============  ==========================================================

Every method trains for the same number of epochs with the same optimiser
(AdamW, cosine learning-rate decay), the same batches and the same initial
weights for a given seed. The table reports, on the test set: accuracy
(mean +- std over seeds), the final ``KL(pT || pS)`` at T = 1, and the mean
sharpness gap ``lse(v) - lse(z)`` at T = 1 and at the method's own temperature.
Written to ``--out``: ``results.json`` (configuration, every run, summaries,
temperature trajectories), ``results.csv`` (one line per run), ``demo.png``
(temperature trajectories and accuracy per method and teacher size), and the
teacher cache.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["add_parser", "run", "METHODS"]

METHODS: Tuple[str, ...] = ("ce", "kd", "atkd", "ls", "dts", "annealing", "dkd")
_NAMES = {
    "ce": "CE only",
    "kd": "Hinton KD",
    "atkd": "ATKD",
    "ls": "logit std.",
    "dts": "DTS",
    "annealing": "Annealing-KD",
    "dkd": "DKD",
}
_CACHE_VERSION = 1
_N_FEATURES, _N_CLASSES = 64, 10

# Settings of the default run and of --quick (explicit options override both).
_DEFAULTS = dict(teachers="64,256,1024", seeds=5, epochs=60, teacher_epochs=40)
_QUICK = dict(teachers="32,256", seeds=2, epochs=12, teacher_epochs=15)


# --------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------

def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``demo`` sub-command on an ``argparse`` sub-parser set."""
    p = subparsers.add_parser(
        "demo", help="distil a small student from growing teachers with every method "
                     "(real data, CPU, a few minutes)",
        description="Train MLP teachers of increasing width on scikit-learn's handwritten "
                    "digits (bundled with scikit-learn, no download) and distil a small "
                    "student from each with CE only, Hinton KD, ATKD, logit "
                    "standardisation, DTS, Annealing-KD and DKD, over several seeds, in "
                    "PyTorch on the CPU (kdtemp.torch). Prints, per teacher, test accuracy "
                    "(mean ± std over seeds), the final KL to the teacher at T=1 and the "
                    "mean sharpness gap; writes results.json, results.csv and demo.png to "
                    "--out. The default run takes a few minutes on 2 cores; --quick well "
                    "under one. Needs: pip install torch scikit-learn matplotlib tqdm "
                    "(matplotlib and tqdm optional).")
    p.add_argument("--quick", action="store_true",
                   help=f"a short run (teachers {_QUICK['teachers']}, {_QUICK['seeds']} seeds, "
                        f"{_QUICK['epochs']} student epochs, {_QUICK['teacher_epochs']} teacher "
                        f"epochs; no progress bars): well under a minute, used by the tests")
    p.add_argument("--out", default="kdtemp_demo_out",
                   help="output folder: results.json, results.csv, results.txt, demo.png "
                        "and the teacher cache, cache/ (default: kdtemp_demo_out)")
    p.add_argument("--seeds", type=int, default=None,
                   help=f"number of student seeds (0..N-1) per method and teacher "
                        f"[default {_DEFAULTS['seeds']}; --quick {_QUICK['seeds']}]")
    p.add_argument("--teachers", default=None,
                   help=f"comma-separated hidden widths of the two-hidden-layer teachers, "
                        f"smallest first [default {_DEFAULTS['teachers']}; --quick "
                        f"{_QUICK['teachers']}]")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"student training epochs, the same for every method (Annealing-KD: "
                        f"half regression, half CE) [default {_DEFAULTS['epochs']}; --quick "
                        f"{_QUICK['epochs']}]")
    p.add_argument("--teacher-epochs", type=int, default=None,
                   help=f"teacher training epochs [default {_DEFAULTS['teacher_epochs']}; "
                        f"--quick {_QUICK['teacher_epochs']}]")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated subset of: " + ", ".join(
                       f"{m} ({_NAMES[m]})" for m in METHODS) + " (default: all)")
    p.add_argument("--student-width", type=int, default=16,
                   help="hidden width of the one-hidden-layer student (default: 16)")
    p.add_argument("--temperature", type=float, default=4.0,
                   help="the fixed temperature of Hinton KD and DKD; DTS moves between it "
                        "and half of it (default: 4)")
    p.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default: 64)")
    p.add_argument("--lr", type=float, default=3e-3,
                   help="AdamW learning rate of the students, cosine decay to 0 "
                        "(default: 0.003)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and kdtemp threads; for these small models 1 is fastest "
                        "(default: 1)")
    p.add_argument("--no-cache", action="store_true",
                   help="retrain the teachers even if --out/cache holds them (the new ones "
                        "are cached)")
    p.add_argument("--no-plot", action="store_true", help="do not draw demo.png")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (they are off anyway when stderr is not a "
                        "terminal, and with --quick)")
    p.set_defaults(func=run)
    return p


def _int_list(text: str, name: str) -> List[int]:
    try:
        vals = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals) or len(set(vals)) != len(vals):
        raise ValueError(f"--{name} must list distinct integers >= 1, got {text!r}")
    return vals


@dataclass(frozen=True)
class Config:
    teachers: Tuple[int, ...]
    seeds: int
    epochs: int
    teacher_epochs: int
    methods: Tuple[str, ...]
    student_width: int
    temperature: float
    batch_size: int
    lr: float
    teacher_lr: float = 1e-3
    data_seed: int = 0
    teacher_seed: int = 1234
    test_size: float = 0.3


def _config(args: argparse.Namespace) -> Config:
    base = _QUICK if args.quick else _DEFAULTS
    teachers = _int_list(args.teachers if args.teachers is not None else base["teachers"],
                         "teachers")
    seeds = args.seeds if args.seeds is not None else base["seeds"]
    epochs = args.epochs if args.epochs is not None else base["epochs"]
    t_epochs = args.teacher_epochs if args.teacher_epochs is not None else base["teacher_epochs"]
    methods = tuple(m.strip() for m in str(args.methods).split(",") if m.strip())
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"--methods: unknown {bad or methods!r}; choose from {', '.join(METHODS)}")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if epochs < 2:
        raise ValueError(f"--epochs must be >= 2 (Annealing-KD needs two phases), got {epochs}")
    if t_epochs < 1:
        raise ValueError(f"--teacher-epochs must be >= 1, got {t_epochs}")
    if args.student_width < 1 or args.batch_size < 1 or args.threads < 1:
        raise ValueError("--student-width, --batch-size and --threads must be >= 1")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ValueError(f"--temperature must be finite and > 0, got {args.temperature}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be finite and > 0, got {args.lr}")
    # keep the user's order of methods but run them in the table's order
    methods = tuple(m for m in METHODS if m in methods)
    return Config(teachers=tuple(teachers), seeds=int(seeds), epochs=int(epochs),
                  teacher_epochs=int(t_epochs), methods=methods,
                  student_width=int(args.student_width), temperature=float(args.temperature),
                  batch_size=int(args.batch_size), lr=float(args.lr))


# --------------------------------------------------------------------------------
# Data, models, training
# --------------------------------------------------------------------------------

def _load_data(cfg: Config):
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=cfg.test_size,
                                          random_state=cfg.data_seed, stratify=y)
    return (torch.from_numpy(Xtr), torch.from_numpy(ytr.astype(np.int64)),
            torch.from_numpy(Xte), torch.from_numpy(yte.astype(np.int64)))


def _mlp(width: int, depth: int):
    from torch import nn

    layers: List[Any] = []
    d_in = _N_FEATURES
    for _ in range(depth):
        layers += [nn.Linear(d_in, width), nn.ReLU()]
        d_in = width
    layers.append(nn.Linear(d_in, _N_CLASSES))
    return nn.Sequential(*layers)


def _n_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _batches(n: int, batch_size: int, generator) -> Iterator[Any]:
    import torch

    perm = torch.randperm(n, generator=generator)
    for k in range(0, n, batch_size):
        yield perm[k:k + batch_size]


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)


def _train_teacher(width: int, data, cfg: Config, progress: bool):
    import torch
    import torch.nn.functional as F

    Xtr, ytr, _, _ = data
    torch.manual_seed(cfg.teacher_seed + width)
    model = _mlp(width, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.teacher_lr)
    gen = torch.Generator().manual_seed(cfg.teacher_seed + width)
    bar = _progress(cfg.teacher_epochs, f"teacher {width}", progress)
    for _ in range(cfg.teacher_epochs):
        model.train()
        for idx in _batches(len(Xtr), cfg.batch_size, gen):
            loss = F.cross_entropy(model(Xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    model.eval()
    return model


def _teacher_key(width: int, cfg: Config) -> Dict[str, Any]:
    return {"version": _CACHE_VERSION, "width": width, "depth": 2,
            "epochs": cfg.teacher_epochs, "lr": cfg.teacher_lr, "batch_size": cfg.batch_size,
            "seed": cfg.teacher_seed + width, "data_seed": cfg.data_seed,
            "test_size": cfg.test_size}


def _get_teacher(width: int, data, cfg: Config, cache_dir: str, use_cache: bool,
                 progress: bool):
    """(model, source) where source is 'cache' or 'trained'."""
    import torch

    key = _teacher_key(width, cfg)
    path = os.path.join(cache_dir, f"teacher_w{width}.pt")
    if use_cache and os.path.exists(path):
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("key") == key:
                model = _mlp(width, 2)
                model.load_state_dict(blob["state_dict"])
                model.eval()
                return model, "cache"
        except Exception:  # a stale or broken cache file: retrain
            pass
    model = _train_teacher(width, data, cfg, progress)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + ".tmp"
    torch.save({"key": key, "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, path)
    return model, "trained"


@dataclass
class _Trace:
    """Per-run trajectories kept for the figure (first seed only)."""

    dts_temperature: Optional[List[float]] = None
    annealing_phi: Optional[List[float]] = None
    annealing_T: Optional[List[int]] = None
    atkd_teacher_T: Optional[List[float]] = None
    atkd_student_T: Optional[List[float]] = None
    dts_final: Optional[float] = None  # kept for every seed


def _train_student(method: str, seed: int, teacher_train, data, cfg: Config, trace: bool):
    """Train one student; returns (model, trace, seconds)."""
    import torch

    import kdtemp
    import kdtemp.torch as kt

    Xtr, ytr, _, _ = data
    torch.manual_seed(seed)
    model = _mlp(cfg.student_width, 1)  # the same initial weights for every method
    gen = torch.Generator().manual_seed(10_000 + seed)  # the same batches too
    T = cfg.temperature
    E = cfg.epochs
    tr = _Trace()
    t0 = time.perf_counter()

    def fresh(epochs: int):
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
        return opt, sched

    def step(opt, loss) -> None:
        opt.zero_grad()
        loss.backward()
        opt.step()

    if method == "annealing":
        # phase 1: regression on Phi(T) * v, T from tau_max down to 1; phase 2: CE
        p1 = E // 2
        # the authors' tau_max = 10 (with fewer phase-1 epochs the schedule spreads
        # its steps over them)
        sch = kdtemp.AnnealingSchedule(10, phase1_epochs=p1, phase2_epochs=E - p1)
        if trace:
            tr.annealing_phi = [sch.phi(e) for e in range(sch.total_epochs)]
            tr.annealing_T = [sch.temperature(e) for e in range(sch.total_epochs)]
        opt, lr_sched = fresh(p1)
        for e in range(sch.total_epochs):
            if e == p1:  # phase 2 starts from the last phase-1 weights (Phi = 1)
                opt, lr_sched = fresh(E - p1)
            phase, phi = sch.phase(e), sch.phi(e)
            for idx in _batches(len(Xtr), cfg.batch_size, gen):
                z = model(Xtr[idx])
                if phase == 1:
                    loss = kt.annealing_loss(z, teacher_train[idx], phi=phi)
                else:
                    loss = kt.ce_loss(z, ytr[idx])
                step(opt, loss)
            lr_sched.step()
        return model, tr, time.perf_counter() - t0

    opt, lr_sched = fresh(E)
    dts = kdtemp.DTS(T, 0.5 * T, T, total_epochs=E) if method == "dts" else None
    warm = kdtemp.WeightWarmup(max(1.0, E / 12.0)) if method == "dkd" else None  # 20 of 240
    if trace and method == "dts":
        tr.dts_temperature = [dts.temperature]
    if trace and method == "atkd":
        tr.atkd_teacher_T, tr.atkd_student_T = [], []
    atkd_args = {k: v for k, v in kdtemp.presets.atkd.items()
                 if k in ("base_temperature", "ddof", "eps")}
    for epoch in range(1, E + 1):
        for idx in _batches(len(Xtr), cfg.batch_size, gen):
            z = model(Xtr[idx])
            y = ytr[idx]
            v = teacher_train[idx] if teacher_train is not None else None
            if method == "ce":
                loss = kt.ce_loss(z, y)
            elif method == "kd":
                loss = kt.kd_loss(z, v, temperature=T, labels=y, kd_weight=0.9,
                                  ce_weight=0.1)
            elif method == "atkd":
                loss = kt.atkd_loss(z, v, labels=y, **kdtemp.presets.atkd)
                if trace:  # the per-sample temperatures the loss used, batch means
                    r = kdtemp.atkd_loss(z.detach().numpy(), v.numpy(), compute_grad=False,
                                         return_temperatures=True, **atkd_args)
                    tr.atkd_teacher_T.append(float(r.teacher_temperature.mean()))
                    tr.atkd_student_T.append(float(r.student_temperature.mean()))
            elif method == "ls":
                loss = kt.atkd_loss(z, v, labels=y, **kdtemp.presets.logit_standardization)
            elif method == "dts":
                loss = kt.kd_loss(z, v, temperature=dts.temperature, labels=y,
                                  kd_weight=0.9, ce_weight=0.1)
            elif method == "dkd":
                loss = kt.dkd_loss(z, v, y, temperature=T, alpha=1.0, beta=8.0,
                                   kd_weight=warm.weight(epoch), ce_weight=1.0)
            else:  # pragma: no cover - checked by _config
                raise ValueError(method)
            step(opt, loss)
            if dts is not None:  # the vision trainer's timing: update after the step
                dts.update(epoch, **kt.ce_stats(z.detach(), v, y))
                if trace:
                    tr.dts_temperature.append(dts.temperature)
        lr_sched.step()
    if dts is not None:
        tr.dts_final = dts.temperature
    return model, tr, time.perf_counter() - t0


def _method_temperature(method: str, cfg: Config, z: np.ndarray, v: np.ndarray,
                        dts_final: Optional[float]) -> Tuple[Any, Any]:
    """(student T, teacher T) the method distils at (scalars or per sample)."""
    import kdtemp

    if method in ("kd", "dkd"):
        return cfg.temperature, cfg.temperature
    if method == "dts":
        return dts_final, dts_final
    if method in ("atkd", "ls"):
        p = kdtemp.presets.atkd if method == "atkd" else kdtemp.presets.logit_standardization
        r = kdtemp.atkd_loss(z, v, compute_grad=False, return_temperatures=True,
                             base_temperature=p["base_temperature"], ddof=p["ddof"],
                             eps=p["eps"])
        return r.student_temperature, r.teacher_temperature
    return 1.0, 1.0


def _evaluate(model, method: str, Xte, teacher_test: np.ndarray, yte: np.ndarray,
              cfg: Config, dts_final: Optional[float]) -> Dict[str, Any]:
    import torch

    import kdtemp

    with torch.no_grad():
        z = model(Xte).numpy().astype(np.float64)
    v = teacher_test
    stats = kdtemp.row_stats(z, labels=yte)
    kl = kdtemp.kd_loss(z, v, temperature=1.0, compute_grad=False).loss
    tS, tT = _method_temperature(method, cfg, z, v, dts_final)
    return {
        "accuracy": stats.batch["accuracy"],
        "test_ce": stats.batch["ce"],
        "kl_T1": float(kl),
        "gap_T1": float(kdtemp.sharpness_gap(z, v)),
        "gap_method_T": float(kdtemp.sharpness_gap(z, v, tS, tT)),
        "method_T_teacher": float(np.mean(tT)),  # mean over test samples
        "method_T_student": float(np.mean(tS)),
        "student_sharpness": stats.batch["sharpness"],
    }


@contextmanager
def _torch_settings(threads: int) -> Iterator[None]:
    import torch

    import kdtemp

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_kd = kdtemp._threads._default
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    kdtemp.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)
        kdtemp.set_num_threads(old_kd)


# --------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------

def _mean_std(xs: Sequence[float]) -> Tuple[float, float]:
    a = np.asarray(xs, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _summaries(runs: List[Dict[str, Any]], cfg: Config) -> List[Dict[str, Any]]:
    out = []
    for w in cfg.teachers:
        for m in cfg.methods:
            rs = [r for r in runs if r["teacher"] == w and r["method"] == m]
            if not rs:
                continue
            acc_m, acc_s = _mean_std([100 * r["accuracy"] for r in rs])
            out.append({
                "teacher": w, "method": m, "name": _NAMES[m], "n_seeds": len(rs),
                "accuracy_mean": acc_m, "accuracy_std": acc_s,
                "kl_T1_mean": _mean_std([r["kl_T1"] for r in rs])[0],
                "gap_T1_mean": _mean_std([r["gap_T1"] for r in rs])[0],
                "gap_method_T_mean": _mean_std([r["gap_method_T"] for r in rs])[0],
                "method_T_teacher_mean": _mean_std([r["method_T_teacher"] for r in rs])[0],
                "method_T_student_mean": _mean_std([r["method_T_student"] for r in rs])[0],
            })
    return out


def _format_tables(summary: List[Dict[str, Any]], teachers_info: List[Dict[str, Any]],
                   cfg: Config) -> str:
    lines = []
    for info in teachers_info:
        w = info["width"]
        lines.append("")
        lines.append(f"Teacher MLP 64-{w}-{w}-10 ({info['params']:,} params): test accuracy "
                     f"{100 * info['accuracy']:.1f}%, mean sharpness lse(v) "
                     f"{info['sharpness_test']:.2f} "
                     f"on test ({info['sharpness_train']:.2f} on train)")
        head = (f"  {'method':<13} {'test acc % (±std)':>18} {'KL(pT||pS) T=1':>15} "
                f"{'gap T=1':>8} {'gap method T':>13}  {'method T (teacher / student)'}")
        lines.append(head)
        lines.append("  " + "-" * (len(head) + 6))
        for s in summary:
            if s["teacher"] != w:
                continue
            acc = f"{s['accuracy_mean']:.2f} ± {s['accuracy_std']:.2f}"
            m = s["method"]
            if m in ("atkd", "ls"):
                what = "std" if m == "atkd" else "2·std"
                t_desc = (f"{what} per sample: {s['method_T_teacher_mean']:.2f} / "
                          f"{s['method_T_student_mean']:.2f} (means)")
            elif m == "dts":
                t_desc = f"final {s['method_T_teacher_mean']:.2f}"
            elif m == "ce":
                t_desc = "1 (no teacher in training)"
            elif m == "annealing":
                t_desc = "1 (phase 1: Phi*v regression)"
            else:
                t_desc = f"{s['method_T_teacher_mean']:g}"
            lines.append(f"  {s['name']:<13} {acc:>18} {s['kl_T1_mean']:>15.3f} "
                         f"{s['gap_T1_mean']:>8.2f} {s['gap_method_T_mean']:>13.3f}  {t_desc}")
    # accuracy by teacher size: the degradation view
    lines.append("")
    lines.append("Student test accuracy (%) by teacher width (mean over seeds):")
    lines.append(f"  {'method':<13}" + "".join(f"{w:>9}" for w in cfg.teachers))
    lines.append(f"  {'(teacher)':<13}" + "".join(f"{100 * i['accuracy']:>9.2f}"
                                                  for i in teachers_info))
    for m in cfg.methods:
        row = [s for s in summary if s["method"] == m]
        lines.append(f"  {_NAMES[m]:<13}" + "".join(f"{s['accuracy_mean']:>9.2f}" for s in row))
    return "\n".join(lines)


def _plot(path: str, result: Dict[str, Any], cfg: Config) -> None:
    from kdtemp.plot import _pyplot

    plt = _pyplot()
    traces = result["trajectories"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), constrained_layout=True)
    colors = {w: f"C{k}" for k, w in enumerate(cfg.teachers)}

    ax = axes[0, 0]
    for k, w in enumerate(cfg.teachers):
        t = traces.get(str(w), {}).get("dts_temperature")
        if t:
            steps = np.arange(len(t))
            ax.plot(steps, t, color=colors[w], ls=("-", "--", ":", "-.")[k % 4],
                    label=f"teacher {w}")
    ax.set(xlabel="training step", ylabel="T", title="DTS temperature (per step, seed 0)")
    if ax.get_lines():
        ax.legend()
    else:
        ax.text(0.5, 0.5, "DTS not run", ha="center", va="center", transform=ax.transAxes)

    ax = axes[0, 1]
    ann = traces.get("annealing")
    if ann:
        ep = np.arange(len(ann["phi"]))
        ax.step(ep, ann["phi"], where="post", color="C0", label="Φ (teacher-logit scale)")
        ax.set(xlabel="epoch", ylabel="Φ", ylim=(0, 1.05),
               title="Annealing-KD schedule (phase 1 regression, then CE)")
        ax2 = ax.twinx()
        ax2.step(ep, ann["T"], where="post", color="C3", ls="--", label="T")
        ax2.set_ylabel("T")
        ax.axvline(ann["phase1_epochs"] - 0.5, color="gray", lw=0.8)
        lines = ax.get_lines()[:1] + ax2.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], loc="center right")
    else:
        ax.text(0.5, 0.5, "Annealing-KD not run", ha="center", va="center",
                transform=ax.transAxes)
        ax.set(title="Annealing-KD schedule")

    ax = axes[1, 0]
    any_atkd = False
    for w in cfg.teachers:
        tr = traces.get(str(w), {})
        if tr.get("atkd_teacher_T"):
            any_atkd = True
            ax.plot(tr["atkd_teacher_T"], color=colors[w], lw=1.0, label=f"teacher {w}: tT")
            ax.plot(tr["atkd_student_T"], color=colors[w], lw=1.0, ls=":",
                    label=f"teacher {w}: student tS")
    ax.set(xlabel="training step", ylabel="mean per-sample temperature (log scale)",
           title="ATKD temperatures std(logits), batch means (seed 0)")
    if any_atkd:
        ax.set_yscale("log")
    if any_atkd:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "ATKD not run", ha="center", va="center", transform=ax.transAxes)

    ax = axes[1, 1]
    x = np.arange(len(cfg.teachers))
    for k, m in enumerate(cfg.methods):
        rows = [s for s in result["summary"] if s["method"] == m]
        ax.errorbar(x + (k - (len(cfg.methods) - 1) / 2) * 0.03, [s["accuracy_mean"] for s in rows],
                    yerr=[s["accuracy_std"] for s in rows], marker="o", capsize=3,
                    label=_NAMES[m], ls="--" if m == "ce" else "-")
    ax.plot(x, [100 * i["accuracy"] for i in result["teachers"]], color="gray", ls=":",
            marker="s", label="teacher")
    ax.set_xticks(x, [str(w) for w in cfg.teachers])
    ax.set(xlabel="teacher width", ylabel="student test accuracy (%)",
           title=f"accuracy per method (mean ± std, {cfg.seeds} seeds)")
    ax.legend(fontsize=8, ncol=2)
    fig.suptitle("kdtemp demo: digits, MLP teachers of growing width → student "
                 f"64-{cfg.student_width}-10")
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    """Run the demo for parsed arguments (see :func:`add_parser`); returns an exit code."""
    try:
        cfg = _config(args)
    except ValueError as e:
        print(f"kdtemp demo: {e}", file=sys.stderr)
        return 2
    try:
        import sklearn  # noqa: F401
        import torch
    except ImportError as e:
        print(f"kdtemp demo needs PyTorch and scikit-learn ({e}): "
              "pip install torch scikit-learn matplotlib tqdm", file=sys.stderr)
        return 2
    import kdtemp

    progress = not (args.quick or args.no_progress) and sys.stderr.isatty()
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    cache_dir = os.path.join(args.out, "cache")
    runs: List[Dict[str, Any]] = []
    teachers_info: List[Dict[str, Any]] = []
    trajectories: Dict[str, Any] = {}
    with _torch_settings(args.threads):
        data = _load_data(cfg)
        Xtr, ytr, Xte, yte = data
        yte_np = yte.numpy()
        print(f"kdtemp demo: digits ({len(Xtr)} train / {len(Xte)} test), teachers "
              f"{', '.join(map(str, cfg.teachers))}, student 64-{cfg.student_width}-10, "
              f"{cfg.seeds} seed(s), {cfg.epochs} epochs, methods {', '.join(cfg.methods)}",
              flush=True)
        teachers = {}
        for w in cfg.teachers:
            t0 = time.perf_counter()
            model, source = _get_teacher(w, data, cfg, cache_dir, not args.no_cache, progress)
            with torch.no_grad():
                v_tr = model(Xtr).detach()
                v_te = model(Xte).numpy().astype(np.float64)
            st_te = kdtemp.row_stats(v_te, labels=yte_np)
            st_tr = kdtemp.row_stats(v_tr.numpy(), labels=ytr.numpy())
            info = {"width": w, "params": _n_params(model), "source": source,
                    "accuracy": st_te.batch["accuracy"],
                    "train_accuracy": st_tr.batch["accuracy"],
                    "sharpness_test": st_te.batch["sharpness"],
                    "sharpness_train": st_tr.batch["sharpness"],
                    "logit_std_train": st_tr.batch["std"],
                    "seconds": time.perf_counter() - t0}
            teachers_info.append(info)
            teachers[w] = (v_tr, v_te)
            print(f"  teacher {w:>5}: {source:<7} test acc {100 * info['accuracy']:.1f}%, "
                  f"train sharpness {info['sharpness_train']:.2f} "
                  f"({info['seconds']:.1f}s)", flush=True)

        n_runs = cfg.seeds * sum(1 if m == "ce" else len(cfg.teachers) for m in cfg.methods)
        bar = _progress(n_runs, "students", progress)
        for m in cfg.methods:
            # CE only does not use the teacher: one run per seed, measured against each
            widths = [None] if m == "ce" else list(cfg.teachers)
            for w in widths:
                for seed in range(cfg.seeds):
                    v_tr = teachers[w][0] if w is not None else None
                    model, tr, secs = _train_student(m, seed, v_tr, data, cfg, trace=seed == 0)
                    dts_final = tr.dts_final
                    for w_eval in (cfg.teachers if w is None else [w]):
                        rec = {"method": m, "teacher": w_eval, "seed": seed,
                               "seconds": secs}
                        rec.update(_evaluate(model, m, Xte, teachers[w_eval][1], yte_np, cfg,
                                             dts_final))
                        if m == "dts":
                            rec["dts_final_T"] = dts_final
                        runs.append(rec)
                    if seed == 0 and w is not None:
                        t = trajectories.setdefault(str(w), {})
                        if tr.dts_temperature:
                            t["dts_temperature"] = tr.dts_temperature
                        if tr.atkd_teacher_T:
                            t["atkd_teacher_T"] = tr.atkd_teacher_T
                            t["atkd_student_T"] = tr.atkd_student_T
                        if tr.annealing_phi:
                            trajectories["annealing"] = {
                                "phi": tr.annealing_phi, "T": tr.annealing_T,
                                "phase1_epochs": cfg.epochs // 2}
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()

    summary = _summaries(runs, cfg)
    elapsed = time.perf_counter() - t_start
    result = {
        "config": asdict(cfg), "quick": bool(args.quick),
        "versions": {"kdtemp": kdtemp.__version__, "torch": torch.__version__,
                     "numpy": np.__version__},
        "teachers": teachers_info, "summary": summary, "runs": runs,
        "trajectories": trajectories, "seconds": elapsed,
    }
    table = _format_tables(summary, teachers_info, cfg)
    print(table)
    print("\nKL(pT||pS) T=1: mean KL from the teacher's to the student's softmax at T=1 on the "
          "test set; gap: mean sharpness gap lse(v/tT) - lse(z/tS) on the test set, at T=1 "
          "and at the temperature the method distils at (CE only and Annealing-KD: 1; DTS: "
          "its final T; ATKD and logit std.: each sample's own).")

    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        cols = ["method", "teacher", "seed", "accuracy", "test_ce", "kl_T1", "gap_T1",
                "gap_method_T", "method_T_teacher", "method_T_student", "student_sharpness",
                "dts_final_T", "seconds"]
        wr = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        wr.writeheader()
        wr.writerows(runs)
    with open(os.path.join(args.out, "results.txt"), "w") as f:
        f.write(table.lstrip("\n") + "\n")
    written = ["results.json", "results.csv", "results.txt"]
    if not args.no_plot:
        try:
            _plot(os.path.join(args.out, "demo.png"), result, cfg)
            written.append("demo.png")
        except ImportError:
            print("matplotlib is not installed: no figure (pip install matplotlib)")
    print(f"\nwrote {', '.join(os.path.join(args.out, w) for w in written)} "
          f"in {elapsed:.1f}s")
    return 0
