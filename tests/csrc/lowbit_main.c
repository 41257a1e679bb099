/* A stand-alone driver for lowbit_gemv.c, so a cross-compiled build (ARM NEON under qemu-user) runs the same
 * layers as the native tests (tests/test_cpu_isa.py writes them, then compares the output).
 *
 *   lowbit_main IN OUT   IN: blobs, each an int64 byte count then the bytes (count 0: NULL), in the order
 *                        header, W, scale, zero, col, col2, idx, idx2, bias, x; header = int32 kind, ldw, hi_off,
 *                        K, N, G, group, gb, gb2, M, then int64 rb_pad, rb_pad2, then float32 offset.
 *                        OUT: the (M, N) float32 result, an int32 (1: lowbit_dequantize ran), then (if it
 *                        did) the (N, K) float32 dequantized weights. Prints the build's level. Exit 1: bad input.
 */
#include <stdio.h>

#include "../../videollm/quant/csrc/lowbit_gemv.c"

static void *blob(FILE *f) {
    int64_t n = 0;
    if (fread(&n, sizeof n, 1, f) != 1 || n < 0) exit(1);
    if (n == 0) return NULL;
    void *p = malloc((size_t)n);
    if (!p || fread(p, 1, (size_t)n, f) != (size_t)n) exit(1);
    return p;
}

int main(int argc, char **argv) {
    if (argc != 3) return 1;
    FILE *f = fopen(argv[1], "rb");
    if (!f) return 1;
    const char *h = blob(f);
    if (!h) return 1;
    int32_t v[10];
    int64_t pads[2];
    float offset;
    memcpy(v, h, sizeof v);
    memcpy(pads, h + sizeof v, sizeof pads);
    memcpy(&offset, h + sizeof v + sizeof pads, sizeof offset);
    lowbit_layer L;
    L.W = blob(f);
    L.scale = blob(f);
    L.zero = blob(f);
    L.col = blob(f);
    L.col2 = blob(f);
    L.idx = blob(f);
    L.idx2 = blob(f);
    L.bias = blob(f);
    const float *x = blob(f);
    fclose(f);
    L.kind = v[0], L.ldw = v[1], L.hi_off = v[2], L.K = v[3], L.N = v[4], L.G = v[5], L.group = v[6];
    L.gb = v[7], L.gb2 = v[8];
    L.rb_pad = pads[0], L.rb_pad2 = pads[1], L.offset = offset;
    const int M = v[9];
    float *y = malloc(sizeof(float) * (size_t)M * (size_t)L.N);
    if (!y || lowbit_gemv(&L, x, y, M, 1)) return 1;
    float *w = malloc(sizeof(float) * (size_t)L.N * (size_t)L.K);
    if (!w) return 1;
    const int32_t done = lowbit_dequantize(&L, w, 1);
    FILE *o = fopen(argv[2], "wb");
    if (!o || fwrite(y, sizeof(float), (size_t)M * L.N, o) != (size_t)M * L.N) return 1;
    if (fwrite(&done, sizeof done, 1, o) != 1) return 1;
    if (done && fwrite(w, sizeof(float), (size_t)L.N * L.K, o) != (size_t)L.N * L.K) return 1;
    fclose(o);
    printf("%s sdot=%d\n", lowbit_isa(), lowbit_has_sdot());
    return 0;
}
