/* Batch-small GEMV over packed low-bit weights (videollm.quant.cpu_kernels builds and loads this).
 *
 * Weights: each row holds bytes of `bits`-wide codes (1, 2, 4 or 8 bits; per_byte = 8 / bits codes a byte,
 * column per_byte*j + p in bits p*bits of byte j), groups of `group` columns contiguous (gb bytes each),
 * one bfloat16 scale (and optionally zero point) per row and group. int3 (kind 3) is converted at load
 * (packing.to_int3_kernel): position j (columns 8j..8j+7, as 1-bit codes) holds its 8 codes in three bytes
 * b0 = c0 | c1<<3 | (c6&3)<<6, b1 = c2 | c3<<3 | (c7&3)<<6, b2 = c4 | c5<<3 | (c6>>2)<<6 | (c7>>2)<<7, and
 * blocks of 64 positions store their b0s, then b1s, then b2s (the last block shorter): each code is one shift
 * and one mask away (c6, c7: two of each and an or), about int4's work per weight.
 *
 *   y[m, n] = sum_g scale[n, g] * (sum_{k in g} x[m, k] * code[n, k] - offset * sum_{k in g} x[m, k])
 *             (+ zero[n, g] * sum_{k in g} x[m, k])
 *
 * Activations are first gathered "row-planar": xp[m][p][j] = x[m][col[p * rb_pad + j]] (zero past K, rows
 * padded to a multiple of 64 bytes), so code p of weight byte j meets activation xp[p][j] at the same offset.
 *
 * Two paths:
 *  - float (any CPU): decode with shifts, convert, FMA; GCC/clang vector extensions, 16 lanes.
 *  - int8 (AVX-512 VNNI, AVX-VNNI, AVX2, NEON): activations are rounded to int8 per group (scale max|x|/127,
 *    as llama.cpp's Q8 activations), weight bytes are decoded with one shift + and per code plane and
 *    multiplied as u8 x s8 (vpdpbusd; AVX2's vpmaddubsw, whose int16 pair sums cannot saturate for codes
 *    < 16; NEON's sdot) into 32-bit lanes of 4 bytes of one group each; a lane's float scale comes from the
 *    row's bfloat16 scales by one permute (vpermt2w, vpermps, tbl). 8-bit codes are used as signed
 *    (code - 128) on AVX2 and NEON, where the u8 x s8 pair sum would saturate. About 4x fewer instructions
 *    per weight than the float path, and the reason 2-bit beats int4. On the 256-bit levels, where each
 *    32-byte vector of a row lies in one group, a group is summed as integers (AVX2: int16 over a few vectors,
 *    one vpmaddwd) and scaled once per row and group (group_rows) instead of per vector.
 * The result differs from the reference by float summation order (float path) or, in the int8 path, is
 * exactly the reference applied to the int8-rounded activations (again up to summation order).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The instruction set is chosen by the flags this file is compiled with (cpu_kernels builds one library per
 * level the CPU runs): AVX-512 VNNI, AVX-VNNI (256-bit vpdpbusd), AVX2 (vpmaddubsw + vpmaddwd, as llama.cpp's
 * x86 paths), ARM NEON (sdot where the dot-product extension is compiled in, else smull + pairwise adds), or
 * none: the portable float path alone. */
#if defined(LOWBIT_EMULATE_AVX512)
/* Tests only (tests/test_cpu_isa.py): the AVX-512 VNNI code on a CPU without it, every intrinsic from SIMDe's
 * portable implementations (Debian's libsimde-dev), so its logic is checked against the reference anywhere. */
#define SIMDE_ENABLE_NATIVE_ALIASES
#define SIMDE_NO_NATIVE
#include <simde/x86/avx512.h>
#include <stdint.h>
#define ISA_512 1
#define ISA_NAME "avx512vnni"
/* what SIMDe 0.7 (Debian 12) lacks, written out lane by lane as the instructions are specified; masked-off
 * lanes are zero and their memory is never read */
typedef uint16_t __mmask16;
typedef uint32_t __mmask32;
typedef uint64_t __mmask64;
static inline __m512i emu_maskz_loadu_epi8(__mmask64 k, const void *p) {
    int8_t b[64];
    for (int i = 0; i < 64; i++) b[i] = (k >> i) & 1 ? ((const int8_t *)p)[i] : 0;
    return _mm512_loadu_si512(b);
}
static inline __m512i emu_maskz_loadu_epi16(__mmask32 k, const void *p) {
    int16_t b[32];
    for (int i = 0; i < 32; i++) b[i] = (k >> i) & 1 ? ((const int16_t *)p)[i] : 0;
    return _mm512_loadu_si512(b);
}
static inline __m256i emu256_maskz_loadu_epi16(__mmask16 k, const void *p) {
    int16_t b[16];
    for (int i = 0; i < 16; i++) b[i] = (k >> i) & 1 ? ((const int16_t *)p)[i] : 0;
    return _mm256_loadu_si256((const void *)b);
}
static inline __m512 emu_cvtepi32_ps(__m512i a) {
    int32_t v[16];
    float f[16];
    _mm512_storeu_si512(v, a);
    for (int i = 0; i < 16; i++) f[i] = (float)v[i];
    return _mm512_loadu_ps(f);
}
static inline __m512i emu_cvtepu16_epi32(__m256i a) {
    uint16_t u[16];
    uint32_t v[16];
    _mm256_storeu_si256((void *)u, a);
    for (int i = 0; i < 16; i++) v[i] = u[i];
    return _mm512_loadu_si512(v);
}
static inline float emu_reduce_add_ps(__m512 a) {
    float f[16], t = 0.f;
    _mm512_storeu_ps(f, a);
    for (int i = 0; i < 16; i++) t += f[i];
    return t;
}
#define _mm512_maskz_loadu_epi8 emu_maskz_loadu_epi8
#define _mm512_maskz_loadu_epi16 emu_maskz_loadu_epi16
#define _mm256_maskz_loadu_epi16 emu256_maskz_loadu_epi16
#define _mm512_cvtepi32_ps emu_cvtepi32_ps
#define _mm512_cvtepu16_epi32 emu_cvtepu16_epi32
#define _mm512_reduce_add_ps emu_reduce_add_ps
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define ISA_512 1
#define ISA_NAME "avx512vnni"
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define ISA_256 1
#if defined(__AVXVNNI__) || defined(LOWBIT_EMULATE_AVXVNNI)
#define ISA_NAME "avxvnni"
#else
#define ISA_NAME "avx2"
#endif
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define ISA_NEON 1
#define ISA_NAME "neon"
#else
#define ISA_NAME "scalar"
#endif
#if defined(ISA_512) || defined(ISA_256) || defined(ISA_NEON)
#define HAVE_INT8 1
#else
#define HAVE_INT8 0
#endif

int lowbit_has_int8_path(void) { return HAVE_INT8; }

/* the level this build's int8 path uses ("scalar": float path only) */
const char *lowbit_isa(void) { return ISA_NAME; }

/* whether this build multiplies with the NEON dot-product instruction (sdot) */
int lowbit_has_sdot(void) {
#if defined(__ARM_FEATURE_DOTPROD)
    return 1;
#else
    return 0;
#endif
}

/* positions per block of the int3 layout (packing.INT3_BLOCK) */
#define INT3_BLOCK 64

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

