"""Shared benchmark harness: kdtemp vs PyTorch CPU vs the NumPy twin.

A benchmark module (``bench_<op>.py``) is a list of :class:`Case` objects named
``CASES`` and two lines that call :func:`main`::

    from common import Case, main, logits_pair, nc_bytes, torch_grad

    CASES = [Case("kl", logits_pair, kdtemp_fn, torch_fn, numpy_fn, nc_bytes(2, 1))]

    if __name__ == "__main__":
        raise SystemExit(main(["bench_kd"]))

For every case, shape, dtype and thread count the harness reports the median
time of kdtemp, of the PyTorch CPU equivalent and of the NumPy twin, the
speed-ups, kdtemp's effective bandwidth (``bytes_moved / time``) against the
machine's copy bandwidth (measured here), and the extra memory one call
allocates (peak RSS above the baseline, in a fresh subprocess). Every row is
appended to ``benchmarks/results/bench.csv``. See ``benchmarks/README.md``.

Nothing here asserts on time.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_CSV = HERE / "results" / "bench.csv"

Shape = Tuple[int, int]
Inputs = Dict[str, Any]

#: Shapes of a full run: small, a batch of short rows, CIFAR/ImageNet-like, and
#: LLM vocabularies (Llama-2 32000 tokens, Qwen2 151936).
FULL_SHAPES: List[Shape] = [(256, 100), (4096, 100), (256, 1000), (2048, 32000), (512, 151936)]
#: ``--quick``: the three small shapes and one medium one.
QUICK_SHAPES: List[Shape] = [(256, 100), (4096, 100), (256, 1000), (128, 8192)]
#: The NumPy twin is skipped above this many logits unless ``--twin-all``.
TWIN_MAX_ELEMENTS = 8_000_000
#: Memory is measured on shapes whose N x C buffer has at least this many bytes
#: (below it, 4 KiB pages and malloc's heap make the numbers meaningless) ...
MEMORY_MIN_BYTES = 512 << 10
#: ... and, in ``--quick``, at least this many logits (the medium shape only).
QUICK_MEMORY_MIN_ELEMENTS = 1_000_000
#: The NumPy floor is timed for shapes whose N x C buffer has at least this
#: many bytes: smaller ones stay in cache, where Python's per-call and
#: per-thread costs are most of what it would measure.
FLOOR_MIN_BYTES = 16 << 20
#: Buffer of the copy-bandwidth measurement.
COPY_BYTES = 256 << 20
#: glibc settings of the memory subprocess: a fixed mmap threshold (which also
#: turns off glibc's dynamic threshold) so that every buffer >= 64 KiB is mapped
#: when allocated and unmapped when freed, and RSS follows live memory.
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=65536"
MEMORY_METHOD = ("peak RSS (VmHWM, reset via /proc/self/clear_refs) above the RSS before "
                 "one call, after a warm-up call and kdtemp.empty_buffer_cache(), in a fresh "
                 "subprocess with glibc mmap_threshold=64KiB; includes the returned gradient")


# ----------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One benchmarked operation.

    name
        Short name, used by ``--only`` and in the table (``"kl"``, ``"ce"``...).
    make_inputs(shape, dtype, rng) -> dict
        The inputs, seeded by ``rng``. NumPy arrays in the dict are handed to
        ``torch_fn`` as tensors sharing their memory (``torch.from_numpy``).
    kdtemp_fn(inputs, n_threads)
        One kdtemp call (loss and gradient where the op has one).
    torch_fn(tensors) or None
        The PyTorch CPU equivalent, gradient included (see :func:`torch_grad`);
        the harness sets ``torch.set_num_threads``.
    numpy_fn(inputs) or None
        The NumPy twin from ``kdtemp.reference`` (single-threaded).
    bytes_moved(shape, dtype) -> int
        Bytes an ideal kernel reads and writes once (e.g. 2 inputs + 1
        gradient); the effective bandwidth is ``bytes_moved / time``.
    kdtemp_out_fn(inputs, n_threads, out) or None
        The kdtemp call writing its (N, C) result into ``out`` (``out=``); timed
        and measured for memory as an extra column.
    """

    name: str
    make_inputs: Callable[[Shape, np.dtype, np.random.Generator], Inputs]
    kdtemp_fn: Callable[[Inputs, int], Any]
    torch_fn: Optional[Callable[[Inputs], Any]]
    numpy_fn: Optional[Callable[[Inputs], Any]]
    bytes_moved: Callable[[Shape, np.dtype], int]
    kdtemp_out_fn: Optional[Callable[[Inputs, int, np.ndarray], Any]] = None


