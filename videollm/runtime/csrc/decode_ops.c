/* The small float32 operations of a one-token decoder step (videollm.runtime.decode_ops loads this).
 *
 * In a batch-1 CPU decode step, RMSNorm, RoPE, one query's attention and SwiGLU's product are tiny
 * computations that PyTorch runs as several dispatched ops each (~20-50 us a call, ~100 calls a step for a
 * 0.5B LLM); its CPU SDPA kernel is also slower than a plain loop for one query. Here each is one call.
 */
#include <math.h>
#include <stdlib.h>

/* y = (x * rsqrt(mean(x^2) + eps)) * w over D values: transformers' RMSNorm, in its order of operations. */
void decode_rms_norm(const float *x, const float *w, float eps, int D, float *y) {
    float ss = 0.f;
    for (int i = 0; i < D; i++) ss += x[i] * x[i];
    const float r = 1.f / sqrtf(ss / (float)D + eps);
    for (int i = 0; i < D; i++) y[i] = (x[i] * r) * w[i];
}

/* One query per head against T cached keys/values, grouped-query attention:
 *   q (H, D); keys and values (KV, T, D) with `ldk`/`ldv` floats between heads (rows of D floats inside a
 *   head); out (H, D). Query head h reads kv head h / (H / KV), as transformers' repeat_kv. Each key and
 *   value row is read once per kv head, for all the query heads that share it. Returns 0, or -1 where the
 *   scores' memory could not be allocated (out is then unwritten: the caller raises). */
int decode_attend(const float *q, const float *keys, const float *values, long ldk, long ldv, int T, int H,
                   int KV, int D, float scale, float *out) {
    const int rep = H / KV;
    float *s = malloc(sizeof(float) * (size_t)rep * (size_t)T);
    if (!s) return -1;
    for (int g = 0; g < KV; g++) {
        const float *K = keys + (long)g * ldk, *V = values + (long)g * ldv, *qg = q + (long)g * rep * D;
        for (int t = 0; t < T; t++) {
            const float *k = K + (long)t * D;
            for (int r = 0; r < rep; r++) {
                const float *qr = qg + (long)r * D;
                float dot = 0.f;
                for (int i = 0; i < D; i++) dot += qr[i] * k[i];
                s[(long)r * T + t] = dot * scale;
            }
        }
        for (int r = 0; r < rep; r++) {
            float *sr = s + (long)r * T, mx = sr[0], tot = 0.f;
            for (int t = 0; t < T; t++) mx = sr[t] > mx ? sr[t] : mx;
            for (int t = 0; t < T; t++) {
                sr[t] = expf(sr[t] - mx);
                tot += sr[t];
            }
            const float inv = 1.f / tot;
            for (int t = 0; t < T; t++) sr[t] *= inv;
        }
        float *og = out + (long)g * rep * D;
        for (int i = 0; i < rep * D; i++) og[i] = 0.f;
        for (int t = 0; t < T; t++) {
            const float *v = V + (long)t * D;
            for (int r = 0; r < rep; r++) {
                const float p = s[(long)r * T + t];
                float *o = og + (long)r * D;
                for (int i = 0; i < D; i++) o[i] += p * v[i];
            }
        }
    }
    free(s);
    return 0;
}

/* RoPE on one token's projected queries and keys, and the key/value rows stored into the KV cache:
 *   qk (H + KV, D): query heads then key heads, rotated in place (x*cos + roll(x, D/2)*sin_signed, i.e.
 *   transformers' x*cos + rotate_half(x)*sin); v (KV, D); the rotated keys and v go to row t of kbuf/vbuf
 *   (ldk/ldv floats between heads, rows of D floats). Returns 0, or -1 for a head size over 1024 (nothing
 *   written). */
int decode_rope_store(float *qk, const float *v, const float *cos_, const float *sin_signed, int H, int KV,
                       int D, float *kbuf, float *vbuf, long ldk, long ldv, long t) {
    const int half = D / 2;
    float tmp[1024];
    if (D > 1024) return -1;
    for (int h = 0; h < H + KV; h++) {
        float *x = qk + (long)h * D;
        for (int i = 0; i < D; i++) tmp[i] = x[i] * cos_[i] + x[(i + half) % D] * sin_signed[i];
        for (int i = 0; i < D; i++) x[i] = tmp[i];
    }
    for (int g = 0; g < KV; g++) {
        const float *k = qk + (long)(H + g) * D, *vg = v + (long)g * D;
        float *kd = kbuf + (long)g * ldk + t * D, *vd = vbuf + (long)g * ldv + t * D;
        for (int i = 0; i < D; i++) {
            kd[i] = k[i];
            vd[i] = vg[i];
        }
    }
    return 0;
}

