/* A sparse decoder's forward pass and the first step of its backward pass, the two weight
 * gradients, and AuxK's residual (faithful/native.py). */
#include "native.h"

#ifdef __AVX512F__
/* decode_rows' columns [c0, c0 + 16 NV) of row i: the output summed in registers over the k
 * picks, then the error, its squares (into the 16 lanes sq), the gradient g, and each pick's dot
 * product with g added to its 16 lanes dl + 16 j (while the k decoder rows' columns are in L1). */
#define DECODE_CHUNK(NV)                                                                             \
static inline void decode_chunk##NV(const int64_t *idx, const float *a, const float *W, const float *bias, \
                                    const float *xi, int k, int64_t d, int64_t c0, __m512 scale, float *o, \
                                    float *gi, float *sq, float *dl) {                               \
    __m512 acc[NV], g[NV];                                                                           \
    for (int v = 0; v < NV; v++) acc[v] = _mm512_setzero_ps();                                       \
    for (int j = 0; j < k; j++) {                                                                    \
        const float *w = W + idx[j] * d + c0;                                                        \
        __m512 s = _mm512_set1_ps(a[j]);                                                             \
        for (int v = 0; v < NV; v++) acc[v] = _mm512_fmadd_ps(s, _mm512_loadu_ps(w + 16 * v), acc[v]); \
    }                                                                                                \
    for (int v = 0; v < NV; v++) {                                                                   \
        __m512 out = _mm512_add_ps(acc[v], _mm512_loadu_ps(bias + c0 + 16 * v));                     \
        __m512 e = _mm512_sub_ps(out, _mm512_loadu_ps(xi + c0 + 16 * v));                            \
        _mm512_storeu_ps(o + c0 + 16 * v, out);                                                      \
        _mm512_storeu_ps(sq, _mm512_fmadd_ps(e, e, _mm512_loadu_ps(sq)));                            \
        g[v] = _mm512_mul_ps(scale, e);                                                              \
        _mm512_storeu_ps(gi + c0 + 16 * v, g[v]);                                                    \
    }                                                                                                \
    for (int j = 0; j < k; j++) {                                                                    \
        if (!(a[j] > 0)) continue;                                                                   \
        const float *w = W + idx[j] * d + c0;                                                        \
        __m512 t = _mm512_loadu_ps(dl + 16 * j);                                                     \
        for (int v = 0; v < NV; v++) t = _mm512_fmadd_ps(g[v], _mm512_loadu_ps(w + 16 * v), t);     \
        _mm512_storeu_ps(dl + 16 * j, t);                                                            \
    }                                                                                                \
}
DECODE_CHUNK(8)
DECODE_CHUNK(1)
#endif

/* A TopK decoder's forward and first backward step, row by row while the row's k decoder rows
 * are in cache: out[i] = bias + sum_j a[i, j] W[idx[i, j]] (j in order), err = out[i] - x[i],
 * sq[i] = |err|², g[i] = scale * err, and dots[i, j] = <g[i], W[idx[i, j]]> where a[i, j] > 0,
 * else 0 (the gradient reaching a ReLU'd activation). x, out [rows, d]; g [rows, d] with row
 * stride ldg; W [n, d]. Sums of squares and dot products run in 16 lanes (c mod 16) over the
 * whole 16s, then the lanes in order, then the tail. With AVX-512, 128 columns at a time are
 * done in registers, and each decoder row is read once. */