def _logits(shape: Shape, dtype, rng: np.random.Generator, scale: float = 2.0) -> np.ndarray:
    x = rng.standard_normal(shape, dtype=np.dtype(dtype).type)
    x *= scale
    return x


def logits_pair(shape: Shape, dtype, rng: np.random.Generator) -> Inputs:
    """Student and teacher logits, N(0, 2^2), plus labels in [0, C)."""
    return {"student": _logits(shape, dtype, rng), "teacher": _logits(shape, dtype, rng),
            "labels": rng.integers(0, shape[1], size=shape[0], dtype=np.int64)}


def logits_labels(shape: Shape, dtype, rng: np.random.Generator) -> Inputs:
    """Student logits, N(0, 2^2), and labels in [0, C)."""
    return {"student": _logits(shape, dtype, rng),
            "labels": rng.integers(0, shape[1], size=shape[0], dtype=np.int64)}


@dataclass(frozen=True)
class nc_bytes:
    """``bytes_moved`` of ``reads`` N x C arrays read and ``writes`` written
    once, plus ``per_row`` bytes per row; ``(reads, writes)`` also picks the
    NumPy floor the case is compared with (:func:`floor_ops`)."""

    reads: int
    writes: int = 0
    per_row: int = 0

    def __call__(self, shape: Shape, dtype) -> int:
        n, c = shape
        return (self.reads + self.writes) * n * c * np.dtype(dtype).itemsize + self.per_row * n


def torch_grad(loss_fn: Callable[[Any, Inputs], Any]) -> Callable[[Inputs], Any]:
    """A ``torch_fn`` that runs ``loss_fn(z, tensors).backward()`` on a fresh leaf.

    ``z`` is ``tensors["student"]`` as a leaf that requires grad (no copy); the
    function returns ``(loss, z.grad)`` so that the gradient is alive when
    memory is measured, as kdtemp's is.
    """
    def fn(t: Inputs):
        z = t["student"].detach().requires_grad_()
        loss = loss_fn(z, t)
        loss.backward()
        return loss.detach(), z.grad
    return fn


# ----------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------

def n_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read-only: never touch the index
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return "unknown"
        # the results CSV itself is not code: an earlier run's rows leave it modified
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)benchmarks/results"],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _torch():
    try:
        import torch
        return torch
    except ImportError:
        return None


