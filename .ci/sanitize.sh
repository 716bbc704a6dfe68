#!/usr/bin/env bash
# CI step: the test suite against an AddressSanitizer + UBSan build of the
# extension, then a bounded libFuzzer run of the C kernels.
#
#   .ci/sanitize.sh [FUZZ_SECONDS] [-- extra pytest arguments]
#
# The sanitizer build lives in its own copy of the source tree
# (build/sanitize/src, from `git ls-files`), so the normal in-place extension of
# this checkout is never touched. The suite runs there with gcc's libasan
# preloaded into the Python interpreter (ASAN_OPTIONS=detect_leaks=0: CPython
# itself does not free everything at exit) and UBSan set to stop at the first
# report. Under the sanitizers the tests skip the two multi-second > 2**31-element
# computations (KDTEMP_TEST_SKIP_HUGE=1) and the RSS-based leak tests
# (KDTEMP_TEST_LEAK_CALLS=0; ASan's quarantine grows RSS by design); everything
# else runs (about 3 minutes on 2 cores). Then fuzz/run.sh builds the fuzzer and
# runs it for FUZZ_SECONDS (60). About 6 minutes in all, plus apt-get on a fresh
# machine.
#
# On a fresh Debian/Ubuntu machine it installs what it needs with apt-get
# (gcc's sanitizer runtimes, clang with compiler-rt/libFuzzer, LLVM's OpenMP).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ_SECONDS=60
if [ $# -gt 0 ] && [ "$1" != "--" ]; then FUZZ_SECONDS=$1; shift; fi
[ "${1:-}" = "--" ] && shift
PYTHON=${PYTHON:-python3}
WORK=$ROOT/build/sanitize
SRC=$WORK/src
t0=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - t0 ))s] $*"; }

# ---- packages -------------------------------------------------------------------
step "toolchain"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
have_fuzzer() {
    command -v clang >/dev/null 2>&1 &&
        [ -e "$(clang -print-file-name=libclang_rt.fuzzer-x86_64.a 2>/dev/null)" ] &&
        echo 'int main(void){int n=0;
#pragma omp parallel reduction(+:n)
n+=1; return n<1;}' | clang -fopenmp -x c - -o /tmp/kdtemp-omp-probe 2>/dev/null
}
have_asan() { [ -e "$(gcc -print-file-name=libasan.so)" ] && [ -e "$(gcc -print-file-name=libubsan.so)" ]; }
if ! have_fuzzer || ! have_asan; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        gcc clang libclang-rt-dev libomp-dev >/dev/null
fi
have_asan || { echo "gcc's libasan/libubsan are missing" >&2; exit 1; }
LIBASAN=$(gcc -print-file-name=libasan.so)
# libstdc++ next to it: ASan's __cxa_throw interceptor needs the real one at start-up
# (C++ extensions such as matplotlib's and torch's throw exceptions)
LIBSTDCXX=$(gcc -print-file-name=libstdc++.so.6)
echo "gcc $(gcc -dumpversion), $(clang --version | head -1), libasan $LIBASAN"

# ---- the sanitizer build, in a copy of the tree -------------------------------------
step "ASan + UBSan build of the extension in $SRC"
rm -rf "$SRC"
mkdir -p "$SRC"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$SRC"
(cd "$SRC" && KDTEMP_SANITIZE=1 KDTEMP_FAIL_NO_OPENMP=1 \
    "$PYTHON" setup.py -q build_ext --inplace -j 2 2>&1 | grep -v -i -E "deprecat|^\s*\*+|^$" || true)
SO=$(ls "$SRC"/kdtemp/_kdtemp*.so)
# grep reads all of ldd's output: with -q it would stop at the match, and ldd
# (the loader writes a line at a time) could die of SIGPIPE, failing the
# pipeline under pipefail (it did in 4 of 100 tries on a busy 2-core VM)
ldd "$SO" | grep libasan >/dev/null || { echo "$SO is not linked with ASan" >&2; exit 1; }

export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:detect_odr_violation=0:alloc_dealloc_mismatch=0:new_delete_type_mismatch=0:handle_segv=1:print_summary=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:report_error_type=1"
run_san() { (cd "$SRC" && LD_PRELOAD="$LIBASAN $LIBSTDCXX" "$@"); }
got=$(run_san "$PYTHON" -c "import kdtemp._kdtemp as m; print(m.__file__)")
[ "$got" = "$SO" ] || { echo "the tests would import $got, not $SO" >&2; exit 1; }

# ---- the suite under the sanitizers ---------------------------------------------------
step "pytest under ASan + UBSan"
LOG=$WORK/pytest.log
set +e
run_san env KDTEMP_TEST_SKIP_HUGE=1 KDTEMP_TEST_LEAK_CALLS=0 \
    "$PYTHON" -m pytest -q -p no:cacheprovider -x "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
if grep -q -E "runtime error:|ERROR: AddressSanitizer|ERROR: LeakSanitizer" "$LOG"; then
    echo "sanitizer report in the test run (see $LOG)" >&2
    exit 1
fi
[ "$rc" = 0 ] || { echo "pytest under the sanitizers failed ($rc)" >&2; exit "$rc"; }

# ---- bounded fuzzing ------------------------------------------------------------------------
step "fuzzing the kernels for ${FUZZ_SECONDS}s"
FUZZ_REBUILD=1 fuzz/run.sh "$FUZZ_SECONDS"

step "sanitizers and fuzzer clean"