/* int3 position j of a row (rb positions): its three bytes (see the header) */
static inline void int3_bytes(const uint8_t *row, int j, int rb, uint32_t *b0, uint32_t *b1, uint32_t *b2) {
    const int blk = j / INT3_BLOCK, nb = rb - blk * INT3_BLOCK < INT3_BLOCK ? rb - blk * INT3_BLOCK : INT3_BLOCK;
    const uint8_t *p = row + (long)3 * INT3_BLOCK * blk + j % INT3_BLOCK;
    *b0 = p[0];
    *b1 = p[nb];
    *b2 = p[2 * nb];
}

/* One output for one activation row of the int3 layout (8 planes of gb positions a group, stride sa) */
static float row_float3(const uint8_t *row, const float *xa, long sa, int gb, const float *xs, const uint16_t *sc,
                        const uint16_t *zr, int G, float offset) {
    const int rb = G * gb;
    float tot = 0.f;
    for (int g = 0; g < G; g++) {
        float t = 0.f;
        for (int j = g * gb; j < (g + 1) * gb; j++) {
            uint32_t b0, b1, b2;
            int3_bytes(row, j, rb, &b0, &b1, &b2);
            const uint32_t c[8] = {b0 & 7, (b0 >> 3) & 7, b1 & 7, (b1 >> 3) & 7, b2 & 7, (b2 >> 3) & 7,
                                   (b0 >> 6) | (((b2 >> 6) & 1) << 2), (b1 >> 6) | ((b2 >> 7) << 2)};
            for (int p = 0; p < 8; p++) t += xa[p * sa + j] * (float)c[p];
        }
        tot += bf16(sc[g]) * (t - offset * xs[g]);
        if (zr) tot += bf16(zr[g]) * xs[g];
    }
    return tot;
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
    const int32_t *col2;     /* unused (int3's former second plane set): NULL */
    const int16_t *idx;      /* lane → group permutation per 64-byte chunk of A, or NULL: the float path */
    const int16_t *idx2;     /* unused: NULL */
    const float *bias;       /* (N,) float32, or NULL */
    long rb_pad, rb_pad2;    /* plane stride (bytes or int3 positions of a row, padded to 64); rb_pad2 unused */
    int kind, ldw, hi_off, K, N, G, group, gb, gb2;
    float offset;
} lowbit_layer;

/* ---- int8 path: shared parts ----------------------------------------------------------------------- */
#if HAVE_INT8
/* Rows the int8 path computes together: each activation load, lane-scale load and permutation index is
 * shared by R rows. */
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
    const float *xl, *xl2;   /* per chunk, each lane's activation scale (512-bit, NEON); xl2 unused */
    const float *zx;         /* per group sx·(sum of its int8 activations), zero-padded to a multiple of 16 */
    const int32_t *map, *map2; /* 256-bit and NEON builds: per vector, its first group and lane offsets */
    const float *sx;         /* per group its activation scale (the lanes' scale), zero-padded to a multiple of 16 */
} act_t;
#endif

/* ---- int8 path (AVX-512 VNNI) --------------------------------------------------------------------- */
#if defined(ISA_512)
#define SIGNED8 0
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

/* int3 (see the header): chunk c is block c, its three byte planes n_c bytes apart */
static inline __attribute__((always_inline)) void chunk_rows3(const int R, const uint8_t *W, long ldw, int c, int nc,
                                                              const int8_t *xq, long rb_pad, const int16_t *idx,
                                                              const float *xl, const __m512i *slo,
                                                              const __m512i *shi, __m512 *tot) {
    const __mmask64 lm = nc >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << nc) - 1;
    const __m512i m7 = _mm512_set1_epi8(7), m3 = _mm512_set1_epi8(3), m4 = _mm512_set1_epi8(4);
    __m512i xv[8];
    for (int p = 0; p < 8; p++) xv[p] = _mm512_loadu_si512(xq + p * rb_pad + c * 64);
    const __m512i il = _mm512_loadu_si512(idx + c * 32);
    const __m512 xs = _mm512_loadu_ps(xl + c * 16);
    for (int r = 0; r < R; r++) {
        const uint8_t *src = W + r * ldw + (long)3 * INT3_BLOCK * c;
        if (PF_AHEAD) _mm_prefetch((const char *)src + PF_AHEAD, _MM_HINT_T0);
        const __m512i w0 = _mm512_maskz_loadu_epi8(lm, src), w1 = _mm512_maskz_loadu_epi8(lm, src + nc),
                      w2 = _mm512_maskz_loadu_epi8(lm, src + 2 * nc);
        __m512i acc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(w0, m7), xv[0]);
        acc = _mm512_dpbusd_epi32(acc, _mm512_and_si512(_mm512_srli_epi16(w0, 3), m7), xv[1]);
        acc = _mm512_dpbusd_epi32(acc, _mm512_and_si512(w1, m7), xv[2]);
        acc = _mm512_dpbusd_epi32(acc, _mm512_and_si512(_mm512_srli_epi16(w1, 3), m7), xv[3]);
        acc = _mm512_dpbusd_epi32(acc, _mm512_and_si512(w2, m7), xv[4]);
        acc = _mm512_dpbusd_epi32(acc, _mm512_and_si512(_mm512_srli_epi16(w2, 3), m7), xv[5]);
        const __m512i c6 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(w0, 6), m3),
                                           _mm512_and_si512(_mm512_srli_epi16(w2, 4), m4));
        const __m512i c7 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(w1, 6), m3),
                                           _mm512_and_si512(_mm512_srli_epi16(w2, 5), m4));
        acc = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc, c6, xv[6]), c7, xv[7]);
        const __m512 ws = _mm512_castsi512_ps(_mm512_permutex2var_epi16(slo[r], il, shi[r]));
        tot[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(ws, xs), tot[r]);
    }
}

