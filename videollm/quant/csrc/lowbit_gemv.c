/* Batch-small GEMV over packed low-bit weights (videollm.quant.cpu_kernels builds and loads this).
 *
 * Weights: each row holds bytes of `bits`-wide codes (1, 2, 4 or 8 bits; per_byte = 8 / bits codes a byte,
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
DEF_DOT(dot8, 8)

static inline float dot_bits(int bits, const uint8_t *w, const float *xp, long stride, int gb, v16f *acc) {
    switch (bits) {
        case 1: return dot1(w, xp, stride, gb, acc);
        case 2: return dot2(w, xp, stride, gb, acc);
        case 8: return dot8(w, xp, stride, gb, acc);
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

/* One layer's constant arguments, filled once by cpu_kernels.LowBitGemv (a ctypes Structure of this layout),
 * so a call passes four values instead of twenty. */
typedef struct {
    const uint8_t *W;        /* (N, ldw) packed rows */
    const uint16_t *scale;   /* (N, G) bfloat16 bits */
    const uint16_t *zero;    /* (N, G) bfloat16 bits, or NULL */
    const int32_t *col;      /* plane set A: the column of x behind each row-planar slot (K: a zero pad) */
    const int32_t *col2;     /* plane set B (int3), or NULL */
    const int16_t *idx;      /* lane → group permutation per 64-byte chunk of A, or NULL: the float path */
    const int16_t *idx2;     /* the same for B */
    const float *bias;       /* (N,) float32, or NULL */
    long rb_pad, rb_pad2;    /* plane stride (bytes of a row, padded to 64) of A and B */
    int kind, ldw, hi_off, K, N, G, group, gb, gb2;
    float offset;
} lowbit_layer;

/* ---- int8 path (AVX-512 VNNI) --------------------------------------------------------------------- */
#if HAVE_VNNI
/* Rows the int8 path computes together: each activation load, lane-scale load and permutation index is
 * shared by R rows, and the R horizontal sums are done in one transposing tree. */
#define R_BLOCK 4
/* Software prefetch distance in bytes ahead of the chunk being read (0: none). The weights stream from DRAM
 * once per token; the hardware prefetcher alone left one thread at ~8 GB/s of its ~11 GB/s read bandwidth. */
#ifndef PF_AHEAD
#define PF_AHEAD 4096
#endif

/* 8-bit weights take their activations as two int8 planes: x ~ s*q1 + (s/254)*q2, q2 rounding what q1 left
 * (|x - s*q1| <= s/2), so the product keeps ~15 bits of each activation instead of 8. Combined in the loop as
 * 254*dot(w, q1) + dot(w, q2) (at most 4*255*127*255 per lane: no int32 overflow), at scale s/254. */
#define FINE 254

typedef struct {
    const int8_t *xq, *xq2;  /* int8 planes of A and B (int3), or A's fine plane (8-bit weights) */
    const float *xl, *xl2;   /* per chunk, each lane's activation scale (B's times 4: the high bit's weight) */
    const float *zx;         /* per group sx·(sum of its int8 activations), zero-padded to a multiple of 16 */
} act_t;

static inline __m512 bf16x16(const uint16_t *p, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

static inline __m128 hsum_to4(__m512 v) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* [sum a, sum b, sum c, sum d] */
static inline __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    return _mm_hadd_ps(_mm_hadd_ps(hsum_to4(a), hsum_to4(b)), _mm_hadd_ps(hsum_to4(c), hsum_to4(d)));
}

/* tot[r] += lane scales · dpbusd(codes of chunk c of row r, xq) for R rows; `lm` masks a final partial chunk.
 * Bytes past a row's codes meet zero activations, but are not read past the chunk's mask. */
