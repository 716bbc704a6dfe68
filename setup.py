"""Build the C extension kdtemp._kdtemp.

OpenMP is probed by compiling and running a tiny program (as scikit-learn's
openmp_helpers does). Without it the extension builds serial with a warning;
KDTEMP_FAIL_NO_OPENMP=1 makes that an error. KDTEMP_SANITIZE=1 adds
AddressSanitizer and UBSan for debugging builds.
"""
import os
import subprocess
import sys
import sysconfig
import tempfile
import warnings

import numpy as np
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_PROBE = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel num_threads(2) reduction(+:n)
    n += 1;
    printf("%d\n", n);
    return n == 2 ? 0 : 1;
}
"""


def _openmp_flags(compiler):
    """Compile and run OPENMP_PROBE; return (compile_args, link_args) or None."""
    cc = compiler.compiler_so[0] if hasattr(compiler, "compiler_so") else "cc"
    if compiler.compiler_type == "msvc":
        candidates = [(["/openmp"], [])]
    elif sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]), (["-fopenmp"], ["-fopenmp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        for cflags, lflags in candidates:
            try:
                subprocess.run([cc, *cflags, src, "-o", exe, *lflags], check=True,
                               capture_output=True)
                out = subprocess.run([exe], check=True, capture_output=True, text=True)
                if out.stdout.strip() == "2":
                    return cflags, lflags
            except (OSError, subprocess.CalledProcessError):
                continue
    return None


class BuildExt(build_ext):
    def build_extensions(self):
        flags = _openmp_flags(self.compiler)
        if flags is None:
            msg = "kdtemp: OpenMP not found; building the kernels single-threaded"
            if os.environ.get("KDTEMP_FAIL_NO_OPENMP") == "1":
                raise RuntimeError(msg + " (KDTEMP_FAIL_NO_OPENMP=1)")
            warnings.warn(msg)
            flags = ([], [])
        cflags, lflags = flags
        extra_c = ["-std=c11", "-O3", "-Wall", "-Wextra", "-Wno-unused-function", "-Wno-psabi",
                   "-fno-math-errno", "-fno-trapping-math"]
        extra_l = []
        if os.environ.get("KDTEMP_SANITIZE") == "1":
            san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
            extra_c += san
            extra_l += san
        for ext in self.extensions:
            ext.extra_compile_args = extra_c + cflags
            ext.extra_link_args = extra_l + lflags
        super().build_extensions()


setup(
    ext_modules=[
        Extension(
            "kdtemp._kdtemp",
            sources=["csrc/_kdtemp_module.c", "csrc/kd.c", "csrc/kd_avx2.c", "csrc/kd_avx512.c",
                     "csrc/dts.c", "csrc/buffer_cache.c"],
            depends=["csrc/kd.h", "csrc/kd_impl.h", "csrc/kd_math.h", "csrc/kd_common.h",
                     "csrc/kd_kernels.h", "csrc/kd_isa.h", "csrc/kd_div.h",
                     "csrc/annealing.h", "csrc/annealing_impl.h", "csrc/dts.h", "csrc/buffer_cache.h"],
            include_dirs=[np.get_include(), "csrc"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
