/* The one place that touches the CPython and NumPy C APIs: parse and check
 * arguments, pick the dtype, release the GIL, call a kernel, raise.
 * Messages name the argument as the Python API calls it. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_2_0_API_VERSION
#include <numpy/arrayobject.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* pthread_atfork: POSIX with threads (Python.h has defined _POSIX_C_SOURCE). */
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#if defined(_POSIX_THREADS) && _POSIX_THREADS > 0
#include <pthread.h>
#define KD_HAVE_ATFORK 1
#endif
#endif

#include "annealing.h"
#include "buffer_cache.h"
#include "dts.h"
#include "kd.h"
#include "kd_isa.h"

enum { RED_BATCHMEAN = 0, RED_SUM = 1, RED_NONE = 2, RED_MEAN = 3 };

/* ---- argument helpers -------------------------------------------------- */

/* ValueError "`name` <what>, got <x>[ at row i]" without leaking the float. */
static void err_value(const char *name, const char *what, double x, Py_ssize_t row)
{
    PyObject *f = PyFloat_FromDouble(x);
    if (row >= 0)
        PyErr_Format(PyExc_ValueError, "`%s` %s, got %R at row %zd", name, what, f, row);
    else
        PyErr_Format(PyExc_ValueError, "`%s` %s, got %R", name, what, f);
    Py_XDECREF(f);
}

/* A 2-D float array whose rows the kernels can read in place: native byte
 * order, aligned, unit column stride. Anything else is copied once into a
 * C-contiguous array. Returns a new reference or NULL with an exception. */
static PyArrayObject *as_rows(PyObject *obj, const char *name)
{
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "`%s` must be a NumPy array, got %s", name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    int t = PyArray_TYPE(a);
    if (t != NPY_FLOAT32 && t != NPY_FLOAT64) {
        PyObject *d = PyObject_Str((PyObject *)PyArray_DESCR(a));
        PyErr_Format(PyExc_TypeError, "`%s` must be float32 or float64, got %S", name,
                     d ? d : Py_None);
        Py_XDECREF(d);
        return NULL;
    }
    if (PyArray_NDIM(a) != 2) {
        PyErr_Format(PyExc_ValueError, "`%s` must be 2-D (N, C), got %d-D", name,
                     PyArray_NDIM(a));
        return NULL;
    }
    npy_intp item = PyArray_ITEMSIZE(a);
    int rows_ok = PyArray_ISALIGNED(a) && PyArray_ISNOTSWAPPED(a) &&
                  (PyArray_DIM(a, 1) <= 1 || PyArray_STRIDE(a, 1) == item) &&
                  PyArray_STRIDE(a, 0) % item == 0;
    if (rows_ok) {
        Py_INCREF(a);
        return a;
    }
    return (PyArrayObject *)PyArray_FromAny(
        obj, PyArray_DescrFromType(t), 2, 2,
        NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST, NULL);
}

static int64_t row_stride(PyArrayObject *a)
{
    return (int64_t)(PyArray_STRIDE(a, 0) / PyArray_ITEMSIZE(a));
}

/* The temperatures the kernels take for logits of dtype `type`: from the one
 * whose inverse is the dtype's largest finite value (float32 2.9e-39,
 * float64 5.6e-309) to that value. Below, x / t overflows at every logit (and
 * T^2 KL would be 0 * inf); above, 1/t underflows to 0 (-inf * 0 = NaN at a
 * masked logit) and the T^2-scaled gradient overflows. */
static double min_temperature(int type)
{
    return type == NPY_FLOAT32 ? 1.0 / FLT_MAX : 1.0 / DBL_MAX;
}

static double max_temperature(int type)
{
    return type == NPY_FLOAT32 ? (double)FLT_MAX : DBL_MAX;
}

/* ValueError for a temperature outside [min_temperature, max_temperature]. */
static int check_temperature_range(const char *name, double x, int type, Py_ssize_t row)
{
    if (x >= min_temperature(type) && x <= max_temperature(type))
        return 0;
    char what[128];
    snprintf(what, sizeof what,
             "must be in [%.3g, %.3g] for %s logits (it and its inverse must be finite)",
             min_temperature(type), max_temperature(type),
             type == NPY_FLOAT32 ? "float32" : "float64");
    err_value(name, what, x, row);
    return -1;
}

/* A temperature: a number, or a length-n array; every value finite and in
 * [min_temperature(type), max_temperature(type)]. Fills t; *hold keeps a
 * converted array alive. */
static int parse_temps(PyObject *obj, const char *name, npy_intp n, int type, double *scalar,
                       kd_temps *t, PyArrayObject **hold)
{
    *hold = NULL;
    PyArrayObject *a = (PyArrayObject *)PyArray_FromAny(
        obj, PyArray_DescrFromType(NPY_FLOAT64), 0, 0,
        NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST, NULL);
    if (!a) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "`%s` must be a number or an array of numbers, got %s", name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (PyArray_NDIM(a) > 1) {
        PyErr_Format(PyExc_ValueError,
                     "`%s` must be a scalar or have one value per row (%zd), got a %d-D array",
                     name, (Py_ssize_t)n, PyArray_NDIM(a));
        Py_DECREF(a);
        return -1;
    }
    const double *v;
    int64_t stride;
    npy_intp len;
    if (PyArray_NDIM(a) == 0) {
        *scalar = *(double *)PyArray_DATA(a);
        v = scalar;
        stride = 0;
        len = 1;
    } else {
        len = PyArray_DIM(a, 0);
        if (len != n) {
            PyErr_Format(PyExc_ValueError,
                         "`%s` must be a scalar or have one value per row (%zd), got %zd values",
                         name, (Py_ssize_t)n, (Py_ssize_t)len);
            Py_DECREF(a);
            return -1;
        }
        v = (const double *)PyArray_DATA(a);
        stride = (int64_t)(PyArray_STRIDE(a, 0) / (npy_intp)sizeof(double));
    }
    for (npy_intp i = 0; i < len; i++) {
        double x = v[i * stride];
        const Py_ssize_t row = stride == 0 ? -1 : (Py_ssize_t)i;
        if (!(isfinite(x) && x > 0)) {
            err_value(name, "must be finite and > 0", x, row);
            Py_DECREF(a);
            return -1;
        }
        if (check_temperature_range(name, x, type, row) < 0) {
            Py_DECREF(a);
            return -1;
        }
    }
    if (stride == 0) {
        Py_DECREF(a);
    } else {
        *hold = a;
    }
    t->t = v;
    t->stride = stride;
    return 0;
}

/* An optional 1-D array of n values of one dtype (labels: int64, mask: bool). */
static int parse_rows_array(PyObject *obj, const char *name, int type, npy_intp n,
                            PyArrayObject **out)
{
    *out = NULL;
    if (obj == Py_None)
        return 0;
    if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != type) {
        PyErr_Format(PyExc_TypeError, "`%s` must be a NumPy array of %s", name,
                     type == NPY_BOOL ? "bool" : "int64");
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_NDIM(a) != 1 || PyArray_DIM(a, 0) != n) {
        PyErr_Format(PyExc_ValueError,
                     "`%s` must have one value per row: expected shape (%zd,), got %d-D of size %zd",
                     name, (Py_ssize_t)n, PyArray_NDIM(a), (Py_ssize_t)PyArray_SIZE(a));
        return -1;
    }
    *out = (PyArrayObject *)PyArray_FromAny(obj, PyArray_DescrFromType(type), 1, 1,
                                            NPY_ARRAY_ALIGNED | NPY_ARRAY_NOTSWAPPED,
                                            NULL);
    return *out ? 0 : -1;
}

