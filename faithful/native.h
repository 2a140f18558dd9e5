/* Shared by faithful's CPU kernels (native_topk.c, native_grads.c; faithful/native.py compiles
 * both into one library). Every kernel is in fp32 with OpenMP, and each result is the same
 * whatever the thread count: rows and latents are split between threads, and every sum runs in
 * a fixed order. AVX-512 paths are taken where the compiler targets it (-march=native); the
 * portable loops compute the same values in the same order, with multiply-adds fused as gcc
 * fuses them by default (tests/unit/test_native.py compares the two builds bit for bit).
 */
#ifndef FAITHFUL_NATIVE_H
#define FAITHFUL_NATIVE_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

static inline float bf16_to_float(uint16_t v) {
    union { uint32_t u; float f; } c = {.u = (uint32_t)v << 16};
    return c.f;
}

#ifdef __AVX512F__
static inline __m512 bf16x16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
#endif
#endif
