/* One key block of attention with per-query statistics, for the CPU backend (interp_kernels/cpu_fused.py).
 *
 * The caller computes the block's scores s = q·kᵀ·scale with a GEMM, calls block_update, then adds
 * e·v to acc with a second GEMM. block_update reads each score row once (in L1 after the row max)
 * and updates that row's running state in place, flash-attention style:
 *   m    running max score               (the caller starts it at -3e38: no key seen yet)
 *   arg  key index of m                  (-1 until then; the lowest index on ties)
 *   z    Σ exp(s - m)                    over the keys seen so far
 *   ex   Σ exp(s - m)·(s - m)  (<= 0)    so that entropy = log z - ex / z without cancellation
 *   mass Σ exp(s - m) over each key range
 *   acc  Σ exp(s - m)·v                  (rows rescaled here when m grows; the GEMM adds this block)
 * and writes e = exp(s - m) for the block (0 where the query does not see the key).
 *
 * Rows are [B, H_kv, g, C] flattened (C innermost): row r is query q0 + r % C.
 * Query i sees key j when: causal, j <= i; window w >= 0 (negative: none), also i - w < j (causal)
 * or |i - j| < w.
 * Compiled with -ffast-math (vectorised exp from libmvec, reassociated sums), so no infinity is
 * used: the empty max is a finite sentinel and hidden keys are skipped, not filled.
 */
#include <math.h>
#include <stdint.h>

#define BLOCK_UPDATE(NAME, T, EXP)                                                                 \
void NAME(const T *s, T *e, T *acc, int64_t rows, int64_t k, int64_t d, int64_t j0, int64_t q0,     \
          int64_t c, int64_t causal, int64_t window, const int64_t *ranges, int64_t n_ranges,      \
          T *m, int64_t *arg, T *z, T *ex, T *mass) {                                              \
    for (int64_t r = 0; r < rows; ++r) {                                                           \
        const T *sr = s + r * k;                                                                   \
        T *er = e + r * k;                                                                         \
        int64_t i = q0 + r % c, lo = 0, hi = k;    /* the keys of this block row r sees */         \
        if (causal && i - j0 + 1 < hi) hi = i - j0 + 1;                                            \
        if (window >= 0) {                    /* window < 0: none */                                 \
            if (i - window + 1 - j0 > lo) lo = i - window + 1 - j0;                                \
            if (!causal && i + window - j0 < hi) hi = i + window - j0;                             \
        }                                                                                          \
        if (hi <= lo) {                                                                            \
            for (int64_t j = 0; j < k; ++j) er[j] = 0;                                             \
            continue;                                                                              \
        }                                                                                          \
        T bm = sr[lo];                                                                             \
        for (int64_t j = lo + 1; j < hi; ++j) bm = sr[j] > bm ? sr[j] : bm;                        \
        T mr = m[r];                                                                               \
        if (bm > mr) {             /* a new max: rescale the state (an equal max keeps the earlier key) */ \
            int64_t idx = lo;                                                                      \
            while (idx < hi - 1 && sr[idx] != bm) ++idx;                                           \
            T alpha = EXP(mr - bm);                                                                \
            ex[r] = alpha * (ex[r] + (mr - bm) * z[r]);   /* both terms <= 0 */                    \
            z[r] *= alpha;                                                                         \
            for (int64_t q = 0; q < n_ranges; ++q) mass[r * n_ranges + q] *= alpha;                \
            for (int64_t t = 0; t < d; ++t) acc[r * d + t] *= alpha;                               \
            m[r] = mr = bm;                                                                        \
            arg[r] = j0 + idx;                                                                     \
        }                                                                                          \
        for (int64_t j = 0; j < lo; ++j) er[j] = 0;                                                \
        for (int64_t j = hi; j < k; ++j) er[j] = 0;                                                \
        T zb = 0, exb = 0;                                                                         \
        for (int64_t j = lo; j < hi; ++j) {                                                        \
            T x = sr[j] - mr;                                                                      \
            T v = EXP(x);                                                                          \
            er[j] = v;                                                                             \
            zb += v;                                                                               \
            exb += v * x;                                                                          \
        }                                                                                          \
        z[r] += zb;                                                                                \
        ex[r] += exb;                                                                              \
        for (int64_t q = 0; q < n_ranges; ++q) {   /* ranges: absolute half-open key ranges */     \
            int64_t a = ranges[2 * q] - j0, b = ranges[2 * q + 1] - j0;                            \
            if (a < lo) a = lo;                                                                    \
            if (b > hi) b = hi;                                                                    \
            T sum = 0;                                                                             \
            for (int64_t j = a; j < b; ++j) sum += er[j];                                          \
            mass[r * n_ranges + q] += sum;                                                         \
        }                                                                                          \
    }                                                                                              \
}

BLOCK_UPDATE(block_update_f32, float, expf)
BLOCK_UPDATE(block_update_f64, double, exp)

/* Attention received by one key block's keys from `rows` query rows: col[head·ld + j] += exp(s - lse) over
 * the keys each row sees (rows [B, H_kv, g, C] flattened, head = r / C; col points at the block's first key
 * of a [B·H, ld] array). A row with |lse| >= 1e38 (the caller's mark for a row that saw no key) adds nothing. */
#define RECEIVED_BLOCK(NAME, T, EXP)                                                               \
void NAME(const T *s, const T *lse, T *col, int64_t ld, int64_t rows, int64_t k, int64_t j0,      \
          int64_t q0, int64_t c, int64_t causal, int64_t window) {                                 \
    for (int64_t r = 0; r < rows; ++r) {                                                           \
        const T *sr = s + r * k;                                                                   \
        T *cr = col + (r / c) * ld;                                                                \
        T l = lse[r];                                                                              \
        int64_t i = q0 + r % c, lo = 0, hi = k;                                                    \
        if (!(l < 1.0e38 && l > -1.0e38)) continue;                                                \
        if (causal && i - j0 + 1 < hi) hi = i - j0 + 1;                                            \
        if (window >= 0) {                                                                         \
            if (i - window + 1 - j0 > lo) lo = i - window + 1 - j0;                                \
            if (!causal && i + window - j0 < hi) hi = i + window - j0;                             \
        }                                                                                          \
        for (int64_t j = lo; j < hi; ++j) cr[j] += EXP(sr[j] - l);                                 \
    }                                                                                              \
}

RECEIVED_BLOCK(received_block_f32, float, expf)
RECEIVED_BLOCK(received_block_f64, double, exp)
