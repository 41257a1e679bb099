/* Batch-small GEMV over packed low-bit weights (videollm.quant.cpu_kernels builds and loads this).
 *
 * Weights: each row holds bytes of `bits`-wide codes (1, 2 or 4 bits; per_byte = 8 / bits codes a byte,
 * column per_byte*j + p in bits p*bits of byte j), groups of `group` columns contiguous (gb bytes each),
 * one bfloat16 scale (and optionally zero point) per row and group. int3 is two such plane sets in one row:
 * a 2-bit plane (low bits) and, at byte hi_off, a 1-bit plane (high bit), code = lo + 4 * hi.
 *
 *   y[m, n] = sum_g scale[n, g] * (sum_{k in g} x[m, k] * code[n, k] - offset * sum_{k in g} x[m, k])
 *             (+ zero[n, g] * sum_{k in g} x[m, k])
 *
 * Activations are first gathered "row-planar": xp[m][p][j] = x[m][col[p * rb_pad + j]] (zero past K, rows
 * padded to a multiple of 64 bytes), so code p of weight byte j meets activation xp[p][j] at the same offset.
 *
 * Two paths:
 *  - float (any CPU): decode with shifts, convert, FMA; GCC/clang vector extensions, 16 lanes.
 *  - int8 (AVX-512 VNNI): activations are rounded to int8 per group (scale max|x|/127, as llama.cpp's Q8
 *    activations), 64 weight bytes are decoded with one shift + and per code plane and multiplied with
 *    `vpdpbusd` (64 byte products per instruction); each 32-bit lane covers 4 bytes of one group, and the
 *    lane's float scale is produced by one `vpermt2w` from the row's bfloat16 scales. About 4x fewer
 *    instructions per weight than the float path, and the reason 2-bit beats int4 here.
 * The result differs from the reference by float summation order (float path) or, in the int8 path, is
 * exactly the reference applied to the int8-rounded activations (again up to summation order).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define HAVE_VNNI 1
#else
#define HAVE_VNNI 0
#endif

int lowbit_has_int8_path(void) { return HAVE_VNNI; }

typedef float v16f __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint8_t v16b __attribute__((vector_size(16)));

static inline float bf16(uint16_t h) {
    union { uint32_t u; float f; } v;
    v.u = ((uint32_t)h) << 16;
    return v.f;
}

/* ---- float path ----------------------------------------------------------------------------------- */

static inline v16u load_bytes(const uint8_t *p) {
    v16b b;
    memcpy(&b, p, 16);
    return __builtin_convertvector(b, v16u);
}

static inline v16f load_f(const float *p) {
    v16f v;
    memcpy(&v, p, 64);
    return v;
}

static inline float hsum(v16f v) {
    float s = 0.f;
    for (int i = 0; i < 16; i++) s += v[i];
    return s;
}

/* acc += sum over gb bytes of xp[p * stride + j] * code_p(w[j]); returns the scalar tail's share */
#define DEF_DOT(NAME, BITS)                                                                                     \
    static inline float NAME(const uint8_t *restrict w, const float *restrict xp, long stride, int gb, v16f *acc) { \
        int j = 0;                                                                                              \
        v16f a = *acc;                                                                                          \
        for (; j + 16 <= gb; j += 16) {                                                                         \
            v16u b = load_bytes(w + j);                                                                         \
            for (int p = 0; p < 8 / BITS; p++)                                                                  \
                a += load_f(xp + p * stride + j) *                                                              \
                     __builtin_convertvector((b >> (p * BITS)) & ((1u << BITS) - 1u), v16f);                   \
        }                                                                                                       \
        *acc = a;                                                                                               \
        float t = 0.f;                                                                                          \
        for (; j < gb; j++) {                                                                                   \
            uint32_t b = w[j];                                                                                  \
            for (int p = 0; p < 8 / BITS; p++) t += xp[p * stride + j] * (float)((b >> (p * BITS)) & ((1u << BITS) - 1u)); \
        }                                                                                                       \
        return t;                                                                                               \
    }