def _loadavg() -> float:
    """The 1-minute load average (how busy the machine was; NaN if unknown)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return float("nan")


def environment() -> Dict[str, Any]:
    import kdtemp
    torch = _torch()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": git_commit(),
        "kdtemp_version": kdtemp.__version__,
        "torch_version": torch.__version__ if torch else "none",
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "cpu_model": cpu_model(),
        "n_cores": n_cores(),
        "loadavg_1min": _loadavg(),
    }


# ----------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TimingPolicy:
    """How many samples: at least ``min_samples``; then stop once ``repeats``
    samples and ``min_time`` seconds are reached, or once ``max_time`` seconds
    are spent, or at ``max_samples``."""

    repeats: int = 7
    min_samples: int = 3
    min_time: float = 0.5
    max_time: float = 5.0
    max_samples: int = 2000


FULL_POLICY = TimingPolicy()
QUICK_POLICY = TimingPolicy(repeats=2, min_samples=1, min_time=0.02, max_time=0.1,
                            max_samples=200)


class Timing(NamedTuple):
    median: float  # seconds
    min: float     # seconds (in the CSV only: the least disturbed sample on a busy machine)
    samples: int


def time_call(fn: Callable[[], Any], policy: TimingPolicy) -> Timing:
    """Median (and min) wall time, in seconds (``time.perf_counter``), of
    ``fn()`` after one warm-up call, and the number of samples. The garbage
    collector is off while timing; the value ``fn`` returns is freed outside the
    timed interval."""
    result = fn()
    del result
    gc_was_enabled = gc.isenabled()
    gc.disable()
    samples: List[float] = []
    try:
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            result = fn()
            t1 = time.perf_counter()
            del result
            samples.append(t1 - t0)
            n, spent = len(samples), t1 - start
            if n >= policy.max_samples:
                break
            if n >= policy.min_samples and spent >= policy.max_time:
                break
            if n >= policy.repeats and spent >= policy.min_time:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(statistics.median(samples), min(samples), len(samples))


# ----------------------------------------------------------------------------
# Copy bandwidth
# ----------------------------------------------------------------------------

def copy_bandwidth(n_threads: int, nbytes: int = COPY_BYTES, repeats: int = 7) -> float:
    """The machine's copy bandwidth in GB/s (1e9 bytes), counting bytes read +
    bytes written, as the effective bandwidth of the kernels does.

    Median of ``np.copyto`` of a ``nbytes`` float64 buffer into a pre-faulted
    one; with ``n_threads > 1``, the buffer is cut into ``n_threads`` contiguous
    slices copied by as many Python threads (``np.copyto`` releases the GIL).
    """
    src = np.ones(nbytes // 8)
    dst = np.zeros_like(src)
    seconds = split_time(lambda s: np.copyto(dst[s], src[s]), src.size, n_threads,
                         TimingPolicy(repeats, repeats, 0.0, 60.0, repeats)).median
    return 2 * nbytes / seconds / 1e9


def split_time(op: Callable[[slice], Any], n_items: int, n_threads: int,
               policy: TimingPolicy) -> Timing:
    """``op`` over ``slice(0, n_items)``, cut into ``n_threads`` contiguous
    slices run by as many Python threads (NumPy releases the GIL)."""
    if n_threads == 1 or n_items < n_threads:
        return time_call(lambda: op(slice(None)), policy)
    bounds = np.linspace(0, n_items, n_threads + 1).astype(int)
    slices = [slice(bounds[i], bounds[i + 1]) for i in range(n_threads)]
    with ThreadPoolExecutor(n_threads) as pool:
        return time_call(lambda: list(pool.map(op, slices)), policy)


def torch_copy_bandwidth(n_threads: int, nbytes: int = COPY_BYTES, repeats: int = 7) -> float:
    """Same as :func:`copy_bandwidth` with ``torch.Tensor.copy_`` (PyTorch's own
    parallel copy) at ``torch.set_num_threads(n_threads)``; printed for reference."""
    torch = _torch()
    if torch is None:
        return float("nan")
    prev = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        src = torch.ones(nbytes // 8, dtype=torch.float64)
        dst = torch.zeros_like(src)

        def run() -> None:
            dst.copy_(src)
        seconds = time_call(run, TimingPolicy(repeats, repeats, 0.0, 60.0, repeats)).median
    finally:
        torch.set_num_threads(prev)
    return 2 * nbytes / seconds / 1e9


# ----------------------------------------------------------------------------
# Floor: NumPy moving the same arrays
# ----------------------------------------------------------------------------

FLOOR_METHOD = ("median of NumPy ops that read and write the case's N x C arrays once, "
                "(reads, writes): (1, 0) x.max(axis=1); (2, 0) that and y.max(axis=1); "
                "(1, 1) np.multiply(x, 2, out=o); (2, 1) np.subtract(x, y, out=o); o "
                "pre-faulted; n threads = n Python threads each taking 1/n of the rows")


def floor_ops(shape: Shape, dtype, io: Tuple[int, int]) -> Callable[[slice], Any]:
    """One NumPy op per (reads, writes) that touches the arrays as a kernel
    with that many N x C inputs and outputs must, on rows ``s``: the time
    below which a kernel with ordinary (cached) stores cannot go."""
    x = np.ones(shape, dtype)
    y = np.ones(shape, dtype) if io[0] == 2 else None
    o = np.zeros(shape, dtype) if io[1] else None
    ops = {
        (1, 0): lambda s: x[s].max(axis=1),
        (2, 0): lambda s: (x[s].max(axis=1), y[s].max(axis=1)),
        (1, 1): lambda s: np.multiply(x[s], 2, out=o[s]),
        (2, 1): lambda s: np.subtract(x[s], y[s], out=o[s]),
    }
    return ops[io]



# ----------------------------------------------------------------------------
# Memory (run in a subprocess: ``python common.py --memory-worker SPEC``)
# ----------------------------------------------------------------------------

def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _extra_bytes(fn: Callable[[], Any]) -> int:
    """Peak RSS during ``fn()`` (its result kept alive) minus RSS before it."""
    result = fn()  # warm-up: lazy initialisation, thread pools, code pages
    del result
    gc.collect()
    # the warm-up's gradient now sits in kdtemp's buffer cache: freed, so
    # that the call below counts the memory it takes
    if "kdtemp" in sys.modules:
        sys.modules["kdtemp"].empty_buffer_cache()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    result = fn()
    peak = _status_kb("VmHWM")
    del result
    gc.collect()
    return max(0, peak - before) * 1024


def _memory_worker(spec_json: str) -> None:
    spec = json.loads(spec_json)
    sys.path.insert(0, str(HERE))
    mod = importlib.import_module(spec["module"])
    shape, dtype, n = tuple(spec["shape"]), np.dtype(spec["dtype"]), spec["threads"]
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(n)
    nc = shape[0] * shape[1] * dtype.itemsize
    out: Dict[str, Any] = {
        "check_numpy": _extra_bytes(lambda: np.ones(shape, dtype)) / nc,
        "check_torch": (_extra_bytes(lambda: torch.ones(shape, dtype=getattr(torch, dtype.name)))
                        / nc) if torch is not None else None,
        "cases": {},
    }
    for case in mod.CASES:
        if case.name not in spec["cases"]:
            continue
        inputs = case.make_inputs(shape, dtype, np.random.default_rng(spec["seed"]))
        res: Dict[str, Optional[int]] = {}
        res["kdtemp"] = _extra_bytes(lambda: case.kdtemp_fn(inputs, n))
        if case.kdtemp_out_fn is not None:
            buf = np.zeros(shape, dtype)
            res["kdtemp_out"] = _extra_bytes(lambda: case.kdtemp_out_fn(inputs, n, buf))
            del buf
        if torch is not None and case.torch_fn is not None:
            tin = to_torch(inputs)
            res["torch"] = _extra_bytes(lambda: case.torch_fn(tin))
            del tin
        del inputs
        gc.collect()
        out["cases"][case.name] = res
    print(json.dumps(out))


def measure_memory(module: str, cases: Sequence[Case], shape: Shape, dtype, n_threads: int,
                   seed: int) -> Dict[str, Any]:
    """Run the memory worker for ``cases`` of ``module``; {} with "error" on failure."""
    spec = {"module": module, "cases": [c.name for c in cases], "shape": list(shape),
            "dtype": np.dtype(dtype).name, "threads": n_threads, "seed": seed}
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), MALLOC_TUNABLES]))
    try:
        proc = subprocess.run([sys.executable, str(HERE / "common.py"), "--memory-worker",
                               json.dumps(spec)], env=env, capture_output=True, text=True,
                              timeout=1800)
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"memory worker failed: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------

def to_torch(inputs: Inputs) -> Inputs:
    """NumPy arrays as tensors sharing memory; everything else as is."""
    torch = _torch()
    return {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v)
            for k, v in inputs.items()}


def _parse_shapes(text: str) -> List[Shape]:
    shapes = []
    for item in text.split(","):
        n, c = item.lower().split("x")
        shapes.append((int(n), int(c)))
    return shapes


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="kdtemp benchmarks: medians of kdtemp vs PyTorch CPU vs the NumPy twin.")
    p.add_argument("--quick", action="store_true",
                   help="small shapes + one medium shape, 1-2 repeats (under a minute)")
    p.add_argument("--only", default="",
                   help="comma-separated case names (e.g. kl,ce) or module names (bench_kd)")
    p.add_argument("--threads", default="",
                   help="comma-separated thread counts (default: 1 and all cores)")
    p.add_argument("--dtype", default="float32", help="float32, float64 or float32,float64")
    p.add_argument("--shapes", default="", help="override shapes, e.g. 256x100,2048x32000")
    p.add_argument("--repeats", type=int, default=0, help="override the repeat count")
    p.add_argument("--twin-all", action="store_true",
                   help=f"also time the NumPy twin above {TWIN_MAX_ELEMENTS:,} logits (slow)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list", action="store_true", help="list the modules and cases, run nothing")
    p.add_argument("--csv", default=str(DEFAULT_CSV), help="CSV file the rows are appended to")
    p.add_argument("--no-csv", action="store_true", help="do not append to the CSV")
    return p.parse_args(argv)


CSV_FIELDS = [
    "date", "git_commit", "kdtemp_version", "torch_version", "numpy_version", "python_version",
    "cpu_model", "n_cores", "loadavg_1min", "quick", "module", "case", "n", "c", "dtype",
    "threads", "kdtemp_ms", "kdtemp_out_ms", "torch_ms", "numpy_ms", "speedup_vs_torch",
    "speedup_vs_numpy", "bytes_moved", "kdtemp_gbps", "copy_gbps", "bw_fraction",
    "kdtemp_samples", "torch_samples", "numpy_samples", "kdtemp_min_ms", "kdtemp_out_min_ms",
    "torch_min_ms", "numpy_min_ms", "kdtemp_peak_mb", "kdtemp_out_peak_mb",
    "torch_peak_mb", "nc_buffer_mb", "memory_method", "copy_method",
    "floor_ms", "floor_io", "torch_over_floor", "floor_method",
]
COPY_METHOD = ("np.copyto of a 256 MiB float64 buffer (median); n threads = n Python threads "
               "each copying 1/n of it; GB/s counts bytes read + written")


def append_csv(path: Path, rows: List[Dict[str, Any]]) -> Path:
    """Append ``rows``; a file whose header differs is left alone and the rows
    go to a new dated file next to it (returned)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > 0:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != CSV_FIELDS:
            path = path.with_name(f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})
    return path


