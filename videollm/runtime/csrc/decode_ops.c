/* The small float32 operations of a one-token decoder step (videollm.answer.decode_ops loads this).
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