/* ---- returned buffers: NumPy's allocator with a cache of freed blocks ---- */

static void *cache_malloc(void *ctx, size_t size)
{
    (void)ctx;
    return kd_cache_malloc(size);
}

static void *cache_calloc(void *ctx, size_t nelem, size_t elsize)
{
    (void)ctx;
    return kd_cache_calloc(nelem, elsize);
}

static void *cache_realloc(void *ctx, void *ptr, size_t new_size)
{
    (void)ctx;
    return kd_cache_realloc(ptr, new_size);
}

static void cache_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    kd_cache_free(ptr, size);
}

static PyDataMem_Handler cache_handler = {
    "kdtemp_buffer_cache", 1, {NULL, cache_malloc, cache_calloc, cache_realloc, cache_free}};
static PyObject *cache_handler_capsule = NULL;

/* A new C-contiguous array. One large enough to be cached is made with
 * kdtemp's handler (NEP 49; the array frees through it), unless the cache is
 * off or the caller has installed a handler of their own. */
static PyArrayObject *new_output(int nd, npy_intp *dims, int type, npy_intp itemsize)
{
    npy_intp nbytes = itemsize;
    for (int i = 0; i < nd; i++)
        nbytes *= dims[i];
    if ((size_t)nbytes < KD_CACHE_MIN_BYTES || kd_cache_get_info().limit == 0)
        return (PyArrayObject *)PyArray_EMPTY(nd, dims, type, 0);
    PyObject *current = PyDataMem_GetHandler();
    if (!current)
        return NULL;
    PyDataMem_Handler *h = PyCapsule_GetPointer(current, "mem_handler");
    int is_default = h && strcmp(h->name, "default_allocator") == 0;
    Py_DECREF(current);
    if (!h)
        return NULL;
    if (!is_default)
        return (PyArrayObject *)PyArray_EMPTY(nd, dims, type, 0);
    PyObject *old = PyDataMem_SetHandler(cache_handler_capsule);
    if (!old)
        return NULL;
    PyArrayObject *a = (PyArrayObject *)PyArray_EMPTY(nd, dims, type, 0);
    PyObject *ours = PyDataMem_SetHandler(old);
    Py_DECREF(old);
    if (!ours) {
        Py_XDECREF(a);
        return NULL;
    }
    Py_DECREF(ours);
    return a;
}

/* The gradient buffer: the caller's `out` (checked, never copied) or a new
 * C-contiguous array. */
static PyArrayObject *grad_buffer(PyObject *out, PyArrayObject *like)
{
    if (out == Py_None)
        return new_output(2, PyArray_DIMS(like), PyArray_TYPE(like), PyArray_ITEMSIZE(like));
    if (!PyArray_Check(out)) {
        PyErr_Format(PyExc_TypeError, "`out` must be a NumPy array, got %s",
                     Py_TYPE(out)->tp_name);
        return NULL;
    }
    PyArrayObject *o = (PyArrayObject *)out;
    if (PyArray_TYPE(o) != PyArray_TYPE(like)) {
        PyErr_SetString(PyExc_TypeError, "`out` must have the same dtype as `student`");
        return NULL;
    }
    if (PyArray_NDIM(o) != 2 || PyArray_DIM(o, 0) != PyArray_DIM(like, 0) ||
        PyArray_DIM(o, 1) != PyArray_DIM(like, 1)) {
        PyErr_SetString(PyExc_ValueError, "`out` must have the same shape as `student`");
        return NULL;
    }
    if (!PyArray_ISWRITEABLE(o)) {
        PyErr_SetString(PyExc_ValueError, "`out` is read-only");
        return NULL;
    }
    npy_intp item = PyArray_ITEMSIZE(o);
    if (!PyArray_ISALIGNED(o) || !PyArray_ISNOTSWAPPED(o) ||
        (PyArray_DIM(o, 1) > 1 && PyArray_STRIDE(o, 1) != item) ||
        PyArray_STRIDE(o, 0) % item != 0 ||
        (PyArray_DIM(o, 0) > 1 && PyArray_STRIDE(o, 0) == 0)) {
        PyErr_SetString(PyExc_ValueError,
                        "`out` must have contiguous, aligned, native-order rows");
        return NULL;
    }
    /* rows written by different threads must not share memory: |row stride|
     * (either sign) at least one row's bytes; one row, or empty rows, cannot overlap */
    npy_intp row_bytes = PyArray_DIM(o, 1) * item, s0 = PyArray_STRIDE(o, 0);
    if (PyArray_DIM(o, 0) > 1 && row_bytes > 0 && (s0 < 0 ? -s0 : s0) < row_bytes) {
        PyErr_Format(PyExc_ValueError,
                     "`out` rows overlap each other: row stride %zd bytes, a row is %zd bytes",
                     (Py_ssize_t)s0, (Py_ssize_t)row_bytes);
        return NULL;
    }
    Py_INCREF(o);
    return o;
}

/* `out` may be the input itself (same memory, same layout) or not touch it at all. */
static int check_overlap(PyArrayObject *out, PyArrayObject *in, const char *name, int may_alias)
{
    if (!out || !in)
        return 0;
    int same = PyArray_DATA(out) == PyArray_DATA(in) &&
               PyArray_STRIDE(out, 0) == PyArray_STRIDE(in, 0);
    if (same && may_alias)
        return 0;
    if (same || PyArray_SIZE(out) == 0 || PyArray_SIZE(in) == 0)
        goto check;
    {
        /* byte ranges spanned by each array */
        char *ob = PyArray_BYTES(out), *ib = PyArray_BYTES(in);
        npy_intp os0 = PyArray_STRIDE(out, 0), is0 = PyArray_STRIDE(in, 0);
        npy_intp orow = PyArray_DIM(out, 1) * PyArray_ITEMSIZE(out);
        npy_intp irow = PyArray_DIM(in, 1) * PyArray_ITEMSIZE(in);
        char *olo = os0 >= 0 ? ob : ob + os0 * (PyArray_DIM(out, 0) - 1);
        char *ohi = (os0 >= 0 ? ob + os0 * (PyArray_DIM(out, 0) - 1) : ob) + orow;
        char *ilo = is0 >= 0 ? ib : ib + is0 * (PyArray_DIM(in, 0) - 1);
        char *ihi = (is0 >= 0 ? ib + is0 * (PyArray_DIM(in, 0) - 1) : ib) + irow;
        if (ohi <= ilo || ihi <= olo)
            return 0;
    }
check:
    PyErr_Format(PyExc_ValueError,
                 may_alias ? "`out` overlaps `%s` without being `%s` itself"
                           : "`out` must not overlap `%s`%s",
                 name, may_alias ? name : "");
    return -1;
}