void decode_rows(const int64_t *idx, const float *a, const float *W, const float *bias, const float *x,
                 int64_t rows, int k, int64_t d, float scale, float *out, float *sq, float *g, int64_t ldg,
                 float *dots, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        float *lanes = malloc(sizeof(float) * 16 * (k + 1));  /* k dot products', then the squares' */
        #pragma omp for schedule(static)
        for (int64_t i = 0; i < rows; i++) {
            float *o = out + i * d, *gi = g + i * ldg;
            const float *xi = x + i * d;
            const int64_t *ix = idx + i * k;
            const float *ai = a + i * k;
            for (int64_t q = 0; q < 16 * (k + 1); q++) lanes[q] = 0.0f;
            int64_t c0 = 0;
#ifdef __AVX512F__
            __m512 sc = _mm512_set1_ps(scale);
            float *sq_lanes = lanes + 16 * k;
            for (; c0 + 128 <= d; c0 += 128) decode_chunk8(ix, ai, W, bias, xi, k, d, c0, sc, o, gi, sq_lanes, lanes);
            for (; c0 + 16 <= d; c0 += 16) decode_chunk1(ix, ai, W, bias, xi, k, d, c0, sc, o, gi, sq_lanes, lanes);
#endif
            for (int64_t c = c0; c < d; c++) o[c] = 0.0f;
            for (int j = 0; j < k; j++) {
                const float *w = W + ix[j] * d;
                float s = ai[j];
                for (int64_t c = c0; c < d; c++) o[c] += s * w[c];
            }
            float *acc = lanes + 16 * k, total = 0.0f;
            int64_t c = c0;
            for (; c + 16 <= d; c += 16)
                for (int q = 0; q < 16; q++) {
                    float e = (o[c + q] += bias[c + q]) - xi[c + q];
                    acc[q] += e * e;
                    gi[c + q] = scale * e;
                }
            for (int q = 0; q < 16; q++) total += acc[q];
            int64_t tail = c;
            for (; c < d; c++) {
                float e = (o[c] += bias[c]) - xi[c];
                total += e * e;
                gi[c] = scale * e;
            }
            sq[i] = total;
            for (int j = 0; j < k; j++) {
                float dot = 0.0f, *pa = lanes + 16 * j;
                if (ai[j] > 0) {
                    const float *w = W + ix[j] * d;
                    int64_t cc = c0;
                    for (; cc + 16 <= d; cc += 16)
                        for (int q = 0; q < 16; q++) pa[q] += gi[cc + q] * w[cc + q];
                    for (int q = 0; q < 16; q++) dot += pa[q];
                    for (cc = tail; cc < d; cc++) dot += gi[cc] * w[cc];
                }
                dots[i * k + j] = dot;
            }
        }
        free(lanes);
    }
}

/* order[p] = r << 32 | j names entry e = r * k + j (row r, its j-th pick). */
#define ENTRY_ROW(o) ((o) >> 32)
#define ENTRY(o, k) (ENTRY_ROW(o) * (k) + ((o) & 0xffffffff))

/* A latent's extra rows, added to its ra and rb after the entries' sum (AuxK's gradient rows:
 * both fp32, or both bf16 (is_bf16), added in fp32), or ga = NULL. */
typedef struct { const void *ga, *gb; int is_bf16; } Extra;

static inline float extra_at(const void *row, int64_t c, int is_bf16) {
    return is_bf16 ? bf16_to_float(((const uint16_t *)row)[c]) : ((const float *)row)[c];
}

#ifdef __AVX512F__
/* Squares of the 16 floats v added to 16 double lanes (lo: 0-7, hi: 8-15): exact products. */
static inline void add_sq16(__m512 v, __m512d *lo, __m512d *hi) {
    __m512d vl = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    __m512d vh = _mm512_cvtps_pd(_mm256_castsi256_ps(_mm512_extracti64x4_epi64(_mm512_castps_si512(v), 1)));
    *lo = _mm512_fmadd_pd(vl, vl, *lo);
    *hi = _mm512_fmadd_pd(vh, vh, *hi);
}

static inline __m512 load16(const void *row, int64_t c, int is_bf16) {
    return is_bf16 ? bf16x16((const uint16_t *)row + c) : _mm512_loadu_ps((const float *)row + c);
}

/* outer_row's bf16 columns [c0, c0 + 16 NV), summed in registers over the entries, plus the
 * latent's extra rows, stored (ra streamed past the caches when `stream`: 64-byte aligned), and
 * their squares added to the lanes sq[0..1] (ra's) and sq[2..3] (rb's). */
