/* Row-wise top-k, as indices or a mask, and the encoder's bias, rescaling and TopK in one pass
 * (faithful/native.py). */
#include "native.h"

/* An int32 that orders as the float does: NaN above everything (as in torch.topk), and -0
 * equal to +0. */
static inline int32_t fkey(float f) {
    union { float f; int32_t i; } u = {.f = f};
    int32_t key = u.i ^ ((u.i >> 31) & 0x7fffffff);
    key = f == 0.0f ? 0 : key;
    return f != f ? INT32_MAX : key;
}

#ifdef __AVX512F__
/* fkey of 16 floats at once. */
static inline __m512i fkey16(__m512 f) {
    __m512i i = _mm512_castps_si512(f);
    __m512i key = _mm512_xor_si512(i, _mm512_and_si512(_mm512_srai_epi32(i, 31), _mm512_set1_epi32(0x7fffffff)));
    key = _mm512_mask_mov_epi32(key, _mm512_cmp_ps_mask(f, _mm512_setzero_ps(), _CMP_EQ_OQ), _mm512_setzero_si512());
    return _mm512_mask_mov_epi32(key, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), _mm512_set1_epi32(INT32_MAX));
}
#endif

/* How many of key[0, m) are >= t. */
static inline int64_t count_ge(const int32_t *key, int64_t m, int32_t t) {
    int64_t count = 0, c = 0;
#ifdef __AVX512F__
    __m512i tv = _mm512_set1_epi32(t);
    for (; c + 16 <= m; c += 16)
        count += __builtin_popcount(_mm512_cmpge_epi32_mask(_mm512_loadu_si512(key + c), tv));
#endif
    for (; c < m; c++) count += key[c] >= t;
    return count;
}

/* The largest t with at least k of key[0, m) >= t (the k-th largest key): bisection, 32
 * vectorised counting passes. */
static int32_t kth_key(const int32_t *key, int64_t m, int k) {
    int64_t lo = INT32_MIN, hi = INT32_MAX;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo + 1) / 2;
        if (count_ge(key, m, (int32_t)mid) >= k) lo = mid; else hi = mid - 1;
    }
    return (int32_t)lo;
}

/* Scratch for one row of n: its keys, the blocks' maxima, and the candidates' keys and columns. */
typedef struct { int32_t *key, *bk, *ck, *ci; } RowScratch;

static RowScratch row_scratch(int64_t n) {
    RowScratch s = {malloc(sizeof(int32_t) * n), malloc(sizeof(int32_t) * (n / 16 + 1)),
                    malloc(sizeof(int32_t) * n), malloc(sizeof(int32_t) * n)};
    return s;
}

static void free_row_scratch(RowScratch s) { free(s.key); free(s.bk); free(s.ck); free(s.ci); }

#ifdef __AVX512F__
/* The keys of block b (16 values v) into s.key, and their largest into s.bk[b]. */
static inline void block_keys16(__m512 v, int64_t b, RowScratch s) {
    __m512i key = fkey16(v);
    _mm512_storeu_si512(s.key + 16 * b, key);
    s.bk[b] = _mm512_reduce_max_epi32(key);
}
#endif

/* s.key[c] = fkey(row[c]) for c < n, and s.bk[b] = the largest key of the whole block b of 16. */
static void row_keys(const float *row, int64_t n, RowScratch s) {
    int64_t b = 0;
#ifdef __AVX512F__
    for (; 16 * b + 16 <= n; b++) block_keys16(_mm512_loadu_ps(row + 16 * b), b, s);
#endif
    for (; 16 * b + 16 <= n; b++) {
        int32_t mx = INT32_MIN;
        for (int q = 0; q < 16; q++) {
            int32_t key = s.key[16 * b + q] = fkey(row[16 * b + q]);
            mx = key > mx ? key : mx;
        }
        s.bk[b] = mx;
    }
    for (int64_t c = 16 * b; c < n; c++) s.key[c] = fkey(row[c]);
}

/* The columns of the k largest of s.key[0, n) (row_keys), by increasing column, into out; among
 * equal keys the earlier columns. With at least k blocks of 16: t = the k-th largest block maximum
 * is at most the row's k-th largest key (k distinct keys reach it), and every key >= t lies in a
 * block whose maximum reaches t, or in the tail: only those are searched (about k + 15 keys of
 * 4,608 for k = 32). Columns are int32 (rows shorter than 2^31). */