static void raise_status(const kd_status *st, const char *x_name, const char *v_name,
                         const int64_t *labels, int64_t labels_stride, int64_t ignore_index,
                         int64_t n_cols)
{
    const char *name = st->code == KD_ERR_NONFINITE_TEACHER ||
                               st->code == KD_ERR_ALLINF_TEACHER ? v_name : x_name;
    switch (st->code) {
    case KD_ERR_NONFINITE_STUDENT:
    case KD_ERR_NONFINITE_TEACHER:
        PyErr_Format(PyExc_ValueError,
                     "`%s` has NaN or +inf in row %lld; pass check_finite=False to skip this check",
                     name, (long long)st->row);
        break;
    case KD_ERR_ALLINF_STUDENT:
    case KD_ERR_ALLINF_TEACHER:
        PyErr_Format(PyExc_ValueError,
                     "`%s` row %lld is all -inf but counts; skip it with `mask` or `ignore_index`",
                     name, (long long)st->row);
        break;
    case KD_ERR_LABEL:
        PyErr_Format(PyExc_ValueError,
                     "`labels` must be in [0, %lld) or equal ignore_index (%lld); got %lld at row %lld",
                     (long long)n_cols, (long long)ignore_index,
                     labels ? (long long)labels[st->row * labels_stride] : -1LL,
                     (long long)st->row);
        break;
    default:
        PyErr_SetString(PyExc_RuntimeError, "kdtemp kernel rejected its arguments (a bug in kdtemp)");
    }
}

/* Fork safety. libgomp is not fork-safe: in a child forked after the parent
 * started an OpenMP team, the first team of > 1 threads hangs. A pthread_atfork
 * child handler marks every forked child, and check_threads runs every kernel
 * call made there with one thread (the same bits, only slower), as PyTorch does
 * in DataLoader workers. Without pthread_atfork (no fork) the flag stays 0. */
static int in_forked_child = 0;

#ifdef KD_HAVE_ATFORK
static void on_fork_child(void)
{
    in_forked_child = 1;
    kd_cache_after_fork();
}
#endif

/* The team size a kernel really runs with when asked for n >= 1. */
static int effective_threads(int n_threads)
{
    return in_forked_child ? 1 : n_threads;
}

/* Every kernel's n_threads passes here: validated, then 1 in a forked child. */
static int check_threads(int *n_threads)
{
    if (*n_threads < 1) {
        PyErr_Format(PyExc_ValueError, "`n_threads` must be >= 1 here, got %d", *n_threads);
        return -1;
    }
    *n_threads = effective_threads(*n_threads);
    return 0;
}

/* Sum the row losses in row order (the same bits for any thread count) and
 * apply the reduction; RED_NONE hands the vector itself back. */
static PyObject *reduce_rows(PyArrayObject **row_loss, int reduction, int64_t count,
                             npy_intp n_cols)
{
    if (reduction == RED_NONE) {
        PyObject *r = (PyObject *)*row_loss;
        *row_loss = NULL;
        return r;
    }
    const double *rl = (const double *)PyArray_DATA(*row_loss);
    double total = 0.0;
    for (npy_intp i = 0; i < PyArray_DIM(*row_loss, 0); i++)
        total += rl[i];
    if (reduction == RED_BATCHMEAN)
        total = count > 0 ? total / (double)count : 0.0;
    else if (reduction == RED_MEAN)
        total = count > 0 ? total / ((double)count * (double)n_cols) : 0.0;
    return PyFloat_FromDouble(total);
}

/* ---- kd_forward ---------------------------------------------------------- */