static inline __attribute__((always_inline)) void plane_rows(const int bits, const int R, const uint8_t *W, long ldw,
                                                             int nbytes, const int8_t *xq, const int8_t *xfine,
                                                             long rb_pad, const int16_t *idx, const float *xl,
                                                             const __m512i *slo, const __m512i *shi, __m512 *tot) {
    if (bits == 3) {
        for (int c = 0; c * 64 < nbytes; c++)
            chunk_rows3(R, W, ldw, c, nbytes - c * 64 < 64 ? nbytes - c * 64 : 64, xq, rb_pad, idx, xl, slo, shi,
                        tot);
        return;
    }
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

static void build_maps(const lowbit_layer *L, int nch, int nch2, int32_t *map, int32_t *map2) {
    (void)L; (void)nch; (void)nch2; (void)map; (void)map2;
}
#define MAP_INTS 0

/* ---- int8 path (AVX-VNNI / AVX2: 256-bit) ----------------------------------------------------------- */
/* A row's last, partial vector is loaded whole: the bytes past its codes (the next plane or row) meet zero
 * activations (the planes are zero up to rb_pad). Only at the end of the weight tensor are they copied out. */
#elif defined(ISA_256)
#if defined(__AVXVNNI__) || defined(LOWBIT_EMULATE_AVXVNNI)
#define SIGNED8 0
#else
#define SIGNED8 1
#endif
#if defined(LOWBIT_EMULATE_AVXVNNI) && !defined(__AVXVNNI__)
/* Tests only (tests/test_cpu_isa.py): the AVX-VNNI path on an AVX2 CPU, vpdpbusd done exactly in AVX2 (u8 x s8
 * products in int16, then pairs and pairs of pairs summed in int32). */
static inline __m256i emulated_dpbusd(__m256i acc, __m256i a, __m256i b) {
    const __m256i z = _mm256_setzero_si256();
    const __m256i lo = _mm256_madd_epi16(_mm256_unpacklo_epi8(a, z), _mm256_srai_epi16(_mm256_unpacklo_epi8(z, b), 8));
    const __m256i hi = _mm256_madd_epi16(_mm256_unpackhi_epi8(a, z), _mm256_srai_epi16(_mm256_unpackhi_epi8(z, b), 8));
    return _mm256_add_epi32(acc, _mm256_hadd_epi32(lo, hi));
}
#define _mm256_dpbusd_avx_epi32 emulated_dpbusd
#endif
/* per 32-byte vector: [first group, 8 lane offsets from it] */
#define MAP_INTS 18

static inline __m256 bf16x8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

/* int32 lanes: sum over each lane's 4 bytes of code x activation, for one row's 32 bytes */
static inline __attribute__((always_inline)) __m256i dot_vec(const int bits, const __m256i w, const __m256i *xv,
                                                             const __m256i xf) {
    const int P = 8 / bits;
    const __m256i mask = _mm256_set1_epi8((char)((1 << bits) - 1));
#if SIGNED8
    const __m256i ones = _mm256_set1_epi16(1);
    if (bits == 8) {  /* signed codes: |w'| * sign(x, w') = w' * x, |w'| <= 128 keeps the pair sums in int16 */
        const __m256i ws = _mm256_xor_si256(w, _mm256_set1_epi8((char)0x80)), aw = _mm256_abs_epi8(ws);
        const __m256i a1 = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv[0], ws)), ones);
        const __m256i a2 = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xf, ws)), ones);
        return _mm256_add_epi32(_mm256_mullo_epi32(a1, _mm256_set1_epi32(FINE)), a2);
    }
    /* codes < 16: every int16 pair sum, added over the planes, stays below 8 * 2 * 15 * 127 */
    __m256i s16 = _mm256_maddubs_epi16(_mm256_and_si256(w, mask), xv[0]);
    for (int p = 1; p < P; p++)
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w, p * bits), mask),
                                                         xv[p]));
    return _mm256_madd_epi16(s16, ones);
#else
    __m256i acc = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), _mm256_and_si256(w, mask), xv[0]);
    for (int p = 1; p < P; p++)
        acc = _mm256_dpbusd_avx_epi32(acc, _mm256_and_si256(_mm256_srli_epi16(w, p * bits), mask), xv[p]);
    if (bits == 8) acc = _mm256_dpbusd_avx_epi32(_mm256_mullo_epi32(acc, _mm256_set1_epi32(FINE)), w, xf);
    return acc;
#endif
}

/* 32 bytes at p, or those before wend (the tensor's end) and zeros */
static inline __m256i load_guarded(const uint8_t *p, const uint8_t *wend) {
    if (p + 32 <= wend) return _mm256_loadu_si256((const __m256i *)p);
    uint8_t buf[32] = {0};
    memcpy(buf, p, (size_t)(wend - p));
    return _mm256_loadu_si256((const __m256i *)buf);
}

/* int3 (see the header): int32 lanes of one row's 32 positions, from its three byte planes */
static inline __attribute__((always_inline)) __m256i dot_vec3(const __m256i w0, const __m256i w1, const __m256i w2,
                                                              const __m256i *xv) {
    const __m256i m7 = _mm256_set1_epi8(7), m3 = _mm256_set1_epi8(3), m4 = _mm256_set1_epi8(4);
    const __m256i c[8] = {
        _mm256_and_si256(w0, m7), _mm256_and_si256(_mm256_srli_epi16(w0, 3), m7),
        _mm256_and_si256(w1, m7), _mm256_and_si256(_mm256_srli_epi16(w1, 3), m7),
        _mm256_and_si256(w2, m7), _mm256_and_si256(_mm256_srli_epi16(w2, 3), m7),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(w0, 6), m3), _mm256_and_si256(_mm256_srli_epi16(w2, 4), m4)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(w1, 6), m3), _mm256_and_si256(_mm256_srli_epi16(w2, 5), m4))};
#if SIGNED8
    /* codes < 8: every int16 pair sum, added over the 8 planes, stays below 8 * 2 * 7 * 127 */
    __m256i s16 = _mm256_maddubs_epi16(c[0], xv[0]);
    for (int p = 1; p < 8; p++) s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(c[p], xv[p]));
    return _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
#else
    __m256i acc = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), c[0], xv[0]);
    for (int p = 1; p < 8; p++) acc = _mm256_dpbusd_avx_epi32(acc, c[p], xv[p]);
    return acc;
#endif
}

/* vpmaddubsw pair sums (int16) one group may add before they widen: a pair is at most 2 * (2^bits - 1) * 127,
 * a 32-byte vector adds 8 / bits of them, and the sum stays below 32767 */
#define CAP16(bits) ((bits) == 4 ? 4 : (bits) == 2 ? 10 : 16)

/* int32 lanes: one row's products over one group's nv 32-byte vectors at src (bits 1, 2, 4 or 8), activations
 * at xq (plane p at p * rb_pad) and, for 8-bit weights, the fine plane at xfine */
static inline __attribute__((always_inline)) __m256i dot_group(const int bits, const uint8_t *src, int nv,
                                                               const int8_t *xq, const int8_t *xfine, long rb_pad,
                                                               long pf) {
    const int P = 8 / bits;
    __m256i acc = _mm256_setzero_si256();
#if SIGNED8
    if (bits != 8) {  /* int16 sums across planes and vectors, widened once per CAP16 vectors */
        const __m256i mask = _mm256_set1_epi8((char)((1 << bits) - 1)), ones = _mm256_set1_epi16(1);
        for (int v0 = 0; v0 < nv; v0 += CAP16(bits)) {
            const int v1 = v0 + CAP16(bits) < nv ? v0 + CAP16(bits) : nv;
            __m256i s16 = _mm256_setzero_si256();
            for (int v = v0; v < v1; v++) {
                if (PF_AHEAD && !(v & 1)) __builtin_prefetch(src + 32 * v + pf);
                const __m256i w = _mm256_loadu_si256((const __m256i *)(src + 32 * v));
                for (int p = 0; p < P; p++) {
                    const __m256i c = _mm256_and_si256(p ? _mm256_srli_epi16(w, p * bits) : w, mask);
                    const __m256i x = _mm256_loadu_si256((const __m256i *)(xq + p * rb_pad + 32 * v));
                    s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(c, x));
                }
            }
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s16, ones));
        }
        return acc;
    }
#endif
    for (int v = 0; v < nv; v++) {
        if (PF_AHEAD && !(v & 1)) __builtin_prefetch(src + 32 * v + pf);
        __m256i xv[8];
        for (int p = 0; p < P; p++) xv[p] = _mm256_loadu_si256((const __m256i *)(xq + p * rb_pad + 32 * v));
        const __m256i xf = bits == 8 ? _mm256_loadu_si256((const __m256i *)(xfine + 32 * v)) : _mm256_setzero_si256();
        acc = _mm256_add_epi32(acc, dot_vec(bits, _mm256_loadu_si256((const __m256i *)(src + 32 * v)), xv, xf));
    }
    return acc;
}

/* dot_group with a constant NV whose activation vectors are already in registers (xv[v * P + p]; for 8-bit
 * weights xv[2v] and the fine plane xv[2v + 1]): one load of them per group serves all R rows */
