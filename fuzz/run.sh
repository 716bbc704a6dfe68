#!/usr/bin/env bash
# Bounded fuzz run: fuzz/run.sh SECONDS [extra libFuzzer flags...]
#
# 1. builds fuzz/build/fuzz_kd{,_replay} with fuzz/build.sh when they are missing or
#    older than the sources or settings (FUZZ_REBUILD=1 forces it);
# 2. replays the seed corpus fuzz/corpus and the inputs of past findings
#    (fuzz/regressions) with the gcc -O3 ASan/UBSan build;
# 3. runs libFuzzer for SECONDS on a scratch copy of the corpus (fuzz/corpus is only
#    read; new inputs go to fuzz/build/corpus-new, crashes to fuzz/build/artifacts/).
# Exits non-zero on any crash, sanitizer report, failed check or hang (> 60 s input).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
out=fuzz/build
# rebuild when the sources or the build settings changed since the last build
stamp=$(cat csrc/*.c csrc/*.h fuzz/fuzz_kd.c fuzz/build.sh | sha1sum | cut -c1-40)
stamp="$stamp cflags=${KDFUZZ_CFLAGS:-}"
if [ "${FUZZ_REBUILD:-0}" = 1 ] || [ ! -x "$out/fuzz_kd" ] || [ ! -x "$out/fuzz_kd_replay" ] ||
   [ "$(cat "$out/stamp" 2>/dev/null)" != "$stamp" ]; then
    fuzz/build.sh
    echo "$stamp" > "$out/stamp"
fi
export KDFUZZ_CRASH_FILE="$out/artifacts/replay-crash.bin"
mkdir -p "$out/artifacts"
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

echo "== replaying fuzz/corpus and fuzz/regressions with the gcc build"
"$out/fuzz_kd_replay" fuzz/corpus fuzz/regressions

echo "== libFuzzer, ${secs}s"
mkdir -p "$out/corpus-new"
set +e
"$out/fuzz_kd" -max_total_time="$secs" -timeout=60 -max_len=1024 -rss_limit_mb=4096 \
    -print_final_stats=1 -artifact_prefix="$out/artifacts/" "$@" \
    "$out/corpus-new" fuzz/corpus fuzz/regressions 2>&1 | tee "$out/fuzz.log" | grep -v -E '^#[0-9]+ +(NEW|REDUCE|pulse)'
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" != 0 ]; then
    echo "fuzz/run.sh: libFuzzer exited $rc; the input is in $out/artifacts/ (replay it:" \
         "KDFUZZ_VERBOSE=1 $out/fuzz_kd_replay $out/artifacts/<file>)" >&2
    exit "$rc"
fi
echo "fuzz/run.sh: clean ($(grep -E -o 'Done [0-9]+ runs in [0-9]+ second' "$out/fuzz.log" | tail -1)s)"