static PyObject *py_kd_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"student", "teacher", "student_temperature",
                             "teacher_temperature", "labels", "mask", "ignore_index",
                             "divergence", "beta", "alpha", "scale", "kd_weight",
                             "ce_weight", "label_smoothing", "reduction", "compute_grad",
                             "out", "check_finite", "n_threads", "scale_value",
                             "adaptive", "base_temperature", "ddof", "std_eps",
                             "detach_temperature", "return_temperatures", NULL};
    PyObject *student_o, *teacher_o, *ts_o, *tt_o, *labels_o, *mask_o, *out_o;
    long long ignore_index;
    int divergence, scale, reduction, compute_grad, check_finite, n_threads;
    double beta, alpha, kd_weight, ce_weight, label_smoothing;
    double scale_value = 1.0, base_temperature = 1.0, std_eps = 1e-7;
    int adaptive = 0, ddof = 0, detach_temperature = 0, return_temperatures = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOLiddidddipOpi|dpdidpp", kwlist,
                                     &student_o, &teacher_o, &ts_o, &tt_o, &labels_o,
                                     &mask_o, &ignore_index, &divergence, &beta, &alpha,
                                     &scale, &kd_weight, &ce_weight, &label_smoothing,
                                     &reduction, &compute_grad, &out_o, &check_finite,
                                     &n_threads, &scale_value, &adaptive, &base_temperature,
                                     &ddof, &std_eps, &detach_temperature,
                                     &return_temperatures))
        return NULL;

    PyArrayObject *z = NULL, *v = NULL, *labels = NULL, *mask = NULL, *grad = NULL;
    PyArrayObject *ts_hold = NULL, *tt_hold = NULL, *row_loss = NULL;
    PyArrayObject *ts_out = NULL, *tt_out = NULL;
    PyObject *result = NULL;
    double ts_scalar = 1.0, tt_scalar = 1.0;
    kd_temps ts = {&ts_scalar, 0}, tt = {&tt_scalar, 0};

    if (divergence < 0 || divergence >= KD_DIV_COUNT) {
        PyErr_Format(PyExc_ValueError, "unknown `divergence` code %d", divergence);
        goto fail;
    }
    if (reduction < RED_BATCHMEAN || reduction > RED_NONE) {
        PyErr_Format(PyExc_ValueError, "unknown `reduction` code %d", reduction);
        goto fail;
    }
    if (scale != KD_SCALE_NONE && scale != KD_SCALE_T2 && scale != KD_SCALE_CONST) {
        PyErr_Format(PyExc_ValueError, "unknown `scale` code %d", scale);
        goto fail;
    }
    if (divergence == KD_DIV_DKD) {
        /* DKD's alpha and beta weigh TCKD and NCKD */
        if (!(isfinite(alpha) && alpha >= 0)) {
            err_value("alpha", "must be finite and >= 0", alpha, -1);
            goto fail;
        }
        if (!(isfinite(beta) && beta >= 0)) {
            err_value("beta", "must be finite and >= 0", beta, -1);
            goto fail;
        }
    } else {
        if (!(beta > 0 && beta < 1)) {
            err_value("beta", "must be in (0, 1)", beta, -1);
            goto fail;
        }
        if (!(alpha >= 0 && alpha < 1)) {
            err_value("alpha", "must be in [0, 1)", alpha, -1);
            goto fail;
        }
    }
    if (adaptive) {
        if (divergence != KD_DIV_KL) {
            PyErr_SetString(PyExc_ValueError, "adaptive temperatures support divergence \"kl\" only");
            goto fail;
        }
        if (!(isfinite(base_temperature) && base_temperature > 0)) {
            err_value("base_temperature", "must be finite and > 0", base_temperature, -1);
            goto fail;
        }
        if (!(isfinite(std_eps) && std_eps > 0)) {
            err_value("eps", "must be finite and > 0", std_eps, -1);
            goto fail;
        }
        if (ddof < 0) {
            PyErr_Format(PyExc_ValueError, "`ddof` must be >= 0, got %d", ddof);
            goto fail;
        }
    }
    if (!isfinite(scale_value)) {
        err_value("scale", "value must be finite", scale_value, -1);
        goto fail;
    }
    if (!(label_smoothing >= 0 && label_smoothing <= 1)) {
        err_value("label_smoothing", "must be in [0, 1]", label_smoothing, -1);
        goto fail;
    }
    if (!isfinite(kd_weight) || !isfinite(ce_weight)) {
        PyErr_SetString(PyExc_ValueError, "`kd_weight` and `ce_weight` must be finite");
        goto fail;
    }
    if (check_threads(&n_threads) < 0)
        goto fail;

    if (!(z = as_rows(student_o, "student")))
        goto fail;
    const npy_intp N = PyArray_DIM(z, 0), C = PyArray_DIM(z, 1);
    if (C == 0) {
        PyErr_SetString(PyExc_ValueError, "`student` must have at least one class (C = 0)");
        goto fail;
    }
    const int use_kd = kd_weight != 0.0;
    if (teacher_o != Py_None) {
        if (!(v = as_rows(teacher_o, "teacher")))
            goto fail;
        if (PyArray_TYPE(v) != PyArray_TYPE(z)) {
            PyErr_SetString(PyExc_TypeError, "`teacher` and `student` must have the same dtype");
            goto fail;
        }
        if (PyArray_DIM(v, 0) != N || PyArray_DIM(v, 1) != C) {
            PyErr_Format(PyExc_ValueError,
                         "`teacher` shape (%zd, %zd) does not match `student` shape (%zd, %zd)",
                         (Py_ssize_t)PyArray_DIM(v, 0), (Py_ssize_t)PyArray_DIM(v, 1),
                         (Py_ssize_t)N, (Py_ssize_t)C);
            goto fail;
        }
    } else if (use_kd) {
        PyErr_SetString(PyExc_ValueError, "`teacher` is required when kd_weight != 0");
        goto fail;
    }
    if (parse_temps(ts_o, "temperature", N, PyArray_TYPE(z), &ts_scalar, &ts, &ts_hold) < 0 ||
        parse_temps(tt_o, "teacher_temperature", N, PyArray_TYPE(z), &tt_scalar, &tt,
                    &tt_hold) < 0)
        goto fail;
    /* ATKD's temperatures are at least b eps */
    if (adaptive && check_temperature_range("base_temperature * eps",
                                            base_temperature * std_eps, PyArray_TYPE(z),
                                            -1) < 0)
        goto fail;
    if (parse_rows_array(labels_o, "labels", NPY_INT64, N, &labels) < 0 ||
        parse_rows_array(mask_o, "mask", NPY_BOOL, N, &mask) < 0)
        goto fail;
    if (ce_weight != 0.0 && !labels) {
        PyErr_SetString(PyExc_ValueError, "`labels` are required when ce_weight != 0");
        goto fail;
    }
    if (divergence == KD_DIV_DKD && use_kd && !labels) {
        PyErr_SetString(PyExc_ValueError, "`labels` are required by DKD");
        goto fail;
    }
    if (compute_grad) {
        if (!(grad = grad_buffer(out_o, z)))
            goto fail;
        if (out_o != Py_None) {
            if (check_overlap(grad, (PyArrayObject *)student_o == z ? z : NULL, "student", 1) < 0 ||
                check_overlap(grad, v && (PyObject *)v == teacher_o ? v : NULL, "teacher", 0) < 0)
                goto fail;
        }
    }
    if (!(row_loss = (PyArrayObject *)PyArray_EMPTY(1, (npy_intp *)&N, NPY_FLOAT64, 0)))
        goto fail;
    if (return_temperatures &&
        (!(ts_out = (PyArrayObject *)PyArray_EMPTY(1, (npy_intp *)&N, NPY_FLOAT64, 0)) ||
         !(tt_out = (PyArrayObject *)PyArray_EMPTY(1, (npy_intp *)&N, NPY_FLOAT64, 0))))
        goto fail;

    kd_rows rows = {labels ? (const int64_t *)PyArray_DATA(labels) : NULL,
                    labels ? (int64_t)(PyArray_STRIDE(labels, 0) / 8) : 0,
                    (int64_t)ignore_index,
                    mask ? (const uint8_t *)PyArray_DATA(mask) : NULL,
                    mask ? (int64_t)PyArray_STRIDE(mask, 0) : 0};
    kd_params prm = {divergence, beta, alpha, scale, scale_value, kd_weight, ce_weight,
                     label_smoothing, check_finite, adaptive, base_temperature, ddof,
                     std_eps, detach_temperature};
    double *ts_o_data = ts_out ? (double *)PyArray_DATA(ts_out) : NULL;
    double *tt_o_data = tt_out ? (double *)PyArray_DATA(tt_out) : NULL;
    kd_status st = {KD_OK, -1};
    int64_t count = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = kd_count_rows(&rows, N, C, &count, &st);
    if (rc == KD_OK) {
        double grad_scale = reduction == RED_BATCHMEAN && count > 0 ? 1.0 / (double)count : 1.0;
        const void *vz = PyArray_DATA(z);
        const void *vv = v ? PyArray_DATA(v) : NULL;
        int64_t zs = row_stride(z), vs = v ? row_stride(v) : 0;
        void *g = grad ? PyArray_DATA(grad) : NULL;
        int64_t gs = grad ? row_stride(grad) : 0;
        if (PyArray_TYPE(z) == NPY_FLOAT32)
            rc = kd_forward_f32(N, C, vz, zs, vv, vs, ts, tt, &rows, &prm, grad_scale,
                                PyArray_DATA(row_loss), g, gs, ts_o_data, tt_o_data,
                                n_threads, &st);
        else
            rc = kd_forward_f64(N, C, vz, zs, vv, vs, ts, tt, &rows, &prm, grad_scale,
                                PyArray_DATA(row_loss), g, gs, ts_o_data, tt_o_data,
                                n_threads, &st);
    }
    Py_END_ALLOW_THREADS
    if (rc != KD_OK) {
        raise_status(&st, "student", "teacher", rows.labels, rows.labels_stride,
                     (int64_t)ignore_index, C);
        goto fail;
    }

    PyObject *loss = reduce_rows(&row_loss, reduction, count, C);
    if (!loss)
        goto fail;
    if (return_temperatures)
        result = Py_BuildValue("NOLOO", loss, grad ? (PyObject *)grad : Py_None,
                               (long long)count, ts_out, tt_out);
    else
        result = Py_BuildValue("NOL", loss, grad ? (PyObject *)grad : Py_None,
                               (long long)count);
fail:
    Py_XDECREF(z);
    Py_XDECREF(v);
    Py_XDECREF(labels);
    Py_XDECREF(mask);
    Py_XDECREF(grad);
    Py_XDECREF(ts_hold);
    Py_XDECREF(tt_hold);
    Py_XDECREF(row_loss);
    Py_XDECREF(ts_out);
    Py_XDECREF(tt_out);
    return result;
}

/* ---- softmax --------------------------------------------------------------- */