static inline __attribute__((always_inline)) __m256i dot_group_x(const int bits, const uint8_t *src, const int NV,
                                                                 const __m256i *xv, long pf) {
    const int P = 8 / bits;
    __m256i acc = _mm256_setzero_si256();
#if SIGNED8
    if (bits != 8) {  /* NV * 32 bytes stay below CAP16 vectors wherever this is called */
        const __m256i mask = _mm256_set1_epi8((char)((1 << bits) - 1));
        __m256i s16 = _mm256_setzero_si256();
        for (int v = 0; v < NV; v++) {
            if (PF_AHEAD && !(v & 1)) __builtin_prefetch(src + 32 * v + pf);
            const __m256i w = _mm256_loadu_si256((const __m256i *)(src + 32 * v));
            for (int p = 0; p < P; p++)
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(
                                                _mm256_and_si256(p ? _mm256_srli_epi16(w, p * bits) : w, mask),
                                                xv[v * P + p]));
        }
        return _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
    }
#endif
    for (int v = 0; v < NV; v++) {
        if (PF_AHEAD && !(v & 1)) __builtin_prefetch(src + 32 * v + pf);
        const __m256i w = _mm256_loadu_si256((const __m256i *)(src + 32 * v));
        acc = _mm256_add_epi32(acc, bits == 8 ? dot_vec(8, w, xv + 2 * v, xv[2 * v + 1]) : dot_vec(bits, w, xv + v * P,
                                                                                               xv[0]));
    }
    return acc;
}

/* Whether every 32-byte vector of a row lies in one group (gb a multiple of 32: int4 from group 64, int2 and
 * ternary from 128, int8 from 32), so a group's products are summed as integers and scaled once per row and
 * group; 8-bit weights' int32 lanes (at most ~1.7e7 a vector) bound the group to 64 vectors. */
static inline int whole_vectors(int bits, int gb) { return bits != 3 && gb % 32 == 0 && (bits != 8 || gb <= 2048); }

/* tot[r] += one float lane-sum per group: sum_g scale[r, g] * sx[g] * (int32 lanes of the group) */
static inline __attribute__((always_inline)) void group_rows(const int bits, const int R, const int NV,
                                                             const uint8_t *W, long ldw, int G, int gb,
                                                             const act_t *a, long rb_pad, const uint16_t *S,
                                                             __m256 *tot) {
    const int nv = NV ? NV : gb / 32;  /* NV: the common sizes as constants, unrolled */
#ifdef PF_BLOCKS
    const long pf = PF_BLOCKS * R_BLOCK * ldw;
#else
    const long pf = PF_AHEAD;
#endif
    float ws[R_BLOCK][64] __attribute__((aligned(32)));  /* G <= 63: scales times activation scales */
    for (int r = 0; r < R; r++)
        for (int g = 0; g < G; g += 8)
            _mm256_store_ps(ws[r] + g, _mm256_mul_ps(bf16x8(S + (long)r * G + g), _mm256_loadu_ps(a->sx + g)));
    const int P = 8 / bits, XV = NV * (bits == 8 ? 2 : P);
    if (NV && XV <= 8 && (bits == 8 || NV <= CAP16(bits))) {  /* activations loaded once per group */
        for (int g = 0; g < G; g++) {
            const long off = (long)g * gb;
            __m256i xv[8];
            for (int v = 0; v < NV; v++) {
                if (bits == 8) {
                    xv[2 * v] = _mm256_loadu_si256((const __m256i *)(a->xq + off + 32 * v));
                    xv[2 * v + 1] = _mm256_loadu_si256((const __m256i *)(a->xq2 + off + 32 * v));
                } else {
                    for (int p = 0; p < P; p++)
                        xv[v * P + p] = _mm256_loadu_si256((const __m256i *)(a->xq + off + p * rb_pad + 32 * v));
                }
            }
            for (int r = 0; r < R; r++) {
                const __m256i acc = dot_group_x(bits, W + r * ldw + off, NV, xv, pf);
                tot[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_broadcast_ss(ws[r] + g), tot[r]);
            }
        }
        return;
    }
    for (int g = 0; g < G; g++) {
        const long off = (long)g * gb;
        for (int r = 0; r < R; r++) {
            const __m256i acc = dot_group(bits, W + r * ldw + off, nv, a->xq + off, a->xq2 + off, rb_pad, pf);
            tot[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_broadcast_ss(ws[r] + g), tot[r]);
        }
    }
}

/* Rows whose vectors hold several groups (int1 and int3 at group 128, int4 at 32): a vector's int32 lanes get
 * their scales by one permute of the row's scale x activation-scale products (row_lane_scales, once a row). */
static inline __attribute__((always_inline)) void row_lane_scales(const int R, const uint16_t *S, int G,
                                                                  const float *sx, float ws[][80]) {
    const int gend = (G + 7) / 8 * 8;  /* G <= 63; lanes past the last group read zeros */
    for (int r = 0; r < R; r++) {
        for (int g = 0; g < gend; g += 8)
            _mm256_store_ps(ws[r] + g, _mm256_mul_ps(bf16x8(S + (long)r * G + g), _mm256_loadu_ps(sx + g)));
        _mm256_store_ps(ws[r] + gend, _mm256_setzero_ps());
    }
}

static inline __attribute__((always_inline)) void plane_rows(const int bits, const int R, const uint8_t *W, long ldw,
                                                             int nbytes, const int8_t *xq, const int8_t *xfine,
                                                             long rb_pad, const int32_t *map, const float *sx,
                                                             const uint16_t *S, int G, const uint8_t *wend,
                                                             __m256 *tot) {
    const int P = 8 / bits, nv = (nbytes + 31) / 32;  /* bits 1, 2, 4, 8 (int3: plane_rows3) */
    float ws[R_BLOCK][80] __attribute__((aligned(32)));
    row_lane_scales(R, S, G, sx, ws);
    for (int v = 0; v < nv; v++) {
        __m256i xv[8], xf = _mm256_setzero_si256();
        for (int p = 0; p < P; p++) xv[p] = _mm256_loadu_si256((const __m256i *)(xq + p * rb_pad + v * 32));
        if (bits == 8) xf = _mm256_loadu_si256((const __m256i *)(xfine + v * 32));
        const int32_t *mv = map + v * 9;
        const __m256i perm = _mm256_loadu_si256((const __m256i *)(mv + 1));
        const int tail = nbytes - v * 32 < 32;
        for (int r = 0; r < R; r++) {
            const uint8_t *src = W + r * ldw + v * 32;
            if (PF_AHEAD) __builtin_prefetch(src + PF_AHEAD);
            __m256i w;
            if (tail && src + 32 > wend) {  /* the tensor's last bytes, not read past */
                uint8_t buf[32] = {0};
                memcpy(buf, src, (size_t)(nbytes - v * 32));
                w = _mm256_loadu_si256((const __m256i *)buf);
            } else {
                w = _mm256_loadu_si256((const __m256i *)src);
            }
            const __m256i acc = dot_vec(bits, w, xv, xf);
            const __m256 lane = _mm256_permutevar8x32_ps(_mm256_loadu_ps(ws[r] + mv[0]), perm);
            tot[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), lane, tot[r]);
        }
    }
}

/* int3 rows (see the header): plane_rows for the three byte planes of each 64-position block; a row block
 * that ends 32 bytes before the tensor's end (all but the last) loads them without the end check, and all
 * three planes' lines are prefetched. */