#define OUTER_CHUNK(NV)                                                                              \
static inline void outer_chunk##NV(const int64_t *order, int64_t p0, int64_t p1, int k, const float *a, \
                                   const float *b, const uint16_t *A, const uint16_t *B, int64_t ld,     \
                                   int64_t c0, float *ra, float *rb, int stream, Extra x, __m512d *sq) { \
    __m512 acc_a[NV], acc_b[NV];                                                                     \
    for (int v = 0; v < NV; v++) { acc_a[v] = _mm512_setzero_ps(); acc_b[v] = _mm512_setzero_ps(); } \
    for (int64_t p = p0; p < p1; p++) {                                                              \
        int64_t e = ENTRY(order[p], k), off = ENTRY_ROW(order[p]) * ld + c0;                         \
        __m512 va = _mm512_set1_ps(a[e]), vb = _mm512_set1_ps(b[e]);                                 \
        for (int v = 0; v < NV; v++) {                                                               \
            acc_a[v] = _mm512_fmadd_ps(va, bf16x16(A + off + 16 * v), acc_a[v]);                     \
            acc_b[v] = _mm512_fmadd_ps(vb, bf16x16(B + off + 16 * v), acc_b[v]);                     \
        }                                                                                            \
    }                                                                                                \
    for (int v = 0; v < NV; v++) {                                                                   \
        if (x.ga) {                                                                                  \
            acc_a[v] = _mm512_add_ps(acc_a[v], load16(x.ga, c0 + 16 * v, x.is_bf16));                \
            acc_b[v] = _mm512_add_ps(acc_b[v], load16(x.gb, c0 + 16 * v, x.is_bf16));                \
        }                                                                                            \
        if (stream) _mm512_stream_ps(ra + c0 + 16 * v, acc_a[v]);                                    \
        else _mm512_storeu_ps(ra + c0 + 16 * v, acc_a[v]);                                           \
        _mm512_storeu_ps(rb + c0 + 16 * v, acc_b[v]);                                                \
        add_sq16(acc_a[v], sq, sq + 1);                                                              \
        add_sq16(acc_b[v], sq + 2, sq + 3);                                                          \
    }                                                                                                \
}
OUTER_CHUNK(8)
OUTER_CHUNK(1)
#endif

/* r[c0, d)'s squares: those past the last whole 16 into s, the rest into 16 lanes (c mod 16). */
static void add_sq(const float *r, int64_t c0, int64_t d, double *lanes, double *s) {
    int64_t c = c0;
    for (; c + 16 <= d; c += 16)
        for (int q = 0; q < 16; q++) lanes[q] += (double)r[c + q] * r[c + q];
    for (; c < d; c++) *s += (double)r[c] * r[c];
}

/* ra[c] = sum over the entries order[p0..p1) (in order) of a[e] * A[r, c] (e and its row r as
 * ENTRY and ENTRY_ROW give them), and rb[c] likewise with b and B, then + x's rows if any; returns
 * their sums of squares in sq2[0], sq2[1]: the tail past the last whole 16 first, then 16 lanes
 * (c mod 16) in order, each in double (exact products: a share that would overflow fp32 stays
 * finite). With AVX-512 and bf16, 128 columns at a time are summed in registers, and ra is
 * streamed past the caches when `stream` (64-byte aligned rows; it is not read again here). */