static inline __attribute__((always_inline)) void chunk_rows(const int bits, const int R, const uint8_t *W, long ldw,
                                                             int c, __mmask64 lm, int masked, const int8_t *xq,
                                                             const int8_t *xfine, long rb_pad, const int16_t *idx,
                                                             const float *xl, const __m512i *slo,
                                                             const __m512i *shi, __m512 *tot) {
    const int P = 8 / bits;
    const __m512i mask = _mm512_set1_epi8((char)((1 << bits) - 1));
    __m512i xv[8], xf = _mm512_setzero_si512();
    for (int p = 0; p < P; p++) xv[p] = _mm512_loadu_si512(xq + p * rb_pad + c * 64);
    if (bits == 8) xf = _mm512_loadu_si512(xfine + c * 64);
    const __m512i il = _mm512_loadu_si512(idx + c * 32);
    const __m512 xs = _mm512_loadu_ps(xl + c * 16);
    for (int r = 0; r < R; r++) {
        const uint8_t *src = W + r * ldw + c * 64;
        if (PF_AHEAD) _mm_prefetch((const char *)src + PF_AHEAD, _MM_HINT_T0);
        const __m512i w = masked ? _mm512_maskz_loadu_epi8(lm, src) : _mm512_loadu_si512(src);
        __m512i acc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(w, mask), xv[0]);
        for (int p = 1; p < P; p++)
            acc = _mm512_dpbusd_epi32(acc, _mm512_and_si512(_mm512_srli_epi16(w, p * bits), mask), xv[p]);
        if (bits == 8) acc = _mm512_dpbusd_epi32(_mm512_mullo_epi32(acc, _mm512_set1_epi32(FINE)), w, xf);
        const __m512 ws = _mm512_castsi512_ps(_mm512_permutex2var_epi16(slo[r], il, shi[r]));
        tot[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(ws, xs), tot[r]);
    }
}

static inline __attribute__((always_inline)) void plane_rows(const int bits, const int R, const uint8_t *W, long ldw,
                                                             int nbytes, const int8_t *xq, const int8_t *xfine,
                                                             long rb_pad, const int16_t *idx, const float *xl,
                                                             const __m512i *slo, const __m512i *shi, __m512 *tot) {
    const int full = nbytes / 64, rest = nbytes % 64;
    for (int c = 0; c < full; c++) chunk_rows(bits, R, W, ldw, c, 0, 0, xq, xfine, rb_pad, idx, xl, slo, shi, tot);
    if (rest)
        chunk_rows(bits, R, W, ldw, full, ((__mmask64)1 << rest) - 1, 1, xq, xfine, rb_pad, idx, xl, slo, shi,
                   tot);
}

/* out[r] = y of rows n0..n0+R-1 for one activation row */
static inline __attribute__((always_inline)) void block_rows(const int bits, const int R, const lowbit_layer *L, int n0,
                                                             const act_t *a, float *out) {
    const int G = L->G;
    const __mmask32 lo_m = G >= 32 ? 0xFFFFFFFFu : ((1u << G) - 1u);
    const __mmask32 hi_m = G > 32 ? ((1u << (G - 32)) - 1u) : 0u;
    __m512 tot[R_BLOCK];
    __m512i slo[R_BLOCK], shi[R_BLOCK];
    for (int r = 0; r < R; r++) {
        const uint16_t *sc = L->scale + (long)(n0 + r) * G;
        tot[r] = _mm512_setzero_ps();
        slo[r] = _mm512_maskz_loadu_epi16(lo_m, sc);
        shi[r] = G > 32 ? _mm512_maskz_loadu_epi16(hi_m, sc + 32) : _mm512_setzero_si512();
    }
    const uint8_t *W = L->W + (long)n0 * L->ldw;
    plane_rows(bits, R, W, L->ldw, G * L->gb, a->xq, a->xq2, L->rb_pad, L->idx, a->xl, slo, shi, tot);
    if (L->kind == 3)
        plane_rows(1, R, W + L->hi_off, L->ldw, G * L->gb2, a->xq2, NULL, L->rb_pad2, L->idx2, a->xl2, slo, shi,
                   tot);
    /* offset and zero point: sum_g sx_g·sq_g·(zero_g - offset·scale_g), 16 groups a vector */
    const __m512 off = _mm512_set1_ps(-L->offset);
    for (int r = 0; r < R; r++) {
        const long base = (long)(n0 + r) * G;
        for (int g = 0; g < G; g += 16) {
            const __mmask16 gm = G - g >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (G - g)) - 1u);
            __m512 coef = _mm512_mul_ps(bf16x16(L->scale + base + g, gm), off);
            if (L->zero) coef = _mm512_add_ps(coef, bf16x16(L->zero + base + g, gm));
            tot[r] = _mm512_fmadd_ps(_mm512_loadu_ps(a->zx + g), coef, tot[r]);
        }
    }
    if (R == 4) {
        _mm_storeu_ps(out, hsum4(tot[0], tot[1], tot[2], tot[3]));
    } else {
        for (int r = 0; r < R; r++) out[r] = _mm512_reduce_add_ps(tot[r]);
    }
}