static inline __attribute__((always_inline)) void plane_rows3(const int R, const uint8_t *W, long ldw, int nbytes,
                                                              const int8_t *xq, long rb_pad, const int32_t *map,
                                                              const float *sx, const uint16_t *S, int G,
                                                              const uint8_t *wend, __m256 *tot) {
    const int nv = (nbytes + 31) / 32;
    float ws[R_BLOCK][80] __attribute__((aligned(32)));
    row_lane_scales(R, S, G, sx, ws);
    const int guard = W + (long)R * ldw + 32 > wend;
    for (int v = 0; v < nv; v++) {
        __m256i xv[8];
        for (int p = 0; p < 8; p++) xv[p] = _mm256_loadu_si256((const __m256i *)(xq + p * rb_pad + v * 32));
        const int32_t *mv = map + v * 9;
        const __m256i perm = _mm256_loadu_si256((const __m256i *)(mv + 1));
        const int b = v / 2, nb = nbytes - b * INT3_BLOCK < INT3_BLOCK ? nbytes - b * INT3_BLOCK : INT3_BLOCK;
        for (int r = 0; r < R; r++) {  /* block v / 2, half v % 2; the block's byte planes nb apart */
            const uint8_t *src = W + r * ldw + (long)3 * INT3_BLOCK * b + 32 * (v % 2);
            if (PF_AHEAD) {  /* the block's three 64-byte lines, one a vector plus one on even vectors */
                __builtin_prefetch(src + PF_AHEAD + (v % 2 ? 96 : 0));
                if (!(v % 2)) __builtin_prefetch(src + PF_AHEAD + 64);
            }
            __m256i w0, w1, w2;
            if (guard) {
                w0 = load_guarded(src, wend), w1 = load_guarded(src + nb, wend), w2 = load_guarded(src + 2 * nb, wend);
            } else {
                w0 = _mm256_loadu_si256((const __m256i *)src);
                w1 = _mm256_loadu_si256((const __m256i *)(src + nb));
                w2 = _mm256_loadu_si256((const __m256i *)(src + 2 * nb));
            }
            const __m256i acc = dot_vec3(w0, w1, w2, xv);
            const __m256 lane = _mm256_permutevar8x32_ps(_mm256_loadu_ps(ws[r] + mv[0]), perm);
            tot[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), lane, tot[r]);
        }
    }
}

static inline float hsum8(__m256 v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

/* out[r] = y of rows n0..n0+R-1 for one activation row (scales and zeros are padded by 8 values: the
 * 8-wide loads past a row's last group read the next row or the pad, always finite, times zero) */
static inline __attribute__((always_inline)) void block_rows(const int bits, const int R, const lowbit_layer *L, int n0,
                                                             const act_t *a, float *out) {
    const int G = L->G;
    __m256 tot[R_BLOCK];
    for (int r = 0; r < R; r++) tot[r] = _mm256_setzero_ps();
    const uint8_t *W = L->W + (long)n0 * L->ldw;
    const uint16_t *S = L->scale + (long)n0 * G;
    const uint8_t *wend = L->W + (long)L->N * L->ldw;
    if (whole_vectors(bits, L->gb)) {
        switch (L->gb) {
            case 32: group_rows(bits, R, 1, W, L->ldw, G, L->gb, a, L->rb_pad, S, tot); break;
            case 64: group_rows(bits, R, 2, W, L->ldw, G, L->gb, a, L->rb_pad, S, tot); break;
            case 128: group_rows(bits, R, 4, W, L->ldw, G, L->gb, a, L->rb_pad, S, tot); break;
            default: group_rows(bits, R, 0, W, L->ldw, G, L->gb, a, L->rb_pad, S, tot); break;
        }
    } else if (bits == 3)
        plane_rows3(R, W, L->ldw, G * L->gb, a->xq, L->rb_pad, a->map, a->sx, S, G, wend, tot);
    else
        plane_rows(bits, R, W, L->ldw, G * L->gb, a->xq, a->xq2, L->rb_pad, a->map, a->sx, S, G, wend, tot);
    const float offset = L->offset - ((SIGNED8 && bits == 8) ? 128.f : 0.f);
    const __m256 off = _mm256_set1_ps(-offset);
    for (int r = 0; r < R; r++) {
        const long base = (long)(n0 + r) * G;
        __m256 t = tot[r];
        for (int g = 0; g < G; g += 8) {
            __m256 coef = _mm256_mul_ps(bf16x8(L->scale + base + g), off);
            if (L->zero) coef = _mm256_add_ps(coef, bf16x8(L->zero + base + g));
            t = _mm256_fmadd_ps(_mm256_loadu_ps(a->zx + g), coef, t);
        }
        out[r] = hsum8(t);
    }
}

/* per 32-byte vector of a plane: its first group and each lane's group offset from it (8 lanes of 4 bytes lie
 * in at most 8 consecutive groups; pad lanes point at the first, their activation scale is 0) */
static void build_plane_map(const int16_t *idx, int nch, int32_t *map) {
    for (int v = 0; v < 2 * nch; v++) {
        int g0 = 63;
        for (int i = 0; i < 8; i++) {
            const int g = idx[v * 16 + 2 * i + 1];
            if (g < g0) g0 = g;
        }
        if (g0 == 63) g0 = 0;
        map[v * 9] = g0;
        for (int i = 0; i < 8; i++) {
            const int g = idx[v * 16 + 2 * i + 1];
            map[v * 9 + 1 + i] = g < 63 ? g - g0 : 0;
        }
    }
}

static void build_maps(const lowbit_layer *L, int nch, int nch2, int32_t *map, int32_t *map2) {
    (void)nch2; (void)map2;
    build_plane_map(L->idx, nch, map);
}

/* ---- int8 path (ARM NEON) --------------------------------------------------------------------------- */
#elif defined(ISA_NEON)
#define SIGNED8 1
/* per 16-byte vector: [first group, 16 table indices (4 int32) that spread its bf16 scales onto 4 lanes] */
#define MAP_INTS 20

static inline __attribute__((always_inline)) int32x4_t sdot4(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    const int32x4_t lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    const int32x4_t hi = vpaddlq_s16(vmull_high_s8(a, b));
    return vaddq_s32(acc, vpaddq_s32(lo, hi));
#endif
}

static inline __attribute__((always_inline)) int32x4_t dot_vec(const int bits, const uint8x16_t w,
                                                               const int8x16_t *xv, const int8x16_t xf) {
    const int P = 8 / bits;
    if (bits == 8) {  /* signed codes w' = code - 128 */
        const int8x16_t ws = vreinterpretq_s8_u8(veorq_u8(w, vdupq_n_u8(0x80)));
        const int32x4_t a1 = sdot4(vdupq_n_s32(0), ws, xv[0]), a2 = sdot4(vdupq_n_s32(0), ws, xf);
        return vmlaq_n_s32(a2, a1, FINE);
    }
    const uint8x16_t mask = vdupq_n_u8((uint8_t)((1 << bits) - 1));
    int32x4_t acc = sdot4(vdupq_n_s32(0), vreinterpretq_s8_u8(vandq_u8(w, mask)), xv[0]);
    for (int p = 1; p < P; p++)
        acc = sdot4(acc, vreinterpretq_s8_u8(vandq_u8(vshlq_u8(w, vdupq_n_s8((int8_t)(-p * bits))), mask)), xv[p]);
    return acc;
}

/* 16 bytes at p, or those before wend (the tensor's end) and zeros */
static inline uint8x16_t load_guarded(const uint8_t *p, const uint8_t *wend) {
    if (p + 16 <= wend) return vld1q_u8(p);
    uint8_t buf[16] = {0};
    memcpy(buf, p, (size_t)(wend - p));
    return vld1q_u8(buf);
}

/* int3 (see the header): int32 lanes of one row's 16 positions, from its three byte planes */
static inline __attribute__((always_inline)) int32x4_t dot_vec3(const uint8x16_t w0, const uint8x16_t w1,
                                                                const uint8x16_t w2, const int8x16_t *xv) {
    const uint8x16_t m7 = vdupq_n_u8(7), m4 = vdupq_n_u8(4);
    const uint8x16_t c[8] = {vandq_u8(w0, m7), vandq_u8(vshrq_n_u8(w0, 3), m7),
                             vandq_u8(w1, m7), vandq_u8(vshrq_n_u8(w1, 3), m7),
                             vandq_u8(w2, m7), vandq_u8(vshrq_n_u8(w2, 3), m7),
                             vorrq_u8(vshrq_n_u8(w0, 6), vandq_u8(vshrq_n_u8(w2, 4), m4)),
                             vorrq_u8(vshrq_n_u8(w1, 6), vshlq_n_u8(vshrq_n_u8(w2, 7), 2))};
    int32x4_t acc = sdot4(vdupq_n_s32(0), vreinterpretq_s8_u8(c[0]), xv[0]);
    for (int p = 1; p < 8; p++) acc = sdot4(acc, vreinterpretq_s8_u8(c[p]), xv[p]);
    return acc;
}

static inline __attribute__((always_inline)) void plane_rows(const int bits, const int R, const uint8_t *W, long ldw,
                                                             int nbytes, const int8_t *xq, const int8_t *xfine,
                                                             long rb_pad, const int32_t *map, const float *xl,
                                                             const uint16_t *S, int G, const uint8_t *wend,
                                                             float32x4_t *tot) {
    const int P = bits == 3 ? 8 : 8 / bits, nv = (nbytes + 15) / 16;
    for (int v = 0; v < nv; v++) {
        int8x16_t xv[8], xf = vdupq_n_s8(0);
        for (int p = 0; p < P; p++) xv[p] = vld1q_s8(xq + p * rb_pad + v * 16);
        if (bits == 8) xf = vld1q_s8(xfine + v * 16);
        const float32x4_t xs = vld1q_f32(xl + v * 4);
        const int32_t *mv = map + v * 5;
        const uint8x16_t tbl = vreinterpretq_u8_s32(vld1q_s32(mv + 1));
        const int tail = nbytes - v * 16 < 16;
        if (bits == 3) {  /* block v / 4, quarter v % 4; the block's byte planes nb apart */
            const int b = v / 4, nb = nbytes - b * INT3_BLOCK < INT3_BLOCK ? nbytes - b * INT3_BLOCK : INT3_BLOCK;
            for (int r = 0; r < R; r++) {
                const uint8_t *src = W + r * ldw + (long)3 * INT3_BLOCK * b + 16 * (v % 4);
                if (PF_AHEAD) __builtin_prefetch(src + PF_AHEAD);
                const int32x4_t acc = dot_vec3(load_guarded(src, wend), load_guarded(src + nb, wend),
                                               load_guarded(src + 2 * nb, wend), xv);
                const uint8x16_t sb = vld1q_u8((const uint8_t *)(S + (long)r * G + mv[0]));
                const float32x4_t ws = vreinterpretq_f32_u8(vqtbl1q_u8(sb, tbl));
                tot[r] = vfmaq_f32(tot[r], vcvtq_f32_s32(acc), vmulq_f32(ws, xs));
            }
            continue;
        }
        for (int r = 0; r < R; r++) {
            const uint8_t *src = W + r * ldw + v * 16;
            if (PF_AHEAD) __builtin_prefetch(src + PF_AHEAD);
            uint8x16_t w;
            if (tail && src + 16 > wend) {  /* the tensor's last bytes, not read past */
                uint8_t buf[16] = {0};
                memcpy(buf, src, (size_t)(nbytes - v * 16));
                w = vld1q_u8(buf);
            } else {
                w = vld1q_u8(src);
            }
            const int32x4_t acc = dot_vec(bits, w, xv, xf);
            const uint8x16_t sb = vld1q_u8((const uint8_t *)(S + (long)r * G + mv[0]));
            const float32x4_t ws = vreinterpretq_f32_u8(vqtbl1q_u8(sb, tbl));
            tot[r] = vfmaq_f32(tot[r], vcvtq_f32_s32(acc), vmulq_f32(ws, xs));
        }
    }
}

static inline float32x4_t bf16x4(const uint16_t *p) {
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16));
}