DEF_DOT(dot1, 1)
DEF_DOT(dot2, 2)
DEF_DOT(dot4, 4)

static inline float dot_bits(int bits, const uint8_t *w, const float *xp, long stride, int gb, v16f *acc) {
    switch (bits) {
        case 1: return dot1(w, xp, stride, gb, acc);
        case 2: return dot2(w, xp, stride, gb, acc);
        default: return dot4(w, xp, stride, gb, acc);
    }
}

/* One output for one activation row: plane set A (bits, gb bytes a group, planar stride sa) plus, for
 * int3, plane set B (1 bit, gb2, stride sb) weighted by 4. */
static float row_float(int bits, const uint8_t *row, const float *xa, long sa, int gb, const uint8_t *rowb,
                       const float *xb, long sb, int gb2, const float *xs, const uint16_t *sc, const uint16_t *zr,
                       int G, float offset) {
    v16f tot = {0};
    float st = 0.f;
    for (int g = 0; g < G; g++) {
        v16f acc = {0};
        const float s = bf16(sc[g]);
        float t = dot_bits(bits, row + (long)g * gb, xa + (long)g * gb, sa, gb, &acc);
        if (rowb) {
            v16f hi = {0};
            t += 4.f * dot1(rowb + (long)g * gb2, xb + (long)g * gb2, sb, gb2, &hi);
            acc += 4.f * hi;
        }
        tot += s * acc;
        st += s * (t - offset * xs[g]);
        if (zr) st += bf16(zr[g]) * xs[g];
    }
    return hsum(tot) + st;
}

/* ---- int8 path (AVX-512 VNNI) --------------------------------------------------------------------- */
#if HAVE_VNNI
/* x planar floats (P planes of stride rb_pad) → int8 planes; per-group scale sx and sum of int8 values */
static void quantize_planes(const float *xp, int P, long rb_pad, int G, int gb, int8_t *xq, float *sx, int32_t *sq) {
    for (int g = 0; g < G; g++) {
        float amax = 0.f;
        for (int p = 0; p < P; p++)
            for (int j = 0; j < gb; j++) amax = fmaxf(amax, fabsf(xp[p * rb_pad + (long)g * gb + j]));
        const float s = amax / 127.f;
        sx[g] = s;
        int32_t tot = 0;
        for (int p = 0; p < P; p++)
            for (int j = 0; j < gb; j++) {
                const long i = p * rb_pad + (long)g * gb + j;
                const int32_t q = s > 0.f ? (int32_t)nearbyintf(xp[i] / s) : 0;
                xq[i] = (int8_t)q;
                tot += q;
            }
        sq[g] = tot;
    }
}

/* sum over the row's bytes of scale(lane) * dpbusd(codes, xq): the float vector, not yet reduced */
static inline __m512 plane_set_vnni(int bits, int P, const uint8_t *row, int nbytes, const int8_t *xq, long rb_pad,
                                    const int16_t *idx, const float *xs_lane, const float *off_lane, __m512i s_lo,
                                    __m512i s_hi) {
    const __m512i mask = _mm512_set1_epi8((char)((1 << bits) - 1));
    __m512 tot = _mm512_setzero_ps();
    for (int c = 0; c * 64 < nbytes; c++) {
        const int left = nbytes - c * 64;
        const __m512i w = left >= 64 ? _mm512_loadu_si512(row + c * 64)
                                     : _mm512_maskz_loadu_epi8(((__mmask64)1 << left) - 1, row + c * 64);
        __m512i acc = _mm512_setzero_si512();
        for (int p = 0; p < P; p++) {
            const __m512i codes = _mm512_and_si512(_mm512_srli_epi16(w, p * bits), mask);
            acc = _mm512_dpbusd_epi32(acc, codes, _mm512_loadu_si512(xq + p * rb_pad + c * 64));
        }
        const __m512 ws = _mm512_castsi512_ps(_mm512_permutex2var_epi16(s_lo, _mm512_loadu_si512(idx + c * 32), s_hi));
        __m512 d = _mm512_cvtepi32_ps(acc);
        if (off_lane) d = _mm512_sub_ps(d, _mm512_loadu_ps(off_lane + c * 16));  /* offset · sum of the lane's xq */
        tot = _mm512_fmadd_ps(d, _mm512_mul_ps(ws, _mm512_loadu_ps(xs_lane + c * 16)), tot);
    }
    return tot;
}

