/* Body of kd_ce_pair, instantiated per dtype by ce_pair_kernels.h, which is
 * compiled once per instruction set (ce_pair.c, ce_pair_avx2.c):
 *   FT, SFX, ISA   element type, dtype suffix (f32, f64), ISA suffix (base, avx2)
 *   VEC, VINT, VL  FT vector of kd_math.h, its comparison mask, lanes per vector
 *   VLOAD, VSEL, VEXP, ACC, ACC_ADD, ACC_SUM   as in kd_kernels.h
 * The arithmetic is that of kdtemp.ce_loss's kernel (kd_impl.h: row_max,
 * row_sumexp at t = 1, then lse1 - z_y), so the per-row values are its bits. */
#define CP_CAT_(a, b) a##_##b
#define CP_CAT(a, b) CP_CAT_(a, b)
#define CP_NAME(fn) CP_CAT(CP_CAT(fn, SFX), ISA)

/* Max of a row and whether it holds NaN or +inf, in VL independent lanes. */
static FT CP_NAME(cp_row_max)(const FT *x, int64_t C,
                                                                    int *nonfinite)
{
    const VEC ninf = (VEC){0} - INFINITY;
    VEC m = ninf;
    VINT nan = {0};
    int64_t j = 0;
    for (; j + VL <= C; j += VL) {
        VEC v = VLOAD(x + j);
        m = VSEL(v > m, v, m);
        nan |= v != v;
    }
    if (j < C) {
        FT buf[VL];
        for (int k = 0; k < VL; k++)
            buf[k] = j + k < C ? x[j + k] : -INFINITY;
        VEC v = VLOAD(buf);
        m = VSEL(v > m, v, m);
        nan |= v != v;
    }
    FT mx = -INFINITY;
    int anynan = 0;
    for (int k = 0; k < VL; k++) {
        mx = m[k] > mx ? m[k] : mx;
        anynan |= nan[k] != 0;
    }
    *nonfinite = anynan || mx == INFINITY;
    return mx;
}

/* sum_j exp(x_j - m), in double lanes; the tail padded with -inf (exp 0). */
static double CP_NAME(cp_row_sumexp)(const FT *x,
                                                                           int64_t C, FT m)
{
    ACC acc = {0};
    int64_t j = 0;
    for (; j + VL <= C; j += VL)
        ACC_ADD(&acc, VEXP(VLOAD(x + j) - m));
    if (j < C) {
        FT buf[VL];
        for (int k = 0; k < VL; k++)
            buf[k] = j + k < C ? x[j + k] : -INFINITY;
        ACC_ADD(&acc, VEXP(VLOAD(buf) - m));
    }
    return ACC_SUM(acc);
}

/* One row's CE at t = 1, or an error code (the row's max decides both). */
static inline __attribute__((always_inline)) int
CP_NAME(cp_row_ce)(const FT *x, int64_t C, int64_t y, int check_finite, int err_nonfinite,
                   int err_allinf, double *ce)
{
    int nonfinite;
    const FT m = CP_NAME(cp_row_max)(x, C, &nonfinite);
    if (check_finite && nonfinite)
        return err_nonfinite;
    if (m == -INFINITY)
        return err_allinf;
    /* as kd_forward: lse1 = m + log(s1), ce = lse1 - (1 - 0) * z_y */
    *ce = ((double)m + log(CP_NAME(cp_row_sumexp)(x, C, m))) - (double)x[y];
    return KD_OK;
}

/* Keep the smallest row of one kind of error. */
#define CP_RECORD(code, i, bad_code, bad_row)                                    \
    do {                                                                         \
        _Pragma("omp critical(kd_ce_pair_status)")                               \
        if ((i) < (bad_row)) {                                                   \
            (bad_row) = (i);                                                     \
            (bad_code) = (code);                                                 \
        }                                                                        \
    } while (0)

int CP_NAME(kd_ce_pair)(int64_t n_rows, int64_t student_cols, const FT *student,
                        int64_t student_stride, int64_t teacher_cols, const FT *teacher,
                        int64_t teacher_stride, const kd_rows *rows, int check_finite,
                        double *row_ce, double *student_sum, double *teacher_sum,
                        int64_t *count, int n_threads, kd_status *status)
{
    status->code = KD_OK;
    status->row = -1;
    if (n_rows < 0 || student_cols <= 0 || teacher_cols <= 0 || !rows->labels)
        return status->code = KD_ERR_ARGUMENT;
    const int64_t C_min = student_cols < teacher_cols ? student_cols : teacher_cols;
    const int par = kd_parallel(n_threads, n_rows, student_cols + teacher_cols);
    (void)par; /* unused without OpenMP */
    /* the first bad row of each kind: labels, student, teacher */
    int64_t bad_row[3] = {INT64_MAX, INT64_MAX, INT64_MAX};
    int bad_code[3] = {KD_OK, KD_OK, KD_OK};

#pragma omp parallel for schedule(static) num_threads(n_threads) if (par)
    for (int64_t i = 0; i < n_rows; i++) {
        row_ce[2 * i] = row_ce[2 * i + 1] = 0.0;
        if (!kd_row_counts(rows, i))
            continue;
        const int64_t y = rows->labels[i * rows->labels_stride];
        if (y < 0 || y >= C_min) {
            CP_RECORD(KD_ERR_LABEL, i, bad_code[0], bad_row[0]);
            continue;
        }
        int code = CP_NAME(cp_row_ce)(student + i * student_stride, student_cols, y,
                                      check_finite, KD_ERR_NONFINITE_STUDENT,
                                      KD_ERR_ALLINF_STUDENT, &row_ce[2 * i]);
        if (code != KD_OK) {
            CP_RECORD(code, i, bad_code[1], bad_row[1]);
            continue;
        }
        code = CP_NAME(cp_row_ce)(teacher + i * teacher_stride, teacher_cols, y,
                                  check_finite, KD_ERR_NONFINITE_TEACHER,
                                  KD_ERR_ALLINF_TEACHER, &row_ce[2 * i + 1]);
        if (code != KD_OK)
            CP_RECORD(code, i, bad_code[2], bad_row[2]);
    }
    for (int k = 0; k < 3; k++)
        if (bad_code[k] != KD_OK) {
            status->row = bad_row[k];
            return status->code = bad_code[k];
        }

    /* in row order, as ce_loss's reduction: the same bits for any thread count */
    double s = 0.0, t = 0.0;
    int64_t c = 0;
    for (int64_t i = 0; i < n_rows; i++) {
        s += row_ce[2 * i];
        t += row_ce[2 * i + 1];
        c += kd_row_counts(rows, i);
    }
    *student_sum = s;
    *teacher_sum = t;
    *count = c;
    return KD_OK;
}

#undef CP_RECORD
#undef CP_NAME
#undef CP_CAT
#undef CP_CAT_