static inline __attribute__((always_inline)) void block_rows(const int bits, const int R, const lowbit_layer *L, int n0,
                                                             const act_t *a, float *out) {
    const int G = L->G;
    float32x4_t tot[R_BLOCK];
    for (int r = 0; r < R; r++) tot[r] = vdupq_n_f32(0.f);
    const uint8_t *W = L->W + (long)n0 * L->ldw;
    const uint16_t *S = L->scale + (long)n0 * G;
    const uint8_t *wend = L->W + (long)L->N * L->ldw;
    plane_rows(bits, R, W, L->ldw, G * L->gb, a->xq, a->xq2, L->rb_pad, a->map, a->xl, S, G, wend, tot);
    const float offset = L->offset - (bits == 8 ? 128.f : 0.f);
    for (int r = 0; r < R; r++) {
        const long base = (long)(n0 + r) * G;
        float32x4_t t = tot[r];
        for (int g = 0; g < G; g += 4) {
            float32x4_t coef = vmulq_n_f32(bf16x4(L->scale + base + g), -offset);
            if (L->zero) coef = vaddq_f32(coef, bf16x4(L->zero + base + g));
            t = vfmaq_f32(t, vld1q_f32(a->zx + g), coef);
        }
        out[r] = vaddvq_f32(t);
    }
}

/* per 16-byte vector: first group and the tbl indices that put bf16 scale (g - g0) into a lane's high half
 * (pad lanes: out-of-range indices, i.e. 0.0) */
static void build_plane_map(const int16_t *idx, int nch, int32_t *map) {
    for (int v = 0; v < 4 * nch; v++) {
        int g0 = 63;
        for (int i = 0; i < 4; i++) {
            const int g = idx[v * 8 + 2 * i + 1];
            if (g < g0) g0 = g;
        }
        if (g0 == 63) g0 = 0;
        map[v * 5] = g0;
        uint8_t t[16];
        for (int i = 0; i < 4; i++) {
            const int g = idx[v * 8 + 2 * i + 1];
            t[4 * i] = t[4 * i + 1] = 0xFF;
            t[4 * i + 2] = g < 63 ? (uint8_t)(2 * (g - g0)) : 0xFF;
            t[4 * i + 3] = g < 63 ? (uint8_t)(2 * (g - g0) + 1) : 0xFF;
        }
        memcpy(map + v * 5 + 1, t, 16);
    }
}

static void build_maps(const lowbit_layer *L, int nch, int nch2, int32_t *map, int32_t *map2) {
    (void)nch2; (void)map2;
    build_plane_map(L->idx, nch, map);
}
#endif

#if HAVE_INT8
static void rows_range(const int bits, const lowbit_layer *L, int n_lo, int n_hi, const act_t *acts, int M, float *y) {
    const int N = L->N;
    float out[R_BLOCK];
    int n = n_lo;
    for (; n + R_BLOCK <= n_hi; n += R_BLOCK)
        for (int m = 0; m < M; m++) {
            switch (bits) {
                case 1: block_rows(1, R_BLOCK, L, n, acts + m, out); break;
                case 2: block_rows(2, R_BLOCK, L, n, acts + m, out); break;
                case 3: block_rows(3, R_BLOCK, L, n, acts + m, out); break;
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
                case 3: block_rows(3, 1, L, n, acts + m, out); break;
                case 8: block_rows(8, 1, L, n, acts + m, out); break;
                default: block_rows(4, 1, L, n, acts + m, out); break;
            }
            y[(long)m * N + n] = out[0] + (L->bias ? L->bias[n] : 0.f);
        }
}