static void lane_scales(const float *sx, const int16_t *idx, int nchunks, float *xs_lane) {
    for (int c = 0; c < nchunks; c++)
        for (int i = 0; i < 16; i++) {
            const int g = idx[c * 32 + 2 * i + 1];
            xs_lane[c * 16 + i] = g < 63 ? sx[g] : 0.f;
        }
}

/* offset · (sum of the int8 activations each lane multiplies), so the offset costs one vector sub a chunk */
static void lane_offsets(const int8_t *xq, int P, long rb_pad, int nchunks, float offset, float *off_lane) {
    for (int c = 0; c < nchunks; c++)
        for (int i = 0; i < 16; i++) {
            int32_t s = 0;
            for (int p = 0; p < P; p++)
                for (int b = 0; b < 4; b++) s += xq[p * rb_pad + c * 64 + 4 * i + b];
            off_lane[c * 16 + i] = offset * (float)s;
        }
}
#endif

/* kind: bits of plane set A (1, 2, 4) or 3 for int3 (A = 2-bit low plane, B = 1-bit high plane at hi_off).
 * xp/xp2: row-planar float activations, rows of P*rb_pad / 8*rb_pad2 floats. idx/idx2: per 64-byte chunk,
 * 32 int16 permutation indices (lane i: element 2i → 63, a zero; 2i+1 → the lane's group), or NULL to force
 * the float path. G must be <= 63 for the int8 path. y: (M, N) float32. */