static PyObject *py_softmax(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"logits", "temperature", "log_space", "out", "check_finite",
                             "n_threads", NULL};
    PyObject *x_o, *t_o, *out_o;
    int log_space, check_finite, n_threads;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOpOpi", kwlist, &x_o, &t_o, &log_space,
                                     &out_o, &check_finite, &n_threads))
        return NULL;
    PyArrayObject *x = NULL, *o = NULL, *t_hold = NULL;
    PyObject *result = NULL;
    double t_scalar = 1.0;
    kd_temps t = {&t_scalar, 0};
    if (check_threads(&n_threads) < 0)
        goto fail;
    if (!(x = as_rows(x_o, "logits")))
        goto fail;
    const npy_intp N = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1);
    if (C == 0) {
        PyErr_SetString(PyExc_ValueError, "`logits` must have at least one class (C = 0)");
        goto fail;
    }
    if (parse_temps(t_o, "temperature", N, PyArray_TYPE(x), &t_scalar, &t, &t_hold) < 0)
        goto fail;
    if (out_o != Py_None && PyArray_Check(out_o) &&
        PyArray_TYPE((PyArrayObject *)out_o) != PyArray_TYPE(x)) {
        PyErr_SetString(PyExc_TypeError, "`out` must have the same dtype as `logits`");
        goto fail;
    }
    if (!(o = grad_buffer(out_o, x)))
        goto fail;
    if (out_o != Py_None &&
        check_overlap(o, (PyObject *)x == x_o ? x : NULL, "logits", 1) < 0)
        goto fail;
    kd_status st = {KD_OK, -1};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    if (PyArray_TYPE(x) == NPY_FLOAT32)
        rc = kd_softmax_f32(N, C, PyArray_DATA(x), row_stride(x), t, log_space, check_finite,
                            PyArray_DATA(o), row_stride(o), n_threads, &st);
    else
        rc = kd_softmax_f64(N, C, PyArray_DATA(x), row_stride(x), t, log_space, check_finite,
                            PyArray_DATA(o), row_stride(o), n_threads, &st);
    Py_END_ALLOW_THREADS
    if (rc != KD_OK) {
        raise_status(&st, "logits", "logits", NULL, 0, 0, C);
        goto fail;
    }
    result = (PyObject *)o;
    o = NULL;
fail:
    Py_XDECREF(x);
    Py_XDECREF(o);
    Py_XDECREF(t_hold);
    return result;
}

/* ---- annealing (mse) ------------------------------------------------------ */

static PyObject *py_mse_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"student", "teacher", "phi", "labels", "mask", "ignore_index",
                             "reduction", "compute_grad", "out", "check_finite",
                             "n_threads", NULL};
    PyObject *student_o, *teacher_o, *labels_o, *mask_o, *out_o;
    double phi;
    long long ignore_index;
    int reduction, compute_grad, check_finite, n_threads;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOdOOLipOpi", kwlist, &student_o, &teacher_o,
                                     &phi, &labels_o, &mask_o, &ignore_index, &reduction,
                                     &compute_grad, &out_o, &check_finite, &n_threads))
        return NULL;
    PyArrayObject *z = NULL, *v = NULL, *labels = NULL, *mask = NULL, *grad = NULL,
                  *row_loss = NULL;
    PyObject *result = NULL, *loss = NULL;
    if (reduction < RED_BATCHMEAN || reduction > RED_MEAN) {
        PyErr_Format(PyExc_ValueError, "unknown `reduction` code %d", reduction);
        goto fail;
    }
    if (!isfinite(phi)) {
        err_value("phi", "must be finite", phi, -1);
        goto fail;
    }
    if (check_threads(&n_threads) < 0)
        goto fail;
    if (!(z = as_rows(student_o, "student")) || !(v = as_rows(teacher_o, "teacher")))
        goto fail;
    const npy_intp N = PyArray_DIM(z, 0), C = PyArray_DIM(z, 1);
    if (C == 0) {
        PyErr_SetString(PyExc_ValueError, "`student` must have at least one class (C = 0)");
        goto fail;
    }
    if (PyArray_TYPE(v) != PyArray_TYPE(z)) {
        PyErr_SetString(PyExc_TypeError, "`teacher` and `student` must have the same dtype");
        goto fail;
    }
    if (PyArray_DIM(v, 0) != N || PyArray_DIM(v, 1) != C) {
        PyErr_SetString(PyExc_ValueError, "`teacher` shape does not match `student` shape");
        goto fail;
    }
    if (parse_rows_array(labels_o, "labels", NPY_INT64, N, &labels) < 0 ||
        parse_rows_array(mask_o, "mask", NPY_BOOL, N, &mask) < 0)
        goto fail;
    if (compute_grad) {
        if (!(grad = grad_buffer(out_o, z)))
            goto fail;
        if (out_o != Py_None &&
            (check_overlap(grad, (PyObject *)z == student_o ? z : NULL, "student", 1) < 0 ||
             check_overlap(grad, (PyObject *)v == teacher_o ? v : NULL, "teacher", 0) < 0))
            goto fail;
    }
    if (!(row_loss = (PyArrayObject *)PyArray_EMPTY(1, (npy_intp *)&N, NPY_FLOAT64, 0)))
        goto fail;
    /* labels here only select rows: any value but ignore_index counts */
    kd_rows rows = {labels ? (const int64_t *)PyArray_DATA(labels) : NULL,
                    labels ? (int64_t)(PyArray_STRIDE(labels, 0) / 8) : 0,
                    (int64_t)ignore_index,
                    mask ? (const uint8_t *)PyArray_DATA(mask) : NULL,
                    mask ? (int64_t)PyArray_STRIDE(mask, 0) : 0};
    kd_status st = {KD_OK, -1};
    int64_t count = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    for (npy_intp i = 0; i < N; i++)
        count += (!rows.labels || rows.labels[i * rows.labels_stride] != rows.ignore_index) &&
                 (!rows.mask || rows.mask[i * rows.mask_stride]);
    double grad_scale = 1.0;
    if (reduction == RED_BATCHMEAN && count > 0)
        grad_scale = 1.0 / (double)count;
    else if (reduction == RED_MEAN && count > 0)
        grad_scale = 1.0 / ((double)count * (double)C);
    void *g = grad ? PyArray_DATA(grad) : NULL;
    int64_t gs = grad ? row_stride(grad) : 0;
    if (PyArray_TYPE(z) == NPY_FLOAT32)
        rc = kd_mse_f32(N, C, PyArray_DATA(z), row_stride(z), PyArray_DATA(v), row_stride(v),
                        phi, &rows, check_finite, grad_scale, PyArray_DATA(row_loss), g, gs,
                        n_threads, &st);
    else
        rc = kd_mse_f64(N, C, PyArray_DATA(z), row_stride(z), PyArray_DATA(v), row_stride(v),
                        phi, &rows, check_finite, grad_scale, PyArray_DATA(row_loss), g, gs,
                        n_threads, &st);
    Py_END_ALLOW_THREADS
    if (rc != KD_OK) {
        if (st.code == KD_ERR_NONFINITE_STUDENT || st.code == KD_ERR_NONFINITE_TEACHER)
            PyErr_Format(PyExc_ValueError,
                         "`%s` has NaN or +-inf in row %lld (the regression needs finite "
                         "logits); pass check_finite=False to skip this check",
                         st.code == KD_ERR_NONFINITE_STUDENT ? "student" : "teacher",
                         (long long)st.row);
        else
            raise_status(&st, "student", "teacher", NULL, 0, 0, C);
        goto fail;
    }
    if (!(loss = reduce_rows(&row_loss, reduction, count, C)))
        goto fail;
    result = Py_BuildValue("NOL", loss, grad ? (PyObject *)grad : Py_None, (long long)count);