/* x (K floats) → int8 per group (scale max|x|/127, as before), gathered into the row-planar planes */
static void prepare_act(const lowbit_layer *L, const float *x, int nch, int8_t *qx, int8_t *qx2, int8_t *xq,
                        int8_t *xq2, float *sx, float *zx, float *xl) {
    const int K = L->K, G = L->G, P = L->kind == 3 ? 8 : 8 / L->kind, two = L->kind == 8;
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
    for (int g = G; g < Gp; g++) zx[g] = sx[g] = 0.f;
    qx[K] = 0;
    for (long i = 0; i < P * L->rb_pad; i++) xq[i] = qx[L->col[i]];
    if (two) {
        qx2[K] = 0;
        for (long i = 0; i < L->rb_pad; i++) xq2[i] = qx2[L->col[i]];
    }
#if !defined(ISA_256)  /* the 256-bit builds take lane scales from sx (row_lane_scales) */
    for (int c = 0; c < nch; c++)
        for (int i = 0; i < 16; i++) {
            const int g = L->idx[c * 32 + 2 * i + 1];
            xl[c * 16 + i] = g < 63 ? sx[g] : 0.f;
        }
#else
    (void)xl;
#endif
}

static int gemv_int8(const lowbit_layer *L, const float *x, float *y, int M, int nthreads) {
    const int bits = L->kind, P = bits == 3 ? 8 : 8 / bits;
    const int G = L->G, Gp = (G + 15) / 16 * 16;
    const int nch = (G * L->gb + 63) / 64, nch2 = 0;
    const long sa = P * L->rb_pad, sb = L->kind == 8 ? L->rb_pad : 0;
    /* one scratch block per call: int8 planes, per-group and per-lane scales */
    const size_t per_m = (size_t)(sa + sb + 64) + sizeof(float) * (size_t)(2 * Gp + 16 * (nch + nch2));
    /* start the weight stream while the activations are prepared (the loop prefetches PF_AHEAD ahead) */
    const long wbytes = (long)L->N * L->ldw;
    for (long o = 0; o < PF_AHEAD && o < wbytes; o += 64) __builtin_prefetch((const char *)L->W + o);
    const size_t qbytes = ((size_t)L->K + 1 + 63) / 64 * 64;
    const size_t mbytes = sizeof(int32_t) * (size_t)MAP_INTS * (size_t)(nch + nch2);
    char *buf = malloc((size_t)M * per_m + 2 * qbytes + mbytes + 64);
    if (!buf) return -1;
    int8_t *qx = (int8_t *)buf, *qx2 = (int8_t *)(buf + qbytes);
    int32_t *map = (int32_t *)(buf + 2 * qbytes), *map2 = map + MAP_INTS * nch;
    build_maps(L, nch, nch2, map, map2);
    char *base = buf + 2 * qbytes + (mbytes + 63) / 64 * 64;
    act_t acts[64];
    for (int m = 0; m < M; m++) {
        char *b = base + (size_t)m * per_m;
        float *sx = (float *)b, *zx = sx + Gp, *xl = zx + Gp, *xl2 = xl + 16 * nch;
        int8_t *xq = (int8_t *)(xl2 + 16 * nch2), *xq2 = xq + sa;
        prepare_act(L, x + (long)m * L->K, nch, qx, qx2, xq, xq2, sx, zx, xl);
        acts[m] = (act_t){xq, xq2, xl, xl2, zx, map, map2, sx};
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
    return 0;
}
#endif

/* y (M, N) float32 = x (M, K) float32 · W^T. The int8 path needs the lane map, G <= 63 and M <= 64.
 * Returns 0, or -1 where scratch memory could not be allocated (y is then left unwritten: the caller raises). */
int lowbit_gemv(const lowbit_layer *L, const float *x, float *y, int M, int nthreads) {
#if HAVE_INT8
    if (L->idx && L->G <= 63 && M <= 64) return gemv_int8(L, x, y, M, nthreads);
#endif
    const int kind = L->kind, bits = kind, P = kind == 3 ? 8 : 8 / bits, K = L->K, G = L->G, gb = L->gb;
    const long rb_pad = L->rb_pad, rb_pad2 = L->rb_pad2, xs_a = P * rb_pad, xs_b = 8 * rb_pad2;
    /* gather the activations into the row-planar layout (col[i] == K: a zero pad) */
    float *xp = malloc(sizeof(float) * (size_t)M * xs_a);
    float *xp2 = L->col2 ? malloc(sizeof(float) * (size_t)M * xs_b) : NULL;
    float *xsum = malloc(sizeof(float) * (size_t)M * G);
    if (!xp || (L->col2 && !xp2) || !xsum) {
        free(xp);
        free(xp2);
        free(xsum);
        return -1;
    }
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
            y[(long)m * N + n] = kind == 3 ? row_float3(row, xp + m * xs_a, rb_pad, gb, xsum + m * G,
                                                        L->scale + (long)n * G,
                                                        L->zero ? L->zero + (long)n * G : NULL, G, L->offset)
                                                 + (L->bias ? L->bias[n] : 0.f)
                                           : row_float(bits, row, xp + m * xs_a, rb_pad, gb, NULL, NULL, rb_pad2, L->gb2, xsum + m * G,
                                           L->scale + (long)n * G, L->zero ? L->zero + (long)n * G : NULL, G,
                                           L->offset) + (L->bias ? L->bias[n] : 0.f);
    }
    free(xsum);
    free(xp);
    free(xp2);
    return 0;
}

/* The float weights W (N, K) float32 that a layer's codes stand for, (code - offset)·scale (+ zero), bit for bit
 * as quant.paretoq.dequantize_codes computes them: prefill's dense GEMMs take them, and PyTorch needs five
 * passes over the weight (unpack, convert, subtract, scale, shift) for what one pass does here (2-11x faster,
 * bench/bench_dequant.py). Eight columns a step where groups start on a byte (int3: on a position), on the
 * 256-bit x86 levels and NEON; the empty asm statements (KEEP) hold each intermediate in its register as
 * rounded, so the compiler cannot fuse the multiply and add into an FMA or reassociate them under
 * -ffast-math. Elsewhere (the scalar level, the emulated AVX-512 build), or for groups that split a byte,
 * lowbit_dequantize returns 0 and the caller keeps PyTorch's path. */
#if defined(__AVX2__) || defined(ISA_NEON)
#define HAVE_DEQUANT 1

/* int3 position c/8 as one word: b0 | b1 << 8 | b2 << 16 */
static inline uint32_t int3_word(const uint8_t *row, int c, int rb) {
    uint32_t b0, b1, b2;
    int3_bytes(row, c / 8, rb, &b0, &b1, &b2);
    return b0 | b1 << 8 | b2 << 16;
}

/* Code of column c: bits-wide codes packed from bit 0 up, or from int3's word (c6, c7 take two bits from b0/b1
 * and one from b2) */
