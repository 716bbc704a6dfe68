/* Body of the annealing kernel, instantiated per dtype and ISA by
 * kd_kernels.h next to kd_impl.h (FT element type, SFX and KD_ISA name
 * suffixes). Plain loops over KD_LANES double accumulators, which each
 * build's auto-vectoriser widens to its own registers: the lane structure,
 * hence the bits, is the same on all builds. */
#define KD_CAT_(a, b) a##_##b
#define KD_CAT(a, b) KD_CAT_(a, b)
#define NAME(fn) KD_CAT(KD_CAT(fn, SFX), KD_ISA)

/* 1 when the row holds NaN or +-inf */
static int NAME(row_nonfinite)(const FT *x, int64_t C)
{
    /* blocks of KD_LANES (no j % KD_LANES in the loop) so that it vectorises */
    int bad[KD_LANES] = {0};
    int64_t j = 0;
    for (; j + KD_LANES <= C; j += KD_LANES)
        for (int k = 0; k < KD_LANES; k++)
            bad[k] |= !(x[j + k] - x[j + k] == 0); /* NaN for NaN and +-inf */
    for (int k = 0; j < C; j++, k++)
        bad[k] |= !(x[j] - x[j] == 0);
    int any = 0;
    for (int k = 0; k < KD_LANES; k++)
        any |= bad[k];
    return any;
}

static int NAME(row_check)(const FT *z, const FT *v, int64_t C)
{
    return NAME(row_nonfinite)(z, C)   ? KD_ERR_NONFINITE_STUDENT
           : NAME(row_nonfinite)(v, C) ? KD_ERR_NONFINITE_TEACHER
                                       : KD_OK;
}

int NAME(kd_mse)(int64_t n_rows, int64_t n_cols, const FT *student, int64_t student_stride,
                 const FT *teacher, int64_t teacher_stride, double phi,
                 const kd_rows *rows, int check_finite, double grad_scale,
                 double *row_loss, FT *grad, int64_t grad_stride, int n_threads,
                 kd_status *status)
{
    const int64_t C = n_cols;
    status->code = KD_OK;
    status->row = -1;
    if (n_rows < 0 || n_cols <= 0)
        return status->code = KD_ERR_ARGUMENT;
    const int par = kd_parallel(n_threads, n_rows, C);
    int64_t bad_row = INT64_MAX;
    int bad_code = KD_OK;
    /* The finiteness check comes out of the loss: z - phi v is NaN or +-inf
     * wherever z or v is (phi = 0 included: 0 * inf = NaN), and a float row
     * cannot overflow the double sum, so only a row whose sum is not finite is
     * scanned again. A gradient written over an input is checked first, in a
     * pass of its own, so that an error leaves it as it was. */
    const int prepass = check_finite && grad &&
                        (kd_spans_overlap(grad, grad_stride, student, student_stride, n_rows,
                                          C, sizeof(FT)) ||
                         kd_spans_overlap(grad, grad_stride, teacher, teacher_stride, n_rows,
                                          C, sizeof(FT)));
    if (prepass) {
        kd_team team = kd_team_start(C);
#pragma omp parallel num_threads(n_threads) if (par)
        {
#pragma omp for schedule(guided, team.chunk) nowait
        for (int64_t i = 0; i < n_rows; i++) {
            if (!kd_row_counts(rows, i))
                continue;
            int code = NAME(row_check)(student + i * student_stride,
                                       teacher + i * teacher_stride, C);
            KD_RECORD_ERROR(code, i, bad_code, bad_row);
        }
        kd_team_finish(&team);
        }
        if (bad_code != KD_OK) {
            status->row = bad_row;
            return status->code = bad_code;
        }
    }
    const FT phif = (FT)phi, two_w = (FT)(2.0 * grad_scale);
    kd_team team = kd_team_start(C);
#pragma omp parallel num_threads(n_threads) if (par)
    {
#pragma omp for schedule(guided, team.chunk) nowait
    for (int64_t i = 0; i < n_rows; i++) {
        FT *g = grad ? grad + i * grad_stride : NULL;
        if (!kd_row_counts(rows, i)) {
            row_loss[i] = 0.0;
            if (g)
                memset(g, 0, sizeof(FT) * (size_t)C);
            continue;
        }
        const FT *z = student + i * student_stride, *v = teacher + i * teacher_stride;
        double s[KD_LANES] = {0};
        int64_t j = 0;
        if (g) {
            for (; j + KD_LANES <= C; j += KD_LANES)
                for (int k = 0; k < KD_LANES; k++) {
                    const FT zj = z[j + k], vj = v[j + k];
                    const double d = (double)zj - phi * (double)vj;
                    s[k] += d * d;
                    g[j + k] = two_w * (zj - phif * vj);
                }
        } else {
            for (; j + KD_LANES <= C; j += KD_LANES)
                for (int k = 0; k < KD_LANES; k++) {
                    const double d = (double)z[j + k] - phi * (double)v[j + k];
                    s[k] += d * d;
                }
        }
        for (int k = 0; j < C; j++, k++) {
            const FT zj = z[j], vj = v[j];
            const double d = (double)zj - phi * (double)vj;
            s[k] += d * d;
            if (g)
                g[j] = two_w * (zj - phif * vj);
        }
        row_loss[i] = kd_sum_lanes(s);
        if (check_finite && !prepass && !isfinite(row_loss[i])) {
            int code = NAME(row_check)(z, v, C);
            KD_RECORD_ERROR(code, i, bad_code, bad_row);
        }
    }
    kd_team_finish(&team);
    }
    if (bad_code != KD_OK) {
        status->row = bad_row;
        return status->code = bad_code;
    }
    return KD_OK;
}

#undef NAME
#undef KD_CAT
#undef KD_CAT_