/* SwiGLU's product: out[i] = silu(gu[i]) * gu[I + i] for the gate and up halves of one row. */
void decode_swiglu(const float *gu, int I, float *out) {
    for (int i = 0; i < I; i++) {
        const float g = gu[i];
        out[i] = (g / (1.f + expf(-g))) * gu[I + i];
    }
}

/* ---- one whole decoder layer ------------------------------------------------------------------------- */
/* The low-bit kernel's `lowbit_gemv_many` (videollm/quant/csrc/lowbit_gemv.c), handed over as a pointer:
 * this library does not link that one. Layers that read the same input (q/k/v, gate/up) in one call, their
 * outputs side by side, bias included. */
typedef int (*gemv_many_fn)(const void *const *layers, int n, const float *x, float *y, int nthreads);

/* One layer's constant parts (decode_ops.DecodeLayer mirrors this layout), filled once per plan. */
typedef struct {
    gemv_many_fn gemv;
    const void *const *qkv;
    const void *const *o;
    const void *const *gate_up;
    const void *const *down;
    const float *norm1, *norm2, *q_norm, *k_norm; /* q_norm/k_norm: Qwen3's per-head norms, else NULL */
    float eps1, eps2, eps_q, eps_k, scaling;
    int n_qkv, n_gate_up, D, H, KV, hd, inter;
} decode_layer_t;

/* Floats of scratch `decode_layer` needs. */
long decode_layer_scratch(const decode_layer_t *L) {
    return 2L * L->D + (long)(2 * L->H + 2 * L->KV) * L->hd + 3L * L->inter;
}

/* One token through one Llama-family layer, h (D) updated in place: RMSNorm -> q/k/v -> (Qwen3 head norms)
 * -> RoPE and the cache write at row t -> attention over rows 0..t -> o -> residual -> RMSNorm -> gate/up ->
 * SwiGLU -> down -> residual. The same operations, in the same order, as the per-op step in decode_step.py:
 * at batch 1 the ~12 PyTorch and ctypes calls a layer cost more than these loops.
 * Returns 0; -1 a kernel could not allocate, -2 a head over 1024, -3 no memory for the scores (h may then
 * be partly updated: the caller raises). */
int decode_layer(const decode_layer_t *L, float *h, const float *cos_, const float *sin_signed, float *kbuf,
                 float *vbuf, long ldk, long ldv, long t, float *scratch, int nthreads) {
    const int D = L->D, H = L->H, KV = L->KV, hd = L->hd, I = L->inter;
    float *xn = scratch, *y = xn + D, *qkv = y + D, *att = qkv + (long)(H + 2 * KV) * hd, *gu = att + (long)H * hd;
    float *act = gu + 2L * I;
    decode_rms_norm(h, L->norm1, L->eps1, D, xn);
    if (L->gemv(L->qkv, L->n_qkv, xn, qkv, nthreads)) return -1;
    if (L->q_norm) {
        for (int i = 0; i < H; i++) decode_rms_norm(qkv + (long)i * hd, L->q_norm, L->eps_q, hd, qkv + (long)i * hd);
        for (int i = H; i < H + KV; i++)
            decode_rms_norm(qkv + (long)i * hd, L->k_norm, L->eps_k, hd, qkv + (long)i * hd);
    }
    if (decode_rope_store(qkv, qkv + (long)(H + KV) * hd, cos_, sin_signed, H, KV, hd, kbuf, vbuf, ldk, ldv, t))
        return -2;
    if (decode_attend(qkv, kbuf, vbuf, ldk, ldv, (int)t + 1, H, KV, hd, L->scaling, att)) return -3;
    if (L->gemv(L->o, 1, att, y, nthreads)) return -1;
    for (int i = 0; i < D; i++) h[i] += y[i];
    decode_rms_norm(h, L->norm2, L->eps2, D, xn);
    if (L->gemv(L->gate_up, L->n_gate_up, xn, gu, nthreads)) return -1;
    decode_swiglu(gu, I, act);
    if (L->gemv(L->down, 1, act, y, nthreads)) return -1;
    for (int i = 0; i < D; i++) h[i] += y[i];
    return 0;
}