def _ms(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else (f"{x:.2f}" if x < 100 else f"{x:.1f}")


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _mb(nbytes: Optional[float], fmt: str = ".2f") -> str:
    return "-" if nbytes is None else format(nbytes / 1e6, fmt)


TIME_COLS = [("case", 15), ("N x C", 12), ("dtype", 7), ("thr", 3), ("kdtemp ms", 10),
             ("out= ms", 9), ("torch ms", 9), ("numpy ms", 9), ("vs torch", 8),
             ("vs numpy", 8), ("GB/s", 6), ("% copy", 6), ("floor ms", 9),
             ("ceiling", 8)]
MEM_COLS = [("case", 15), ("N x C", 12), ("dtype", 7), ("kdtemp MB", 10), ("x NC", 6),
            ("out= MB", 9), ("x NC", 6), ("torch MB", 9), ("x NC", 6), ("torch/kdtemp", 12)]


def _line(cols, values) -> str:
    return "  ".join(str(v).rjust(w) if i else str(v).ljust(w)
                     for i, ((_, w), v) in enumerate(zip(cols, values)))


def _header(cols) -> str:
    head = _line(cols, [name for name, _ in cols])
    return head + "\n" + "-" * len(head)


def _select(modules, only: str):
    """[(module name, [cases])] after ``--only``; unknown names are an error."""
    wanted = {w.strip() for w in only.split(",") if w.strip()}
    known = set()
    chosen = []
    for name, mod in modules:
        known.add(name)
        known.add(name.replace("bench_", ""))
        names = {c.name for c in mod.CASES}
        known |= names
        if not wanted or name in wanted or name.replace("bench_", "") in wanted:
            cases = list(mod.CASES)
        else:
            cases = [c for c in mod.CASES if c.name in wanted]
        if cases:
            chosen.append((name, cases))
    unknown = wanted - known
    if unknown:
        raise SystemExit(f"--only: unknown name(s) {sorted(unknown)}; known: {sorted(known)}")
    return chosen


def main(module_names: Sequence[str], argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``CASES`` of the named modules (file stems in ``benchmarks/``)."""
    if "OMP_WAIT_POLICY" not in os.environ and argv is None:
        # kdtemp's and PyTorch's OpenMP runtimes both spin-wait by default;
        # on a machine they share (2 cores here) each one's spinning threads
        # stall the other's team by whole scheduler slices. Both runtimes read
        # this when they start, so the process starts again with it set;
        # OMP_WAIT_POLICY=active ... measures the default instead.
        env = dict(os.environ, OMP_WAIT_POLICY="passive")
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    args = parse_args(argv)
    sys.path.insert(0, str(HERE))
    modules = []
    for m in module_names:
        try:
            modules.append((m, importlib.import_module(m)))
        except Exception as exc:  # one broken bench must not stop the others
            print(f"warning: {m} skipped, it failed to import: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
    selected = _select(modules, args.only)
    if args.list:
        for name, cases in selected:
            print(f"{name}: {', '.join(c.name for c in cases)}")
        return 0
    torch = _torch()
    cores = n_cores()
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else sorted({1, cores}))
    dtypes = [np.dtype(d.strip()) for d in args.dtype.split(",")]
    policy = QUICK_POLICY if args.quick else FULL_POLICY
    if args.repeats:
        policy = TimingPolicy(args.repeats, min(policy.min_samples, args.repeats),
                              policy.min_time, policy.max_time, policy.max_samples)
    env = environment()
    env["quick"] = int(args.quick)

    print(f"kdtemp {env['kdtemp_version']} | torch {env['torch_version']} | numpy "
          f"{env['numpy_version']} | Python {env['python_version']} | commit {env['git_commit']}")
    import kdtemp
    cache = kdtemp.buffer_cache_info()["limit"]
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')} | kdtemp buffer "
          f"cache {cache >> 20} MiB" + (" (returned gradients reuse freed blocks; "
                                         "KDTEMP_BUFFER_CACHE=0 turns that off)" if cache else
                                         " (off: every gradient gets fresh pages)") +
          f" | next-row prefetch up to {kdtemp._kdtemp._prefetch_bytes() >> 10} KiB")
    print(f"{env['cpu_model']}, {cores} cores | {env['date']} | load average "
          f"{env['loadavg_1min']}" + ("  (machine busy: timings may be noisy)"
                                       if env["loadavg_1min"] > 0.5 else ""))
    copy_bw = {}
    for n in threads:
        copy_bw[n] = copy_bandwidth(n, repeats=3 if args.quick else 7)
        ref = ""
        if not args.quick and torch is not None:
            ref = f"; for reference torch copy_ at n_threads={n}: {torch_copy_bandwidth(n):.1f} GB/s"
        print(f"copy bandwidth, {n} thread{'s' if n > 1 else ''}: {copy_bw[n]:.1f} GB/s "
              f"(np.copyto, 256 MiB, {'1 thread' if n == 1 else f'{n} Python threads'}"
              f"{ref})")
    print("times: median ms, after a warm-up call (time.perf_counter). kdtemp: n_threads=thr; "
          "torch: torch.set_num_threads(thr);\n  numpy: the single-threaded NumPy twin "
          "(kdtemp.reference), timed once per shape. GB/s = bytes_moved / kdtemp time; "
          "% copy = of the copy bandwidth at thr.\n  floor ms: NumPy reading and writing the "
          "same N x C arrays once (x.max(axis=1) per array read, np.multiply/np.subtract with "
          "out= when one is written;\n  thr Python threads; N x C buffers of 16 MiB and up); "
          "ceiling = torch ms / floor ms, the most a kernel with cached stores\n  could get "
          "against PyTorch here.")
    if not args.no_memory:
        print(f"memory: {MEMORY_METHOD}.")

    csv_path = Path(args.csv)
    written = csv_path
    floors: Dict[Any, Dict[int, Timing]] = {}
    t_start = time.perf_counter()
    for mod_name, cases in selected:
        mod = dict(modules)[mod_name]
        if args.shapes:
            shapes = _parse_shapes(args.shapes)
        elif args.quick:
            shapes = list(getattr(mod, "QUICK_SHAPES", QUICK_SHAPES))
        else:
            shapes = list(getattr(mod, "SHAPES", FULL_SHAPES))
        print(f"\n== {mod_name} ==")
        print(_header(TIME_COLS))
        mem_lines: List[str] = []
        for dtype in dtypes:
            for shape in shapes:
                n, c = shape
                mem: Dict[str, Any] = {}
                if not args.no_memory and n * c * dtype.itemsize >= MEMORY_MIN_BYTES and (
                        not args.quick or n * c >= QUICK_MEMORY_MIN_ELEMENTS):
                    mem = measure_memory(mod_name, cases, shape, dtype, max(threads), args.seed)
                    mem_lines.append(_memory_check_line(mem, shape, dtype))
                rows: List[Dict[str, Any]] = []
                for case in cases:
                    cm = mem.get("cases", {}).get(case.name, {})
                    for m in _time_case(case, shape, dtype, threads, policy, args, floors):
                        print(_table_row(m, copy_bw), flush=True)
                        rows.append(_csv_row(m, env, mod_name, copy_bw, cm))
                    if cm:
                        mem_lines.append(_memory_row(case.name, shape, dtype, cm))
                if not args.no_csv:
                    written = append_csv(csv_path, rows)
        if mem_lines:
            print(f"\npeak extra memory of one call, {mod_name} (n_threads={max(threads)}; "
                  "x NC = in units of one N x C buffer of the dtype; shapes whose buffer is "
                  f"under {MEMORY_MIN_BYTES >> 10} KiB{' or under 1M logits' if args.quick else ''}"
                  " not measured):")
            print(_header(MEM_COLS))
            print("\n".join(mem_lines))
    if not args.no_csv:
        print(f"\nrows appended to {written}")
    print(f"total {time.perf_counter() - t_start:.1f} s; load average at the end {_loadavg()}")
    return 0


def _time_case(case: Case, shape: Shape, dtype, threads: Sequence[int], policy: TimingPolicy,
               args: argparse.Namespace, floors: Dict[Any, Dict[int, Timing]]):
    """Yield one dict of measurements (seconds) per thread count; ``floors``
    keeps the floor timings of the shape for the next case."""
    torch = _torch()
    n, c = shape
    inputs = case.make_inputs(shape, dtype, np.random.default_rng(args.seed))
    tin = to_torch(inputs) if torch is not None and case.torch_fn is not None else None
    twin = case.numpy_fn is not None and (args.twin_all or n * c <= TWIN_MAX_ELEMENTS)
    numpy_t = None
    if twin:  # single-threaded: timed once per shape
        numpy_t = time_call(lambda: case.numpy_fn(inputs), policy)
    out_buf = (np.zeros(shape, dtype) if case.kdtemp_out_fn is not None
               and not args.quick else None)  # out= timing: full runs only
    io = (case.bytes_moved.reads, case.bytes_moved.writes)
    key = (shape, np.dtype(dtype), io)
    if n * c * np.dtype(dtype).itemsize < FLOOR_MIN_BYTES:
        floors[key] = dict.fromkeys(threads)
    elif key not in floors:
        if any(k[:2] != (shape, np.dtype(dtype)) for k in floors):
            floors.clear()  # the timings of one shape at a time
        op = floor_ops(shape, dtype, io)
        floors[key] = {thr: split_time(op, n, thr, policy) for thr in threads}
        del op
    for thr in threads:
        m: Dict[str, Any] = dict(case=case.name, shape=shape, dtype=np.dtype(dtype), threads=thr,
                                 bytes_moved=case.bytes_moved(shape, dtype),
                                 numpy=numpy_t, kdtemp=None, torch=None, out=None,
                                 floor=floors[key][thr], floor_io=io,
                                 numpy_status="" if twin else (
                                     "skipped" if case.numpy_fn is not None else "-"),
                                 )
        m["kdtemp"] = time_call(lambda: case.kdtemp_fn(inputs, thr), policy)
        if out_buf is not None:
            m["out"] = time_call(lambda: case.kdtemp_out_fn(inputs, thr, out_buf), policy)
        if tin is not None:
            prev = torch.get_num_threads()
            torch.set_num_threads(thr)
            try:
                m["torch"] = time_call(lambda: case.torch_fn(tin), policy)
            finally:
                torch.set_num_threads(prev)
        yield m
    del inputs, tin, out_buf
    gc.collect()


def _med_ms(t: Optional[Timing]) -> Optional[float]:
    return t.median * 1e3 if t else None


def _table_row(m: Dict[str, Any], copy_bw: Dict[int, float]) -> str:
    n, c = m["shape"]
    k_ms, t_ms, np_ms = _med_ms(m["kdtemp"]), _med_ms(m["torch"]), _med_ms(m["numpy"])
    gbps = m["bytes_moved"] / m["kdtemp"].median / 1e9
    return _line(TIME_COLS, [
        m["case"], f"{n}x{c}", m["dtype"].name, m["threads"], _ms(k_ms), _ms(_med_ms(m["out"])),
        _ms(t_ms), _ms(np_ms) if np_ms else m["numpy_status"], _ratio(t_ms, k_ms),
        _ratio(np_ms, k_ms), f"{gbps:.2f}", f"{100 * gbps / copy_bw[m['threads']]:.1f}",
        _ms(_med_ms(m["floor"])), _ratio(t_ms, _med_ms(m["floor"]))])


def _csv_row(m: Dict[str, Any], env: Dict[str, Any], module: str, copy_bw: Dict[int, float],
             cm: Dict[str, Any]) -> Dict[str, Any]:
    n, c = m["shape"]
    k_ms, t_ms, np_ms = _med_ms(m["kdtemp"]), _med_ms(m["torch"]), _med_ms(m["numpy"])
    gbps = m["bytes_moved"] / m["kdtemp"].median / 1e9
    cbw = copy_bw[m["threads"]]

    def num(t: Optional[Timing], field: str, scale: float = 1e3) -> str:
        return f"{getattr(t, field) * scale:.6g}" if t else ""
    return dict(
        env, loadavg_1min=_loadavg(), module=module, case=m["case"], n=n, c=c,
        dtype=m["dtype"].name, threads=m["threads"],
        kdtemp_ms=num(m["kdtemp"], "median"), kdtemp_out_ms=num(m["out"], "median"),
        torch_ms=num(m["torch"], "median"),
        numpy_ms=num(m["numpy"], "median") or m["numpy_status"].strip("-"),
        speedup_vs_torch=f"{t_ms / k_ms:.4g}" if t_ms else "",
        speedup_vs_numpy=f"{np_ms / k_ms:.4g}" if np_ms else "",
        bytes_moved=m["bytes_moved"], kdtemp_gbps=f"{gbps:.4g}", copy_gbps=f"{cbw:.4g}",
        bw_fraction=f"{gbps / cbw:.4g}", kdtemp_samples=num(m["kdtemp"], "samples", 1),
        torch_samples=num(m["torch"], "samples", 1), numpy_samples=num(m["numpy"], "samples", 1),
        kdtemp_min_ms=num(m["kdtemp"], "min"), kdtemp_out_min_ms=num(m["out"], "min"),
        torch_min_ms=num(m["torch"], "min"), numpy_min_ms=num(m["numpy"], "min"),
        kdtemp_peak_mb=_mb(cm.get("kdtemp"), ".6g") if cm else "",
        kdtemp_out_peak_mb=_mb(cm.get("kdtemp_out"), ".6g") if cm else "",
        torch_peak_mb=_mb(cm.get("torch"), ".6g") if cm else "",
        nc_buffer_mb=f"{n * c * m['dtype'].itemsize / 1e6:.6g}",
        memory_method=MEMORY_METHOD if cm else "", copy_method=COPY_METHOD,
        floor_ms=num(m["floor"], "median"), floor_io="{}/{}".format(*m["floor_io"]),
        torch_over_floor=(f"{m['torch'].median / m['floor'].median:.4g}"
                          if m["torch"] and m["floor"] else ""),
        floor_method=FLOOR_METHOD if m["floor"] else "")


def _memory_check_line(mem: Dict[str, Any], shape: Shape, dtype) -> str:
    n, c = shape
    if "error" in mem:
        return f"{'(error)':15}  {f'{n}x{c}':>12}  {np.dtype(dtype).name:>7}  {mem['error']}"
    tc = mem["check_torch"]
    return (f"{'(method check)':15}  {f'{n}x{c}':>12}  {np.dtype(dtype).name:>7}  "
            f"np.ones((N, C)) measures {mem['check_numpy']:.2f} x NC, torch.ones "
            f"{'-' if tc is None else f'{tc:.2f}'} x NC")


def _memory_row(name: str, shape: Shape, dtype, cm: Dict[str, Any]) -> str:
    n, c = shape
    nc = n * c * np.dtype(dtype).itemsize

    def frac(key: str) -> str:
        v = cm.get(key)
        return "-" if v is None else f"{v / nc:.2f}"
    k_b, t_b = cm.get("kdtemp"), cm.get("torch")
    return _line(MEM_COLS, [name, f"{n}x{c}", np.dtype(dtype).name, _mb(k_b), frac("kdtemp"),
                            _mb(cm.get("kdtemp_out")), frac("kdtemp_out"), _mb(t_b),
                            frac("torch"), _ratio(t_b, k_b)])

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-worker":
        _memory_worker(sys.argv[2])
    else:
        raise SystemExit("common.py is the harness; run benchmarks/run.py or a bench_*.py")