fail:
    Py_XDECREF(z);
    Py_XDECREF(v);
    Py_XDECREF(labels);
    Py_XDECREF(mask);
    Py_XDECREF(grad);
    Py_XDECREF(row_loss);
    return result;
}

/* ---- lse (sharpness) ------------------------------------------------------ */

static PyObject *py_lse(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"logits", "temperature", "check_finite", "n_threads", NULL};
    PyObject *x_o, *t_o;
    int check_finite, n_threads;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOpi", kwlist, &x_o, &t_o, &check_finite,
                                     &n_threads))
        return NULL;
    PyArrayObject *x = NULL, *t_hold = NULL, *o = NULL;
    PyObject *result = NULL;
    double t_scalar = 1.0;
    kd_temps t = {&t_scalar, 0};
    if (check_threads(&n_threads) < 0)
        goto fail;
    if (!(x = as_rows(x_o, "logits")))
        goto fail;
    const npy_intp N = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1);
    if (C == 0) {
        PyErr_SetString(PyExc_ValueError, "`logits` must have at least one class (C = 0)");
        goto fail;
    }
    if (parse_temps(t_o, "temperature", N, PyArray_TYPE(x), &t_scalar, &t, &t_hold) < 0)
        goto fail;
    if (!(o = (PyArrayObject *)PyArray_EMPTY(1, (npy_intp *)&N, NPY_FLOAT64, 0)))
        goto fail;
    kd_status st = {KD_OK, -1};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    if (PyArray_TYPE(x) == NPY_FLOAT32)
        rc = kd_lse_f32(N, C, PyArray_DATA(x), row_stride(x), t, check_finite,
                        PyArray_DATA(o), n_threads, &st);
    else
        rc = kd_lse_f64(N, C, PyArray_DATA(x), row_stride(x), t, check_finite,
                        PyArray_DATA(o), n_threads, &st);
    Py_END_ALLOW_THREADS
    if (rc != KD_OK) {
        raise_status(&st, "logits", "logits", NULL, 0, 0, C);
        goto fail;
    }
    result = (PyObject *)o;
    o = NULL;
fail:
    Py_XDECREF(x);
    Py_XDECREF(o);
    Py_XDECREF(t_hold);
    return result;
}

/* ---- diagnostics ----------------------------------------------------------- */

/* labels (optional, int64) and mask (optional, bool) as kd_rows; the caller
 * releases the two arrays it gets back. */
static int parse_rows(PyObject *labels_o, PyObject *mask_o, long long ignore_index, npy_intp n,
                      PyArrayObject **labels, PyArrayObject **mask, kd_rows *rows)
{
    if (parse_rows_array(labels_o, "labels", NPY_INT64, n, labels) < 0 ||
        parse_rows_array(mask_o, "mask", NPY_BOOL, n, mask) < 0)
        return -1;
    rows->labels = *labels ? (const int64_t *)PyArray_DATA(*labels) : NULL;
    rows->labels_stride = *labels ? (int64_t)(PyArray_STRIDE(*labels, 0) / 8) : 0;
    rows->ignore_index = (int64_t)ignore_index;
    rows->mask = *mask ? (const uint8_t *)PyArray_DATA(*mask) : NULL;
    rows->mask_stride = *mask ? (int64_t)PyArray_STRIDE(*mask, 0) : 0;
    return 0;
}

static PyObject *py_row_stats(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"logits", "temperature", "labels", "mask", "ignore_index",
                             "check_finite", "n_threads", NULL};
    PyObject *x_o, *t_o, *labels_o, *mask_o;
    long long ignore_index;
    int check_finite, n_threads;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOLpi", kwlist, &x_o, &t_o, &labels_o,
                                     &mask_o, &ignore_index, &check_finite, &n_threads))
        return NULL;
    static const char *names[] = {"max_logit", "sharpness", "mean", "std", "entropy",
                                  "top1_prob", "ce", "argmax", "correct"};
    PyArrayObject *x = NULL, *t_hold = NULL, *labels = NULL, *mask = NULL, *outs[9] = {NULL};
    PyObject *result = NULL;
    double t_scalar = 1.0;
    kd_temps t = {&t_scalar, 0};
    kd_rows rows;
    if (check_threads(&n_threads) < 0)
        goto fail;
    if (!(x = as_rows(x_o, "logits")))
        goto fail;
    const npy_intp N = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1);
    if (C == 0) {
        PyErr_SetString(PyExc_ValueError, "`logits` must have at least one class (C = 0)");
        goto fail;
    }
    if (parse_temps(t_o, "temperature", N, PyArray_TYPE(x), &t_scalar, &t, &t_hold) < 0 ||
        parse_rows(labels_o, mask_o, ignore_index, N, &labels, &mask, &rows) < 0)
        goto fail;
    for (int q = 0; q < 9; q++) {
        int type = q == 7 ? NPY_INT64 : q == 8 ? NPY_BOOL : NPY_FLOAT64;
        if (!(outs[q] = (PyArrayObject *)PyArray_EMPTY(1, (npy_intp *)&N, type, 0)))
            goto fail;
    }
    kd_stats_out o = {PyArray_DATA(outs[0]), PyArray_DATA(outs[1]), PyArray_DATA(outs[2]),
                      PyArray_DATA(outs[3]), PyArray_DATA(outs[4]), PyArray_DATA(outs[5]),
                      PyArray_DATA(outs[6]), PyArray_DATA(outs[7]), PyArray_DATA(outs[8])};
    kd_status st = {KD_OK, -1};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    if (PyArray_TYPE(x) == NPY_FLOAT32)
        rc = kd_row_stats_f32(N, C, PyArray_DATA(x), row_stride(x), t, &rows, check_finite, &o,
                              n_threads, &st);
    else
        rc = kd_row_stats_f64(N, C, PyArray_DATA(x), row_stride(x), t, &rows, check_finite, &o,
                              n_threads, &st);
    Py_END_ALLOW_THREADS
    if (rc != KD_OK) {
        raise_status(&st, "logits", "logits", rows.labels, rows.labels_stride,
                     (int64_t)ignore_index, C);
        goto fail;
    }
    if (!(result = PyDict_New()))
        goto fail;
    for (int q = 0; q < 9; q++)
        if (PyDict_SetItemString(result, names[q], (PyObject *)outs[q]) < 0) {
            Py_CLEAR(result);
            goto fail;
        }
fail:
    Py_XDECREF(x);
    Py_XDECREF(t_hold);
    Py_XDECREF(labels);
    Py_XDECREF(mask);
    for (int q = 0; q < 9; q++)
        Py_XDECREF(outs[q]);
    return result;
}