void lowbit_gemv(int kind, const uint8_t *W, int ldw, int hi_off, const uint16_t *scale, const uint16_t *zero,
                 const float *x, int K, const int32_t *col, const int32_t *col2, long rb_pad, long rb_pad2,
                 const int16_t *idx, const int16_t *idx2, float *y, int M, int N, int G, int gb, int gb2, float offset,
                 int nthreads) {
    const int bits = kind == 3 ? 2 : kind;
    const int P = 8 / bits;
    const long xs_a = P * rb_pad, xs_b = 8 * rb_pad2;
    /* gather the activations into the row-planar layout (col[i] == K: a zero pad) */
    float *xp = malloc(sizeof(float) * (size_t)M * xs_a);
    float *xp2 = kind == 3 ? malloc(sizeof(float) * (size_t)M * xs_b) : NULL;
    for (int m = 0; m < M; m++) {
        for (long i = 0; i < xs_a; i++) xp[m * xs_a + i] = col[i] < K ? x[(long)m * K + col[i]] : 0.f;
        if (xp2)
            for (long i = 0; i < xs_b; i++) xp2[m * xs_b + i] = col2[i] < K ? x[(long)m * K + col2[i]] : 0.f;
    }
    float *xsum = malloc(sizeof(float) * (size_t)M * G);
    for (int m = 0; m < M; m++)
        for (int g = 0; g < G; g++) {
            float s = 0.f;
            for (int p = 0; p < P; p++)
                for (int j = 0; j < gb; j++) s += xp[m * xs_a + p * rb_pad + (long)g * gb + j];
            xsum[m * G + g] = s;
        }
#if HAVE_VNNI
    if (idx && G <= 63) {
        const int nbytes = G * gb, nbytes2 = G * gb2;
        const int nch = (nbytes + 63) / 64, nch2 = (nbytes2 + 63) / 64;
        int8_t *xq = malloc((size_t)M * xs_a + 64);
        int8_t *xq2 = kind == 3 ? malloc((size_t)M * xs_b + 64) : NULL;
        float *sx = malloc(sizeof(float) * (size_t)M * G * 2);
        int32_t *sq = malloc(sizeof(int32_t) * (size_t)M * G * 2);
        float *xl = malloc(sizeof(float) * (size_t)M * (nch + nch2 + 1) * 16);
        float *ol = malloc(sizeof(float) * (size_t)M * (nch + nch2 + 1) * 16);
        for (int m = 0; m < M; m++) {
            quantize_planes(xp + m * xs_a, P, rb_pad, G, gb, xq + m * xs_a, sx + m * G, sq + m * G);
            for (long i = (long)G * gb; i < rb_pad; i++)  /* zero the row padding of every plane */
                for (int p = 0; p < P; p++) xq[m * xs_a + p * rb_pad + i] = 0;
            lane_scales(sx + m * G, idx, nch, xl + (long)m * (nch + nch2) * 16);
            lane_offsets(xq + m * xs_a, P, rb_pad, nch, offset, ol + (long)m * (nch + nch2) * 16);
            if (kind == 3) {
                /* one activation scale per group for both planes: quantize the high plane with the low one's */
                const float *xb = xp2 + m * xs_b;
                int8_t *qb = xq2 + m * xs_b;
                for (int g = 0; g < G; g++) {
                    const float s = sx[m * G + g];
                    for (int p = 0; p < 8; p++)
                        for (int j = 0; j < gb2; j++) {
                            const long i = p * rb_pad2 + (long)g * gb2 + j;
                            qb[i] = s > 0.f ? (int8_t)nearbyintf(xb[i] / s) : 0;
                        }
                }
                for (long i = (long)G * gb2; i < rb_pad2; i++)
                    for (int p = 0; p < 8; p++) qb[p * rb_pad2 + i] = 0;
                lane_scales(sx + m * G, idx2, nch2, xl + (long)m * (nch + nch2) * 16 + nch * 16);
            }
        }
        const __mmask32 lo_mask = G >= 32 ? 0xFFFFFFFFu : ((1u << G) - 1u);
        const __mmask32 hi_mask = G > 32 ? ((1u << (G - 32)) - 1u) : 0u;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
        for (int n = 0; n < N; n++) {
            const uint8_t *row = W + (long)n * ldw;
            const uint16_t *sc = scale + (long)n * G;
            const __m512i s_lo = _mm512_maskz_loadu_epi16(lo_mask, sc);
            const __m512i s_hi = _mm512_maskz_loadu_epi16(hi_mask, sc + 32);
            for (int m = 0; m < M; m++) {
                const float *xl_m = xl + (long)m * (nch + nch2) * 16, *ol_m = ol + (long)m * (nch + nch2) * 16;
                __m512 tot = plane_set_vnni(bits, P, row, nbytes, xq + m * xs_a, rb_pad, idx, xl_m, ol_m, s_lo, s_hi);
                if (kind == 3)  /* the offset is already taken off with the low plane */
                    tot = _mm512_fmadd_ps(_mm512_set1_ps(4.f),
                                          plane_set_vnni(1, 8, row + hi_off, nbytes2, xq2 + m * xs_b, rb_pad2, idx2,
                                                         xl_m + nch * 16, NULL, s_lo, s_hi), tot);
                float st = 0.f;
                if (zero)
                    for (int g = 0; g < G; g++)
                        st += bf16(zero[(long)n * G + g]) * sx[m * G + g] * (float)sq[m * G + g];
                y[(long)m * N + n] = _mm512_reduce_add_ps(tot) + st;
            }
        }
        free(xq);
        free(xq2);
        free(sx);
        free(sq);
        free(xl);
        free(ol);
        free(xsum);
        free(xp);
        free(xp2);
        return;
    }
#endif
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int n = 0; n < N; n++) {
        const uint8_t *row = W + (long)n * ldw;
        for (int m = 0; m < M; m++)
            y[(long)m * N + n] = row_float(bits, row, xp + m * xs_a, rb_pad, gb, kind == 3 ? row + hi_off : NULL,
                                           kind == 3 ? xp2 + m * xs_b : NULL, rb_pad2, gb2, xsum + m * G,
                                           scale + (long)n * G, zero ? zero + (long)n * G : NULL, G, offset);
    }
    free(xsum);
    free(xp);
    free(xp2);
}