static void top_keys(int64_t n, int k, int64_t *out, RowScratch s) {
    int64_t nb = n / 16, c = 0, b = 0;
    int32_t t = nb >= k ? kth_key(s.bk, nb, k) : INT32_MIN;
#ifdef __AVX512F__
    __m512i tv = _mm512_set1_epi32(t), iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (; b < nb; b++) {
        if (s.bk[b] < t) continue;
        __m512i key = _mm512_loadu_si512(s.key + 16 * b);
        __mmask16 keep = _mm512_cmpge_epi32_mask(key, tv);
        _mm512_mask_compressstoreu_epi32(s.ck + c, keep, key);
        _mm512_mask_compressstoreu_epi32(s.ci + c, keep, _mm512_add_epi32(iota, _mm512_set1_epi32((int)(16 * b))));
        c += __builtin_popcount(keep);
    }
#endif
    for (int64_t e = 16 * b; e < n; e++)
        if (s.key[e] >= t && (e >= 16 * nb || s.bk[e / 16] >= t)) { s.ck[c] = s.key[e]; s.ci[c++] = (int32_t)e; }
    int32_t kth = kth_key(s.ck, c, k);
    int64_t ties = k, q = 0;
    for (int64_t i = 0; i < c; i++) ties -= s.ck[i] > kth;
    for (int64_t i = 0; i < c; i++)
        if (s.ck[i] > kth || (s.ck[i] == kth && ties-- > 0)) out[q++] = s.ci[i];
}

/* out[r, :] = the column indices of the k largest h[r, :] (h row-major with row stride ld),
 * in increasing order. */
void topk_rows(const float *h, int64_t rows, int64_t n, int64_t ld, int k, int64_t *out, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        RowScratch s = row_scratch(n);
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            row_keys(h + r * ld, n, s);
            top_keys(n, k, out + r * k, s);
        }
        free_row_scratch(s);
    }
}

/* mask[r, :] = 1 at the k largest of v[r, :], else 0 (as topk_rows chooses them). */
void topk_mask(const float *v, int64_t rows, int64_t n, int k, unsigned char *mask, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        RowScratch s = row_scratch(n);
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            unsigned char *m = mask + r * n;
            row_keys(v + r * n, n, s);
            int32_t kth = kth_key(s.key, n, k);
            int64_t ties = k;
            for (int64_t c = 0; c < n; c++) ties -= s.key[c] > kth;
            for (int64_t c = 0; c < n; c++) m[c] = s.key[c] > kth || (s.key[c] == kth && ties-- > 0);
        }
        free_row_scratch(s);
    }
}

/* hidden[r, :] = (xw[r, :] + bias) * scale (scale may be NULL: 1), with xw bf16 (raw bits,
 * is_bf16) or fp32, rounded as torch's separate add and multiply are; and out[r, :] its top k as
 * topk_rows gives them. One pass over each row, which also takes the keys and the blocks' maxima;
 * hidden may be NULL (not kept: a 19 MB write saved at 1,024 × 4,608). Also picked[r, q] =
 * xw[r, cols[q]] + bias[cols[q]] for the m columns cols (AuxK's dead latents; m may be 0). */
void bias_topk(const void *xw, int is_bf16, const float *bias, const float *scale, int64_t rows,
               int64_t n, int k, float *hidden, int64_t *out, const int64_t *cols, int64_t m,
               float *picked, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        RowScratch s = row_scratch(n);
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const uint16_t *xb = (const uint16_t *)xw + r * n;
            const float *xf = (const float *)xw + r * n;
            float *h = hidden ? hidden + r * n : NULL;
            int64_t b = 0;
#ifdef __AVX512F__
            for (; 16 * b + 16 <= n; b++) {
                int64_t c = 16 * b;
                __m512 v = is_bf16 ? bf16x16(xb + c) : _mm512_loadu_ps(xf + c);
                v = _mm512_add_ps(v, _mm512_loadu_ps(bias + c));
                if (scale) v = _mm512_mul_ps(v, _mm512_loadu_ps(scale + c));
                if (h) _mm512_storeu_ps(h + c, v);
                block_keys16(v, b, s);
            }
#endif
            for (; 16 * b < n; b++) {  /* whole blocks without AVX-512, then the tail */
                int64_t w = n - 16 * b < 16 ? n - 16 * b : 16;
                int32_t mx = INT32_MIN;
                for (int64_t q = 0; q < w; q++) {
                    int64_t c = 16 * b + q;
                    float v = (is_bf16 ? bf16_to_float(xb[c]) : xf[c]) + bias[c];
                    if (scale) v *= scale[c];
                    if (h) h[c] = v;
                    int32_t key = s.key[c] = fkey(v);
                    mx = key > mx ? key : mx;
                }
                if (w == 16) s.bk[b] = mx;
            }
            for (int64_t q = 0; q < m; q++)
                picked[r * m + q] = (is_bf16 ? bf16_to_float(xb[cols[q]]) : xf[cols[q]]) + bias[cols[q]];
            top_keys(n, k, out + r * k, s);
        }
        free_row_scratch(s);
    }
}