static PyObject *py_profile(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"student", "teacher", "temperatures", "labels", "mask",
                             "ignore_index", "check_finite", "n_threads", NULL};
    PyObject *z_o, *v_o, *t_o, *labels_o, *mask_o;
    long long ignore_index;
    int check_finite, n_threads;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOLpi", kwlist, &z_o, &v_o, &t_o, &labels_o,
                                     &mask_o, &ignore_index, &check_finite, &n_threads))
        return NULL;
    PyArrayObject *z = NULL, *v = NULL, *temps = NULL, *labels = NULL, *mask = NULL,
                  *out = NULL;
    PyObject *result = NULL;
    kd_rows rows;
    if (check_threads(&n_threads) < 0)
        goto fail;
    if (!(z = as_rows(z_o, "student")) || !(v = as_rows(v_o, "teacher")))
        goto fail;
    const npy_intp N = PyArray_DIM(z, 0), C = PyArray_DIM(z, 1);
    if (C == 0) {
        PyErr_SetString(PyExc_ValueError, "`student` must have at least one class (C = 0)");
        goto fail;
    }
    if (PyArray_TYPE(v) != PyArray_TYPE(z)) {
        PyErr_SetString(PyExc_TypeError, "`teacher` and `student` must have the same dtype");
        goto fail;
    }
    if (PyArray_DIM(v, 0) != N || PyArray_DIM(v, 1) != C) {
        PyErr_SetString(PyExc_ValueError, "`teacher` shape does not match `student` shape");
        goto fail;
    }
    if (!(temps = (PyArrayObject *)PyArray_FromAny(t_o, PyArray_DescrFromType(NPY_FLOAT64), 1,
                                                   1, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST,
                                                   NULL))) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "`temperatures` must be a 1-D sequence of numbers");
        goto fail;
    }
    const npy_intp K = PyArray_DIM(temps, 0);
    const double *tk = (const double *)PyArray_DATA(temps);
    if (K == 0) {
        PyErr_SetString(PyExc_ValueError, "`temperatures` must not be empty");
        goto fail;
    }
    for (npy_intp k = 0; k < K; k++)
        if (!(isfinite(tk[k]) && tk[k] > 0)) {
            err_value("temperatures", "must be finite and > 0", tk[k], (Py_ssize_t)k);
            goto fail;
        } else if (check_temperature_range("temperatures", tk[k], PyArray_TYPE(z),
                                           (Py_ssize_t)k) < 0) {
            goto fail;
        }
    if (parse_rows(labels_o, mask_o, ignore_index, N, &labels, &mask, &rows) < 0)
        goto fail;
    npy_intp dims[3] = {N, K, KD_PROFILE_FIELDS};
    if (!(out = (PyArrayObject *)PyArray_EMPTY(3, dims, NPY_FLOAT64, 0)))
        goto fail;
    kd_status st = {KD_OK, -1};
    int64_t count = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = kd_count_rows(&rows, N, C, &count, &st);
    if (rc == KD_OK) {
        if (PyArray_TYPE(z) == NPY_FLOAT32)
            rc = kd_profile_f32(N, C, PyArray_DATA(z), row_stride(z), PyArray_DATA(v),
                                row_stride(v), tk, K, &rows, check_finite, PyArray_DATA(out),
                                n_threads, &st);
        else
            rc = kd_profile_f64(N, C, PyArray_DATA(z), row_stride(z), PyArray_DATA(v),
                                row_stride(v), tk, K, &rows, check_finite, PyArray_DATA(out),
                                n_threads, &st);
    }
    Py_END_ALLOW_THREADS
    if (rc != KD_OK) {
        raise_status(&st, "student", "teacher", rows.labels, rows.labels_stride,
                     (int64_t)ignore_index, C);
        goto fail;
    }
    result = Py_BuildValue("OL", out, (long long)count);
fail:
    Py_XDECREF(z);
    Py_XDECREF(v);
    Py_XDECREF(temps);
    Py_XDECREF(labels);
    Py_XDECREF(mask);
    Py_XDECREF(out);
    return result;
}

/* ---- DTS ----------------------------------------------------------------- */

/* Both cross-entropy sums of DTS.update_from_logits, one kernel call. */
static PyObject *py_ce_pair(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"student", "teacher", "labels", "mask", "ignore_index",
                             "check_finite", "n_threads", NULL};
    PyObject *z_o, *v_o, *labels_o, *mask_o;
    long long ignore_index;
    int check_finite, n_threads;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOLpi", kwlist, &z_o, &v_o, &labels_o,
                                     &mask_o, &ignore_index, &check_finite, &n_threads))
        return NULL;
    PyArrayObject *z = NULL, *v = NULL, *labels = NULL, *mask = NULL;
    PyObject *result = NULL;
    double *row_ce = NULL;
    kd_rows rows;
    if (check_threads(&n_threads) < 0)
        goto fail;
    if (!(z = as_rows(z_o, "student")) || !(v = as_rows(v_o, "teacher")))
        goto fail;
    if (PyArray_TYPE(v) != PyArray_TYPE(z)) {
        PyErr_SetString(PyExc_TypeError, "`teacher` and `student` must have the same dtype");
        goto fail;
    }
    const npy_intp N = PyArray_DIM(z, 0), Cs = PyArray_DIM(z, 1), Ct = PyArray_DIM(v, 1);
    if (Cs == 0 || Ct == 0) {
        PyErr_Format(PyExc_ValueError, "`%s` must have at least one class (C = 0)",
                     Cs == 0 ? "student" : "teacher");
        goto fail;
    }
    if (PyArray_DIM(v, 0) != N) {
        PyErr_Format(PyExc_ValueError, "`teacher` has %zd rows but `student` has %zd",
                     (Py_ssize_t)PyArray_DIM(v, 0), (Py_ssize_t)N);
        goto fail;
    }
    if (labels_o == Py_None) {
        PyErr_SetString(PyExc_ValueError, "`labels` are required");
        goto fail;
    }
    if (parse_rows(labels_o, mask_o, ignore_index, N, &labels, &mask, &rows) < 0)
        goto fail;
    if (!(row_ce = (double *)PyMem_Malloc(sizeof(double) * 2 * (size_t)(N > 0 ? N : 1)))) {
        PyErr_NoMemory();
        goto fail;
    }
    kd_status st = {KD_OK, -1};
    double s_sum = 0.0, t_sum = 0.0;
    int64_t count = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    if (PyArray_TYPE(z) == NPY_FLOAT32)
        rc = kd_ce_pair_f32(N, Cs, PyArray_DATA(z), row_stride(z), Ct, PyArray_DATA(v),
                            row_stride(v), &rows, check_finite, row_ce, &s_sum, &t_sum,
                            &count, n_threads, &st);
    else
        rc = kd_ce_pair_f64(N, Cs, PyArray_DATA(z), row_stride(z), Ct, PyArray_DATA(v),
                            row_stride(v), &rows, check_finite, row_ce, &s_sum, &t_sum,
                            &count, n_threads, &st);
    Py_END_ALLOW_THREADS
    if (rc != KD_OK) {
        raise_status(&st, "student", "teacher", rows.labels, rows.labels_stride,
                     (int64_t)ignore_index, Cs < Ct ? Cs : Ct);
        goto fail;
    }
    result = Py_BuildValue("ddL", t_sum, s_sum, (long long)count);
fail:
    Py_XDECREF(z);
    Py_XDECREF(v);
    Py_XDECREF(labels);
    Py_XDECREF(mask);
    PyMem_Free(row_ce);
    return result;
}