static inline uint32_t code_at(const int bits, const uint8_t *row, int c, int rb) {
    if (bits == 3) {
        const uint32_t u = int3_word(row, c, rb), p = (uint32_t)c % 8;
        static const uint8_t sh[8] = {0, 3, 8, 11, 16, 19, 6, 14};
        return ((u >> sh[p]) & (p < 6 ? 7u : 3u)) | (p < 6 ? 0u : ((u >> (p == 6 ? 22 : 23)) & 1u) << 2);
    }
    return bits == 8 ? row[c] : (row[(long)c * bits / 8] >> ((c * bits) % 8)) & ((1u << bits) - 1u);
}

#if defined(__AVX2__)
#define KEEP(v) __asm__("" : "+x"(v))
/* columns c..c+7 of one row */
static inline __attribute__((always_inline)) void dequant8(const int bits, const uint8_t *row, int c, int rb,
                                                           float off1, float s1, float z1, int has_zero, float *o) {
    static const int32_t sh3[8] = {0, 3, 8, 11, 16, 19, 6, 14}, m3[8] = {7, 7, 7, 7, 7, 7, 3, 3};
    static const int32_t sh3hi[8] = {0, 0, 0, 0, 0, 0, 22, 23}, m3hi[8] = {0, 0, 0, 0, 0, 0, 1, 1};
    __m256i q;
    if (bits == 8) {
        q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + c)));
    } else if (bits == 3) {
        const __m256i u = _mm256_set1_epi32((int)int3_word(row, c, rb));
        q = _mm256_or_si256(
            _mm256_and_si256(_mm256_srlv_epi32(u, _mm256_loadu_si256((const __m256i *)sh3)),
                             _mm256_loadu_si256((const __m256i *)m3)),
            _mm256_slli_epi32(_mm256_and_si256(_mm256_srlv_epi32(u, _mm256_loadu_si256((const __m256i *)sh3hi)),
                                               _mm256_loadu_si256((const __m256i *)m3hi)), 2));
    } else {
        uint32_t u = 0;
        memcpy(&u, row + (long)c * bits / 8, (size_t)bits);
        const __m256i shifts = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(bits));
        q = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)u), shifts), _mm256_set1_epi32((1 << bits) - 1));
    }
    __m256 v = _mm256_sub_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(off1));
    KEEP(v);
    v = _mm256_mul_ps(v, _mm256_set1_ps(s1));
    if (has_zero) {
        KEEP(v);
        v = _mm256_add_ps(v, _mm256_set1_ps(z1));
    }
    _mm256_storeu_ps(o, v);
}
#else /* ISA_NEON */
#define KEEP(v) __asm__("" : "+w"(v))
static inline __attribute__((always_inline)) void dequant4(uint32x4_t q, float off1, float s1, float z1,
                                                           int has_zero, float *o) {
    float32x4_t v = vsubq_f32(vcvtq_f32_u32(q), vdupq_n_f32(off1));
    KEEP(v);
    v = vmulq_f32(v, vdupq_n_f32(s1));
    if (has_zero) {
        KEEP(v);
        v = vaddq_f32(v, vdupq_n_f32(z1));
    }
    vst1q_f32(o, v);
}

static inline __attribute__((always_inline)) void dequant8(const int bits, const uint8_t *row, int c, int rb,
                                                           float off1, float s1, float z1, int has_zero, float *o) {
    static const int32_t sh3[8] = {0, -3, -8, -11, -16, -19, -6, -14}, sh3hi[4] = {0, 0, -22, -23};
    static const uint32_t m3[8] = {7, 7, 7, 7, 7, 7, 3, 3}, m3hi[4] = {0, 0, 1, 1};
    uint32x4_t lo, hi;
    if (bits == 8) {
        const uint16x8_t w = vmovl_u8(vld1_u8(row + c));
        lo = vmovl_u16(vget_low_u16(w));
        hi = vmovl_u16(vget_high_u16(w));
    } else if (bits == 3) {
        const uint32x4_t u = vdupq_n_u32(int3_word(row, c, rb));
        lo = vandq_u32(vshlq_u32(u, vld1q_s32(sh3)), vld1q_u32(m3));
        hi = vorrq_u32(vandq_u32(vshlq_u32(u, vld1q_s32(sh3 + 4)), vld1q_u32(m3 + 4)),
                       vshlq_n_u32(vandq_u32(vshlq_u32(u, vld1q_s32(sh3hi)), vld1q_u32(m3hi)), 2));
    } else {
        uint32_t u = 0;
        memcpy(&u, row + (long)c * bits / 8, (size_t)bits);
        const int32x4_t lane = {0, -1, -2, -3};  /* right shifts by bits * lane */
        const int32x4_t sh = vmulq_n_s32(lane, bits), mask = vdupq_n_s32((1 << bits) - 1);
        const uint32x4_t uv = vdupq_n_u32(u);
        lo = vandq_u32(vshlq_u32(uv, sh), vreinterpretq_u32_s32(mask));
        hi = vandq_u32(vshlq_u32(uv, vsubq_s32(sh, vdupq_n_s32(4 * bits))), vreinterpretq_u32_s32(mask));
    }
    dequant4(lo, off1, s1, z1, has_zero, o);
    dequant4(hi, off1, s1, z1, has_zero, o + 4);
}
#endif

static inline __attribute__((always_inline)) void dequant_row(const int bits, const lowbit_layer *L, int n,
                                                              float *out) {
    const int G = L->G, K = L->K, group = L->group, rb = G * L->gb, has_zero = L->zero != NULL;
    const uint8_t *row = L->W + (long)n * L->ldw;
    for (int g = 0; g < G; g++) {
        const float s1 = bf16(L->scale[(long)n * G + g]), z1 = has_zero ? bf16(L->zero[(long)n * G + g]) : 0.f;
        const int c_end = (g + 1) * group < K ? (g + 1) * group : K;
        int c = g * group;
        for (; c + 8 <= c_end; c += 8) dequant8(bits, row, c, rb, L->offset, s1, z1, has_zero, out + c);
        for (; c < c_end; c++) {  /* the tail: the same three roundings, one value at a time */
            volatile float d = (float)code_at(bits, row, c, rb) - L->offset;
            volatile float v = d * s1;
            if (has_zero) v = v + z1;
            out[c] = v;
        }
    }
}
#else
#define HAVE_DEQUANT 0
#endif

int lowbit_dequantize(const lowbit_layer *L, float *w, int nthreads) {
#if HAVE_DEQUANT
    const int N = L->N;
    const long K = L->K;
    if (L->group % (L->kind == 3 ? 8 : 8 / L->kind)) return 0;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int n = 0; n < N; n++) switch (L->kind) {  /* constant widths: the byte loads inline */
        case 1: dequant_row(1, L, n, w + n * K); break;
        case 2: dequant_row(2, L, n, w + n * K); break;
        case 3: dequant_row(3, L, n, w + n * K); break;
        case 4: dequant_row(4, L, n, w + n * K); break;
        default: dequant_row(8, L, n, w + n * K); break;
    }
    return 1;
#else
    (void)L; (void)w; (void)nthreads;
    return 0;
#endif
}

/* Several layers that read the same activations (q/k/v, gate/up) in one call: one ctypes round trip instead
 * of one per layer. y holds the layers' outputs side by side for a single row: (1, N_0 + N_1 + ...). */
int lowbit_gemv_many(const lowbit_layer *const *layers, int n, const float *x, float *y, int nthreads) {
    long off = 0;
    for (int i = 0; i < n; i++) {
        if (lowbit_gemv(layers[i], x, y + off, 1, nthreads)) return -1;
        off += layers[i]->N;
    }
    return 0;
}
