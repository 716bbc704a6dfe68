#!/usr/bin/env bash
# Build the kernel fuzzer (fuzz/fuzz_kd.c + csrc kernels) into fuzz/build/:
#   fuzz_kd         libFuzzer + ASan + UBSan, clang (-fsanitize=fuzzer,address,undefined)
#   fuzz_kd_replay  the same checks without libFuzzer, gcc -O3 + ASan + UBSan: replays
#                   files/directories or runs random inputs (-r SECONDS), so the
#                   compiler and flags the extension ships with are covered too.
# Needs clang with compiler-rt (Debian: clang libclang-rt-14-dev libomp-14-dev);
# KDFUZZ_INSTALL=1 installs them with apt-get. CC_FUZZ overrides the clang binary,
# KDFUZZ_CFLAGS adds flags.

set -euo pipefail
cd "$(dirname "$0")/.."
out=fuzz/build
mkdir -p "$out"

if [ "${KDFUZZ_INSTALL:-0}" = 1 ] && ! command -v "${CC_FUZZ:-clang}" >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clang libclang-rt-14-dev libomp-14-dev >/dev/null
fi

CC_FUZZ=${CC_FUZZ:-clang}
srcs="csrc/kd.c csrc/kd_avx2.c csrc/kd_avx512.c csrc/dts.c fuzz/fuzz_kd.c"
# the extension's own math flags; no FMA contraction (dts.h's bitwise twin)
common="${KDFUZZ_CFLAGS:-} -std=c11 -Icsrc -g -fno-omit-frame-pointer -fno-math-errno -fno-trapping-math -ffp-contract=off -Wno-psabi"
san="-fsanitize=address,undefined -fno-sanitize-recover=all"

# clang (14) does not carry kd_avx2.c's `#pragma clang attribute push(target(...))`
# into OpenMP's outlined parallel regions and then rejects the AVX vector
# calls there; compiling kd_avx2.c / kd_avx512.c with their targets' flags gives
# them the same code. (The harness runs a build only on a CPU that has it.)
# Every translation unit compiles in parallel (the kernels' templated bodies
# take a while under the sanitizers).
pids=()
objs=""
for s in $srcs; do
    o="$out/$(basename "${s%.c}").fuzz.o"
    extra=""
    [ "$s" = csrc/kd_avx2.c ] && extra="-mavx2 -mfma"
    [ "$s" = csrc/kd_avx512.c ] && extra="-mavx512f -mavx2 -mfma"
    $CC_FUZZ $common -O1 -fsanitize=fuzzer-no-link $san -fopenmp $extra -c "$s" -o "$o" &
    pids+=($!)
    objs="$objs $o"
done
CC_REPLAY=${CC_REPLAY:-gcc}
robjs=""
for s in $srcs; do
    o="$out/$(basename "${s%.c}").replay.o"
    $CC_REPLAY $common -O3 -DKDFUZZ_MAIN $san -fopenmp -Wall -Wextra -Wno-unused-function \
        -c "$s" -o "$o" &
    pids+=($!)
    robjs="$robjs $o"
done
for p in "${pids[@]}"; do wait "$p"; done
$CC_FUZZ -fsanitize=fuzzer $san -fopenmp $objs -lm -o "$out/fuzz_kd"
echo "built $out/fuzz_kd ($($CC_FUZZ --version | head -1))"
$CC_REPLAY $san -fopenmp $robjs -lm -o "$out/fuzz_kd_replay"
echo "built $out/fuzz_kd_replay ($($CC_REPLAY --version | head -1))"