static PyObject *py_dts_update(PyObject *self, PyObject *args)
{
    (void)self;
    kd_dts_params p;
    double temperature, epoch, teacher_ce, student_ce, new_t, target;
    if (!PyArg_ParseTuple(args, "(ddddddddi)dddd", &p.initial_temperature,
                          &p.min_temperature, &p.max_temperature, &p.total_epochs,
                          &p.curve_shape, &p.momentum, &p.scale_cap, &p.gap_eps,
                          &p.adaptive, &temperature, &epoch, &teacher_ce, &student_ce))
        return NULL;
    int rc = kd_dts_update(&p, temperature, epoch, teacher_ce, student_ce, &new_t, &target);
    if (rc == KD_DTS_ERR_NONFINITE) {
        err_value(isfinite(teacher_ce) ? "student_ce" : "teacher_ce", "must be finite",
                  isfinite(teacher_ce) ? student_ce : teacher_ce, -1);
        return NULL;
    }
    if (rc != KD_DTS_OK) {
        PyErr_Format(PyExc_ValueError,
                     "DTS update is undefined for these arguments (temperature, epoch or a "
                     "parameter non-finite, total_epochs <= 0 or min > max temperature)");
        return NULL;
    }
    return Py_BuildValue("dd", new_t, target);
}

/* ---- threads ------------------------------------------------------------- */

static PyObject *py_max_threads(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
#ifdef _OPENMP
    return PyLong_FromLong(omp_get_max_threads());
#else
    return PyLong_FromLong(1);
#endif
}

static PyObject *py_effective_threads(PyObject *self, PyObject *args)
{
    (void)self;
    int n;
    if (!PyArg_ParseTuple(args, "i", &n))
        return NULL;
    if (check_threads(&n) < 0)
        return NULL;
    return PyLong_FromLong(n);
}

static PyObject *py_in_forked_child(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyBool_FromLong(in_forked_child);
}

/* ---- buffer cache ---------------------------------------------------------- */

/* `max_bytes` is checked to be an int >= 0 by kdtemp.set_buffer_cache */
static PyObject *py_set_buffer_cache(PyObject *self, PyObject *arg)
{
    (void)self;
    size_t n = PyLong_AsSize_t(arg);
    if (n == (size_t)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "`max_bytes` must be an integer >= 0, got %R", arg);
        }
        return NULL;
    }
    return PyLong_FromSize_t(kd_cache_set_limit(n));
}

static PyObject *py_empty_buffer_cache(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    kd_cache_clear();
    Py_RETURN_NONE;
}

static PyObject *py_buffer_cache_info(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    kd_cache_info i = kd_cache_get_info();
    return Py_BuildValue("{snsnsisnsn}", "limit", (Py_ssize_t)i.limit, "bytes",
                         (Py_ssize_t)i.bytes, "blocks", i.blocks, "hits", (Py_ssize_t)i.hits,
                         "misses", (Py_ssize_t)i.misses);
}

static PyObject *py_isa(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(kd_isa_name());
}

static PyObject *py_prefetch_bytes(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromLongLong((long long)kd_prefetch_bytes());
}

static PyObject *py_set_isa(PyObject *self, PyObject *arg)
{
    (void)self;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name)
        return NULL;
    if (kd_set_isa(name) != 0) {
        PyErr_Format(PyExc_ValueError, "instruction set %R is not available here", arg);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"kd_forward", (PyCFunction)(void (*)(void))py_kd_forward, METH_VARARGS | METH_KEYWORDS,
     "Fused KD loss and gradient on 2-D arrays (see kdtemp.kd_loss)."},
    {"softmax", (PyCFunction)(void (*)(void))py_softmax, METH_VARARGS | METH_KEYWORDS,
     "softmax or log_softmax of 2-D logits at a temperature (see kdtemp.softmax)."},
    {"mse_forward", (PyCFunction)(void (*)(void))py_mse_forward, METH_VARARGS | METH_KEYWORDS,
     "Annealing-KD regression loss and gradient (see kdtemp.annealing_loss)."},
    {"lse", (PyCFunction)(void (*)(void))py_lse, METH_VARARGS | METH_KEYWORDS,
     "Row-wise logsumexp of logits / temperature (see kdtemp.sharpness)."},
    {"row_stats", (PyCFunction)(void (*)(void))py_row_stats, METH_VARARGS | METH_KEYWORDS,
     "Per-row statistics of logits at a temperature (see kdtemp.row_stats)."},
    {"profile", (PyCFunction)(void (*)(void))py_profile, METH_VARARGS | METH_KEYWORDS,
     "Per-row temperature-profile values (see kdtemp.temperature_profile)."},
    {"ce_pair", (PyCFunction)(void (*)(void))py_ce_pair, METH_VARARGS | METH_KEYWORDS,
     "ce_pair(student, teacher, labels, mask, ignore_index, check_finite, n_threads) -> "
     "(teacher_ce_sum, student_ce_sum, count): both CEs at t = 1 in one pass "
     "(see kdtemp.dts.ce_pair)."},
    {"dts_update", py_dts_update, METH_VARARGS,
     "dts_update(params, temperature, epoch, teacher_ce, student_ce) -> (T, target)"},
    {"set_buffer_cache", py_set_buffer_cache, METH_O,
     "set_buffer_cache(max_bytes) -> previous limit (see kdtemp.set_buffer_cache)."},
    {"empty_buffer_cache", py_empty_buffer_cache, METH_NOARGS,
     "Free every cached output buffer (see kdtemp.empty_buffer_cache)."},
    {"buffer_cache_info", py_buffer_cache_info, METH_NOARGS,
     "The output-buffer cache's limit, bytes, blocks, hits and misses."},
    {"isa", py_isa, METH_NOARGS, "The kernels' instruction set: 'avx512', 'avx2' or 'baseline'."},
    {"_prefetch_bytes", py_prefetch_bytes, METH_NOARGS,
     "The most bytes of next rows a row's pass prefetches: 3/4 of one core's L2."},
    {"_set_isa", py_set_isa, METH_O,
     "Force the kernels' instruction set ('baseline', 'avx2', 'avx512'), for tests."},
    {"max_threads", py_max_threads, METH_NOARGS,
     "OpenMP's default team size (respects OMP_NUM_THREADS); 1 without OpenMP."},
    {"effective_threads", py_effective_threads, METH_VARARGS,
     "The team size a kernel asked for n >= 1 threads runs with: n, or 1 in a forked child."},
    {"in_forked_child", py_in_forked_child, METH_NOARGS,
     "Whether this process was forked after kdtemp was imported (kernels then run serial)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "kdtemp._kdtemp",
                                       "C kernels of kdtemp.", -1, methods,
                                       NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kdtemp(void)
{
    import_array();
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
#ifdef KD_HAVE_ATFORK
    static int atfork_registered = 0;
    if (!atfork_registered) {
        int err = pthread_atfork(NULL, NULL, on_fork_child);
        if (err != 0) {
            PyErr_Format(PyExc_OSError, "kdtemp: pthread_atfork failed (error %d)", err);
            Py_DECREF(m);
            return NULL;
        }
        atfork_registered = 1;
    }
#endif
    if (!cache_handler_capsule &&
        !(cache_handler_capsule = PyCapsule_New(&cache_handler, "mem_handler", NULL))) {
        Py_DECREF(m);
        return NULL;
    }
#ifdef _OPENMP
    PyModule_AddIntConstant(m, "openmp", 1);
#else
    PyModule_AddIntConstant(m, "openmp", 0);
#endif
    return m;
}