static void rows_range(const int bits, const lowbit_layer *L, int n_lo, int n_hi, const act_t *acts, int M, float *y) {
    const int N = L->N;
    float out[R_BLOCK];
    int n = n_lo;
    for (; n + R_BLOCK <= n_hi; n += R_BLOCK)
        for (int m = 0; m < M; m++) {
            switch (bits) {
                case 1: block_rows(1, R_BLOCK, L, n, acts + m, out); break;
                case 2: block_rows(2, R_BLOCK, L, n, acts + m, out); break;
                case 8: block_rows(8, R_BLOCK, L, n, acts + m, out); break;
                default: block_rows(4, R_BLOCK, L, n, acts + m, out); break;
            }
            for (int r = 0; r < R_BLOCK; r++) y[(long)m * N + n + r] = out[r] + (L->bias ? L->bias[n + r] : 0.f);
        }
    for (; n < n_hi; n++)
        for (int m = 0; m < M; m++) {
            switch (bits) {
                case 1: block_rows(1, 1, L, n, acts + m, out); break;
                case 2: block_rows(2, 1, L, n, acts + m, out); break;
                case 8: block_rows(8, 1, L, n, acts + m, out); break;
                default: block_rows(4, 1, L, n, acts + m, out); break;
            }
            y[(long)m * N + n] = out[0] + (L->bias ? L->bias[n] : 0.f);
        }
}

/* x (K floats) → int8 per group (scale max|x|/127, as before), gathered into the row-planar planes */
static void prepare_act(const lowbit_layer *L, const float *x, int nch, int nch2, int8_t *qx, int8_t *qx2,
                        int8_t *xq, int8_t *xq2, float *sx, float *zx, float *xl, float *xl2) {
    const int K = L->K, G = L->G, P = 8 / (L->kind == 3 ? 2 : L->kind), two = L->kind == 8;
    const int Gp = (G + 15) / 16 * 16;
    for (int g = 0; g < G; g++) {
        const int k0 = g * L->group, k1 = k0 + L->group < K ? k0 + L->group : K;
        float amax = 0.f;
        for (int k = k0; k < k1; k++) amax = fmaxf(amax, fabsf(x[k]));
        const float s = amax / 127.f, s2 = s / (float)FINE;
        int32_t tot = 0;
        for (int k = k0; k < k1; k++) {
            const int32_t q = s > 0.f ? (int32_t)nearbyintf(x[k] / s) : 0;
            qx[k] = (int8_t)q;
            if (two) {
                int32_t q2 = s > 0.f ? (int32_t)nearbyintf((x[k] - (float)q * s) / s2) : 0;
                q2 = q2 > 127 ? 127 : q2 < -127 ? -127 : q2;
                qx2[k] = (int8_t)q2;
                tot += FINE * q + q2;
            } else {
                tot += q;
            }
        }
        sx[g] = two ? s2 : s;
        zx[g] = sx[g] * (float)tot;
    }
    for (int g = G; g < Gp; g++) zx[g] = 0.f;
    qx[K] = 0;
    for (long i = 0; i < P * L->rb_pad; i++) xq[i] = qx[L->col[i]];
    if (two) {
        qx2[K] = 0;
        for (long i = 0; i < L->rb_pad; i++) xq2[i] = qx2[L->col[i]];
    }
    for (int c = 0; c < nch; c++)
        for (int i = 0; i < 16; i++) {
            const int g = L->idx[c * 32 + 2 * i + 1];
            xl[c * 16 + i] = g < 63 ? sx[g] : 0.f;
        }
    if (L->kind == 3) {
        for (long i = 0; i < 8 * L->rb_pad2; i++) xq2[i] = qx[L->col2[i]];
        for (int c = 0; c < nch2; c++)
            for (int i = 0; i < 16; i++) {
                const int g = L->idx2[c * 32 + 2 * i + 1];
                xl2[c * 16 + i] = g < 63 ? 4.f * sx[g] : 0.f;
            }
    }
}

