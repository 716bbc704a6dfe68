/* LD_PRELOAD'ed into the interpreter by tools/valgrind.sh (CPython < 3.12 only).
 *
 * CPython 3.11's _PyLong_New(0) leaves ob_digit[0] uninitialised and then reads it
 * (times the size 0) in maybe_small_long/medium_value, so every int that comes out
 * as 0 from int.from_bytes, int("0"), x & y, ... (the pyc loader does it on every
 * import) is an address computed from an undefined value. Memcheck reports it at
 * every later use of that pointer: thousands of "Use of uninitialised value" errors
 * all over ceval and the GC, which no short suppressions file can cover without
 * hiding real reports. Upstream fixed it in 3.12 by zeroing the digit in
 * _PyLong_New (python/cpython gh-102509, PR 102510; 3.11 won't get it: gh-119022).
 * This is the same fix, as a Valgrind function wrapper (valgrind.h's
 * I_WRAP_SONAME_FNNAME_ZU: valgrind redirects every call, also the ones inside
 * libpython). It changes no value the interpreter computes: the digit is only ever
 * multiplied by the size 0. Outside valgrind the wrapper is never called.
 */
#include <Python.h>
#include <valgrind/valgrind.h>

#if PY_VERSION_HEX < 0x030C0000
#define KDTEMP_WRAP_PYLONG_NEW(soname)                                               \
    PyObject *I_WRAP_SONAME_FNNAME_ZU(soname, _PyLong_New)(Py_ssize_t size);         \
    PyObject *I_WRAP_SONAME_FNNAME_ZU(soname, _PyLong_New)(Py_ssize_t size)          \
    {                                                                                \
        OrigFn fn;                                                                   \
        PyObject *r;                                                                 \
        VALGRIND_GET_ORIG_FN(fn);                                                    \
        CALL_FN_W_W(r, fn, size);                                                    \
        if (r != NULL)                                                               \
            ((PyLongObject *)r)->ob_digit[0] = 0;                                    \
        return r;                                                                    \
    }
/* libpython3.11.so* (an --enable-shared interpreter, e.g. pyenv's) ... */
KDTEMP_WRAP_PYLONG_NEW(libpythonZa)
/* ... or the interpreter executable itself (a static one, e.g. Debian's) */
KDTEMP_WRAP_PYLONG_NEW(NONE)
#endif