static void outer_row(const int64_t *order, int64_t p0, int64_t p1, int k, const float *a,
                      const float *b, const void *A, const void *B, int is_bf16, int64_t d,
                      int64_t ld, float *restrict ra, float *restrict rb, int stream, Extra x, double *sq2) {
    double lanes_a[16] = {0}, lanes_b[16] = {0};
    int64_t c0 = 0;
#ifdef __AVX512F__
    if (is_bf16) {
        __m512d sq[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
        for (; c0 + 128 <= d; c0 += 128) outer_chunk8(order, p0, p1, k, a, b, A, B, ld, c0, ra, rb, stream, x, sq);
        for (; c0 + 16 <= d; c0 += 16) outer_chunk1(order, p0, p1, k, a, b, A, B, ld, c0, ra, rb, stream, x, sq);
        _mm512_storeu_pd(lanes_a, sq[0]); _mm512_storeu_pd(lanes_a + 8, sq[1]);
        _mm512_storeu_pd(lanes_b, sq[2]); _mm512_storeu_pd(lanes_b + 8, sq[3]);
    }
#endif
    for (int64_t c = c0; c < d; c++) { ra[c] = 0.0f; rb[c] = 0.0f; }
    for (int64_t p = p0; p < p1 && c0 < d; p++) {
        int64_t e = ENTRY(order[p], k), off = ENTRY_ROW(order[p]) * ld;
        float sa = a[e], sb = b[e];
        if (is_bf16) {
            const uint16_t *xa = (const uint16_t *)A + off, *xb = (const uint16_t *)B + off;
            for (int64_t c = c0; c < d; c++) {
                ra[c] += sa * bf16_to_float(xa[c]);
                rb[c] += sb * bf16_to_float(xb[c]);
            }
        } else {
            const float *xa = (const float *)A + off, *xb = (const float *)B + off;
            for (int64_t c = c0; c < d; c++) { ra[c] += sa * xa[c]; rb[c] += sb * xb[c]; }
        }
    }
    for (int64_t c = c0; c < d && x.ga; c++) {
        ra[c] += extra_at(x.ga, c, x.is_bf16);
        rb[c] += extra_at(x.gb, c, x.is_bf16);
    }
    sq2[0] = sq2[1] = 0.0;
    add_sq(ra, c0, d, lanes_a, sq2);
    add_sq(rb, c0, d, lanes_b, sq2 + 1);
    for (int q = 0; q < 16; q++) { sq2[0] += lanes_a[q]; sq2[1] += lanes_b[q]; }
}

/* outBt[c * n + q] = tile[q * d + c] for q < nl, c < d: a tile's 16 columns of the transposed
 * gradient. With AVX-512, 16 at a time by one gather, and streamed (non-temporal) when the rows
 * are 64-byte aligned: outBt's rows lie n floats apart, so each store would otherwise first
 * read a cache line from memory (half the kernel's time). */
static void tile_to_columns(const float *tile, int64_t nl, int64_t d, int64_t n, float *outBt) {
#ifdef __AVX512F__
    if (nl == 16 && d < (1 << 26)) {
        __m512i step = _mm512_mullo_epi32(_mm512_set1_epi32((int)d),
                                          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
        if (((uintptr_t)outBt & 63) == 0 && (n & 15) == 0) {
            for (int64_t c = 0; c < d; c++)
                _mm512_stream_ps(outBt + c * n, _mm512_i32gather_ps(step, tile + c, 4));
            _mm_sfence();  /* this thread's streamed stores are visible before it moves on */
        } else {
            for (int64_t c = 0; c < d; c++)
                _mm512_storeu_ps(outBt + c * n, _mm512_i32gather_ps(step, tile + c, 4));
        }
        return;
    }
#endif
    for (int64_t c = 0; c < d; c++)
        for (int64_t q = 0; q < nl; q++) outBt[c * n + q] = tile[q * d + c];
}

/* For each latent l: outA[l, :] = sum a[e] * A[e / k, :] and outBt[:, l] = sum b[e] * B[e / k, :]
 * over the entries e (of rows * k) with idx[e] == l, in increasing e; latents no entry names
 * get zeros. A, B [rows, d], fp32 or bf16 (raw bits, is_bf16: half the bytes read; sums in
 * fp32); outA [n, d], outBt [d, n]. These are Sᵀ A and Bᵀ S' for the sparse [rows, n] matrices
 * S, S' holding a, b at idx: the decoder's gradient and the encoder's, each in its parameter's
 * layout; ld is A's and B's row stride (in elements). Then, for the m distinct latents ids[j]
 * (m may be 0), G[j, :] is added to outA's row and H[j, :] to outBt's column (G, H [m, d], both
 * fp32 or both bf16 (gh_bf16), added in fp32): AuxK's share. Latents go in tiles of 16, so that
 * outBt is written 16 floats at a time (streamed past the caches where it can, as outA's rows
 * are: neither is read again here). lat_sq[l], lat_sq[n + l] = the sums of squares of outA's row
 * l and outBt's column l, and sq[0], sq[1] their totals over l in order (for the gradient's
 * norm). `start` (n + 1), `order` (rows * k) and `pos` (n) are scratch. */
void sparse_outer(const int64_t *idx, const float *a, const float *b, int64_t rows, int k, int64_t n,
                  const void *A, const void *B, int is_bf16, int64_t d, int64_t ld, const int64_t *ids,
                  int64_t m_extra, const void *G, const void *H, int gh_bf16, float *outA, float *outBt,
                  double *sq, double *lat_sq, int64_t *start, int64_t *order, int64_t *pos, int threads) {
    int64_t m = rows * k, tiles = (n + 15) / 16;
    /* outA's rows are streamed where outer_row's registers write whole, 64-byte aligned lines */
    int stream = is_bf16 && ((uintptr_t)outA & 63) == 0 && (d & 15) == 0;
    for (int64_t l = 0; l <= n; l++) start[l] = 0;
    for (int64_t e = 0; e < m; e++) start[idx[e] + 1]++;
    for (int64_t l = 0; l < n; l++) start[l + 1] += start[l];
    for (int64_t r = 0; r < rows; r++)  /* start[l] becomes l's end */
        for (int64_t j = 0; j < k; j++) order[start[idx[r * k + j]]++] = r << 32 | j;
    for (int64_t l = 0; l < n; l++) pos[l] = -1;
    for (int64_t j = 0; j < m_extra; j++) pos[ids[j]] = j;
    #pragma omp parallel num_threads(threads)
    {
        float *tile = malloc(sizeof(float) * 16 * d);
        double sq2[2];
        size_t row_bytes = (gh_bf16 ? 2 : 4) * d;
        #pragma omp for schedule(dynamic, 4)
        for (int64_t t = 0; t < tiles; t++) {
            int64_t l0 = 16 * t, nl = n - l0 < 16 ? n - l0 : 16;
            for (int64_t l = l0; l < l0 + nl; l++) {
                Extra x = {NULL, NULL, gh_bf16};
                if (pos[l] >= 0) {
                    x.ga = (const char *)G + pos[l] * row_bytes;
                    x.gb = (const char *)H + pos[l] * row_bytes;
                }
                outer_row(order, l ? start[l - 1] : 0, start[l], k, a, b, A, B, is_bf16, d, ld, outA + l * d,
                          tile + (l - l0) * d, stream, x, sq2);
                lat_sq[l] = sq2[0];
                lat_sq[n + l] = sq2[1];
            }
            tile_to_columns(tile, nl, d, n, outBt + l0);
#ifdef __AVX512F__
            if (stream) _mm_sfence();  /* outA's streamed rows are visible before the thread moves on */
#endif
        }
        free(tile);
    }
    sq[0] = sq[1] = 0.0;
    for (int64_t l = 0; l < n; l++) { sq[0] += lat_sq[l]; sq[1] += lat_sq[n + l]; }
}

/* torch's float -> bf16 rounding: to nearest, ties to even; NaN -> a quiet NaN (0x7fc0, where
 * torch's vectorised conversion may keep another payload). */
static inline uint16_t float_to_bf16(float f) {
    union { float f; uint32_t u; } c = {.f = f};
    uint32_t r = (c.u + 0x7fffu + ((c.u >> 16) & 1u)) >> 16;
    return (uint16_t)(f != f ? 0x7fc0u : r);
}

/* AuxK's residual and its gradient, row by row: diff = R + (sae_out - x) (R the dead latents'
 * reconstruction, fp32 or bf16 (is_bf16); rounded as torch rounds R.float() + (sae_out - x)),
 * row_sq[r] = the row's sum of diff² (16 fp32 lanes, then in double), and g = diff * scale,
 * written in R's dtype (NaN payloads apart). One pass where torch's operations take five. */
void aux_residual(const void *R, int is_bf16, const float *sae_out, const float *x, int64_t rows, int64_t d,
                  float scale, void *g, double *row_sq, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        float diff[16], lanes[16] = {0};
        double s = 0.0;
        for (int64_t c0 = 0; c0 < d; c0 += 16) {
            int w = d - c0 < 16 ? (int)(d - c0) : 16;
            int64_t i0 = r * d + c0;
            for (int q = 0; q < w; q++) {
                float rec = is_bf16 ? bf16_to_float(((const uint16_t *)R)[i0 + q]) : ((const float *)R)[i0 + q];
                diff[q] = rec + (sae_out[i0 + q] - x[i0 + q]);
            }
            if (is_bf16)
                for (int q = 0; q < w; q++) ((uint16_t *)g)[i0 + q] = float_to_bf16(diff[q] * scale);
            else
                for (int q = 0; q < w; q++) ((float *)g)[i0 + q] = diff[q] * scale;
            if (w == 16)
                for (int q = 0; q < 16; q++) lanes[q] += diff[q] * diff[q];
            else
                for (int q = 0; q < w; q++) s += (double)diff[q] * diff[q];
        }
        for (int q = 0; q < 16; q++) s += lanes[q];
        row_sq[r] = s;
    }
}