static void gemv_int8(const lowbit_layer *L, const float *x, float *y, int M, int nthreads) {
    const int bits = L->kind == 3 ? 2 : L->kind, P = 8 / bits;
    const int G = L->G, Gp = (G + 15) / 16 * 16;
    const int nch = (G * L->gb + 63) / 64, nch2 = L->kind == 3 ? (G * L->gb2 + 63) / 64 : 0;
    const long sa = P * L->rb_pad, sb = L->kind == 8 ? L->rb_pad : 8 * L->rb_pad2;
    /* one scratch block per call: int8 planes, per-group and per-lane scales */
    const size_t per_m = (size_t)(sa + sb + 64) + sizeof(float) * (size_t)(2 * Gp + 16 * (nch + nch2));
    /* start the weight stream while the activations are prepared (the loop prefetches PF_AHEAD ahead) */
    const long wbytes = (long)L->N * L->ldw;
    for (long o = 0; o < PF_AHEAD && o < wbytes; o += 64) _mm_prefetch((const char *)L->W + o, _MM_HINT_T0);
    const size_t qbytes = ((size_t)L->K + 1 + 63) / 64 * 64;
    char *buf = malloc((size_t)M * per_m + 2 * qbytes);
    if (!buf) return;
    int8_t *qx = (int8_t *)buf, *qx2 = (int8_t *)(buf + qbytes);
    char *base = buf + 2 * qbytes;
    act_t acts[64];
    for (int m = 0; m < M; m++) {
        char *b = base + (size_t)m * per_m;
        float *sx = (float *)b, *zx = sx + Gp, *xl = zx + Gp, *xl2 = xl + 16 * nch;
        int8_t *xq = (int8_t *)(xl2 + 16 * nch2), *xq2 = xq + sa;
        prepare_act(L, x + (long)m * L->K, nch, nch2, qx, qx2, xq, xq2, sx, zx, xl, xl2);
        acts[m] = (act_t){xq, xq2, xl, xl2, zx};
    }
    const int N = L->N;
    if (nthreads > 1) {
        const int blocks = (N + R_BLOCK - 1) / R_BLOCK;
#pragma omp parallel for schedule(static) num_threads(nthreads)
        for (int t = 0; t < nthreads; t++) {
            const int lo = (int)((long)blocks * t / nthreads) * R_BLOCK, hi0 = (int)((long)blocks * (t + 1) / nthreads) * R_BLOCK;
            rows_range(bits, L, lo, hi0 < N ? hi0 : N, acts, M, y);
        }
    } else {
        rows_range(bits, L, 0, N, acts, M, y);
    }
    free(buf);
}
#endif

/* y (M, N) float32 = x (M, K) float32 · W^T. The int8 path needs the lane map, G <= 63 and M <= 64. */
void lowbit_gemv(const lowbit_layer *L, const float *x, float *y, int M, int nthreads) {
#if HAVE_VNNI
    if (L->idx && L->G <= 63 && M <= 64) {
        gemv_int8(L, x, y, M, nthreads);
        return;
    }
#endif
    const int kind = L->kind, bits = kind == 3 ? 2 : kind, P = 8 / bits, K = L->K, G = L->G, gb = L->gb;
    const long rb_pad = L->rb_pad, rb_pad2 = L->rb_pad2, xs_a = P * rb_pad, xs_b = 8 * rb_pad2;
    /* gather the activations into the row-planar layout (col[i] == K: a zero pad) */
    float *xp = malloc(sizeof(float) * (size_t)M * xs_a);
    float *xp2 = kind == 3 ? malloc(sizeof(float) * (size_t)M * xs_b) : NULL;
    float *xsum = malloc(sizeof(float) * (size_t)M * G);
    for (int m = 0; m < M; m++) {
        for (long i = 0; i < xs_a; i++) xp[m * xs_a + i] = L->col[i] < K ? x[(long)m * K + L->col[i]] : 0.f;
        if (xp2)
            for (long i = 0; i < xs_b; i++) xp2[m * xs_b + i] = L->col2[i] < K ? x[(long)m * K + L->col2[i]] : 0.f;
        for (int g = 0; g < G; g++) {
            float s = 0.f;
            for (int p = 0; p < P; p++)
                for (int j = 0; j < gb; j++) s += xp[m * xs_a + p * rb_pad + (long)g * gb + j];
            xsum[m * G + g] = s;
        }
    }
    const int N = L->N;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int n = 0; n < N; n++) {
        const uint8_t *row = L->W + (long)n * L->ldw;
        for (int m = 0; m < M; m++)
            y[(long)m * N + n] = row_float(bits, row, xp + m * xs_a, rb_pad, gb, kind == 3 ? row + L->hi_off : NULL,
                                           kind == 3 ? xp2 + m * xs_b : NULL, rb_pad2, L->gb2, xsum + m * G,
                                           L->scale + (long)n * G, L->zero ? L->zero + (long)n * G : NULL, G,
                                           L->offset) + (L->bias ? L->bias[n] : 0.f);
    }
    free(xsum);
    free(xp);
    free(xp2);
}

/* Several layers that read the same activations (q/k/v, gate/up) in one call: one ctypes round trip instead
 * of one per layer. y holds the layers' outputs side by side for a single row: (1, N_0 + N_1 + ...). */
void lowbit_gemv_many(const lowbit_layer *const *layers, int n, const float *x, float *y, int nthreads) {
    long off = 0;
    for (int i = 0; i < n; i++) {
        lowbit_gemv(layers[i], x, y + off, 1, nthreads);
        off += layers[i]->N;
    }
}
