#!/usr/bin/env bash
# The test suite (or part of it) under valgrind memcheck, once: the valgrind half of
# the reliability issue (.ci/sanitize.sh is the ASan + UBSan half).
#
#   tools/valgrind.sh [pytest arguments]      # default: the whole suite
#   tools/valgrind.sh tests/test_kd.py -k "not reference and not float64"
#
# Runs `python3 -m pytest -q -p no:cacheprovider -x ARGS` inside
# `valgrind --tool=memcheck` against this checkout's in-place extension (build it
# first: python3 setup.py build_ext --inplace; it has -g from CPython's CFLAGS, so
# stacks show csrc/file.c:line). PYTHONMALLOC=malloc, so every Python object is a
# malloc block memcheck can see; PYTHONUNBUFFERED=1, so progress shows in a CI log.
# One log per process (forked children included) in build/valgrind/logs/vg.PID.log;
# a summary of them is printed at the end.
#
# Fails (exit 1) on any memcheck error (invalid read/write, use of an uninitialised
# value, bad free, ...) in any process, on a "definitely lost" block whose allocation
# stack goes through kdtemp's extension (csrc/ or kdtemp/_kdtemp*.so), or when pytest
# fails. Other definite leaks (CPython, numpy and torch free their import-time objects
# never) are counted but do not fail the run; "possibly lost" and "still reachable"
# blocks are not reported at all. Known false positives outside kdtemp are in
# tools/valgrind.supp; CPython 3.11's _PyLong_New false positive is fixed for the run by
# tools/valgrind_pylong.c (see there), built here into build/valgrind/.
#
# As .ci/sanitize.sh: KDTEMP_TEST_SKIP_HUGE=1 (no > 2**31-element computations) and
# KDTEMP_TEST_LEAK_CALLS=0 (no RSS-based leak tests: memcheck's own bookkeeping grows
# RSS). OMP_NUM_THREADS=2 with OMP_WAIT_POLICY=passive (valgrind runs one thread at a
# time, and a spinning libgomp thread would burn its whole time slice). Processes
# started with exec (subprocess) run natively (no --trace-children).
#
# Time: valgrind is 20-50x slower than native, and importing torch (conftest.py does)
# alone takes about 3 minutes under it. The kernel test files (test_kd, test_ce_softmax,
# test_dkd, test_atkd, test_annealing, test_diagnostics, test_dts, test_bad_input,
# test_determinism, test_reliability: 3,344 tests, 40 s natively) take about 32 minutes
# on one core (measured: 27.5 minutes for the first 2,701 of them); the whole suite
# (2.5 minutes natively) well over an hour. Run one valgrind at a time.
# VALGRIND_TRACK_ORIGINS=yes adds --track-origins (where an uninitialised value came
# from; about 1.5x slower); VALGRIND_EXTRA adds any other valgrind options.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
# the interpreter itself: under a pyenv shim (a shell script) valgrind would check the
# shell, and the python it execs would run natively
PY=$("$PYTHON" -c "import sys; print(sys.executable)")
WORK=$ROOT/build/valgrind
LOGS=$WORK/logs
t0=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - t0 ))s] $*"; }

step "toolchain"
if ! command -v valgrind >/dev/null 2>&1 || [ ! -e /usr/include/valgrind/valgrind.h ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        valgrind gcc >/dev/null
fi
echo "$(valgrind --version), $("$PY" -V) ($PY)"
SO=$("$PY" -c "import kdtemp._kdtemp as m; print(m.__file__)")
case "$SO" in
    "$ROOT"/kdtemp/*) ;;
    *) echo "the tests would import $SO, not this checkout's extension" \
            "(python3 setup.py build_ext --inplace)" >&2; exit 1 ;;
esac
echo "extension: $SO"

mkdir -p "$WORK"
PRELOAD=""
if "$PY" -c "import sys; sys.exit(sys.version_info >= (3, 12))"; then
    PRELOAD=$WORK/valgrind_pylong.so
    gcc -O1 -g -shared -fPIC -I"$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")" \
        tools/valgrind_pylong.c -o "$PRELOAD"
fi

step "pytest under valgrind memcheck (logs in $LOGS)"
rm -rf "$LOGS"
mkdir -p "$LOGS"
VG=(valgrind --tool=memcheck --error-exitcode=1
    --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=none
    --num-callers=40 --fullpath-after="$ROOT/" --suppressions="$ROOT/tools/valgrind.supp"
    --log-file="$LOGS/vg.%p.log")
[ "${VALGRIND_TRACK_ORIGINS:-no}" = yes ] && VG+=(--track-origins=yes)
# shellcheck disable=SC2206
VG+=(${VALGRIND_EXTRA:-})
set +e
env PYTHONMALLOC=malloc PYTHONUNBUFFERED=1 KDTEMP_TEST_SKIP_HUGE=1 KDTEMP_TEST_LEAK_CALLS=0 \
    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive LD_PRELOAD="$PRELOAD${LD_PRELOAD:+ $LD_PRELOAD}" \
    "${VG[@]}" "$PY" -m pytest -q -p no:cacheprovider -x "$@"
rc=$?
set -e

step "valgrind reports"
set +e
"$PY" - "$LOGS" <<'PYEOF'
"""Summarise the memcheck logs: every error in full, definite leaks through kdtemp."""
import glob, os, re, sys

KDTEMP_FRAME = re.compile(r"\((csrc/[^):]+:\d+|in [^)]*kdtemp/_kdtemp[^)]*\.so)\)")
errors = kd_leaks = 0  # (a forked child's summary repeats the errors its parent had before the fork)
for path in sorted(glob.glob(os.path.join(sys.argv[1], "vg.*.log")), key=os.path.getmtime):
    lines = [re.sub(r"^==\d+== ?", "", l.rstrip("\n")) for l in open(path, errors="replace")]
    text = "\n".join(lines)
    blocks = re.split(r"\n\s*\n", text)
    summary = re.search(r"ERROR SUMMARY: (\d+) errors from (\d+) contexts", text)
    definite = re.search(r"definitely lost: ([\d,]+) bytes in ([\d,]+) blocks", text)
    cmd = re.search(r"^Command: (.*)$", text, re.M)
    n = int(summary.group(1)) if summary else -1
    state = summary.group(0) if summary else "no summary (exec'ed an untraced program, or killed)"
    print(f"{os.path.basename(path)}: {state}; "
          f"definitely lost: {definite.group(1) + ' bytes' if definite else '0 bytes'}"
          f"  [{(cmd.group(1)[:80] if cmd else 'forked child')}]")
    for b in blocks:
        b = b.strip()
        first = b.split("\n", 1)[0]
        if re.match(r"(Invalid |Use of uninit|Conditional jump|Syscall param|Mismatched free|"
                    r"Source and destination overlap|Argument '.*' of function|"
                    r"Process terminating|.*(fishy|negative size))", first):
            print("  " + b.replace("\n", "\n  "))
        elif "definitely lost in loss record" in first and KDTEMP_FRAME.search(b):
            kd_leaks += 1
            print("  [kdtemp definite leak]\n  " + b.replace("\n", "\n  "))
    errors += max(n, 0)
print(f"memcheck errors: {errors}; definite leaks through kdtemp's extension: {kd_leaks}")
sys.exit(1 if errors or kd_leaks else 0)
PYEOF
vrc=$?
set -e
[ "$vrc" = 0 ] || { echo "valgrind found errors (see above and $LOGS)" >&2; exit 1; }
[ "$rc" = 0 ] || { echo "pytest under valgrind failed ($rc)" >&2; exit "$rc"; }
step "valgrind memcheck clean"
