"""Low-bit CPU kernels against their references, int1/int3, ParetoQ-exact QAT gradients, quantized LM head."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from videollm.quant import QuantLinear, cpu_kernels, packing
from videollm.quant.embedding import QuantEmbedding
from videollm.quant.linear import DENSE_ROWS
from videollm.quant.paretoq import LsqQuant, SignQuant, StretchedElasticQuant, fake_quant, init_alpha, quantize_codes

needs_kernel = pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler for the low-bit kernel")

# (out, in, group): odd sizes, per-row groups (None), groups that are not a multiple of the bytes, > 63 groups
SHAPES = [(64, 256, 128), (37, 130, None), (96, 200, 64), (5, 33, 16), (70, 896, 32), (3, 8200, 128), (1, 7, None)]


def _kernel_for(scheme: str, lin: nn.Linear, group: int | None) -> tuple[QuantLinear, cpu_kernels.LowBitGemv]:
    q = QuantLinear.from_linear(lin, scheme, group, kernel="dequant", zero_point=scheme == "int4")
    width = {"int4": 4, "int3": 3, "int2": 2, "ternary": 2, "int1": 1}[scheme]
    codes = q.codes()
    weight = packing.pack(codes, width)
    return q, cpu_kernels.LowBitGemv(width, weight, q.scale, q.zero, q.in_features, q.group, q.spec.offset)


@needs_kernel
@pytest.mark.parametrize("scheme", ["int4", "int3", "int2", "ternary", "int1"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
def test_lowbit_kernel_equals_reference(scheme, shape, rows):
    n, k, group = shape
    torch.manual_seed(n * 1000 + k)
    lin = nn.Linear(k, n, bias=False)
    q, kern = _kernel_for(scheme, lin, group)
    x = torch.randn(rows, k) * torch.linspace(0.1, 3.0, k)  # groups with different ranges
    want = F.linear(kern.reference_input(x), q.dequantize())
    got = kern(x)
    assert got.shape == (rows, n)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("shape", [(64, 256), (37, 130), (5, 4864), (70, 896), (3, 9000)])
@pytest.mark.parametrize("rows", [1, 2, 5])
def test_int8_weights_on_the_kernel_equal_their_reference(shape, rows):
    """int8 weights run on the kernel's int8 path (every SIMD level) with two int8 activation planes (~15 bits a
    value): equal to the reference on those activations, and far closer to exact float activations than
    bfloat16 ones are. Without that path (scalar level, no compiler) they take ATen's int8 kernel in bfloat16."""
    n, k = shape
    torch.manual_seed(n + k)
    lin = nn.Linear(k, n, bias=True)
    q = QuantLinear.from_linear(lin, "int8")
    ref = QuantLinear.from_linear(lin, "int8", kernel="dequant")
    x = torch.randn(rows, k) * torch.linspace(0.1, 3.0, k)
    if not cpu_kernels.int8_path():
        assert q.kernel == "int8_cpu"
        want = ref.forward_reference(x)
        assert torch.allclose(q(x), want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))
        return
    assert q.kernel == "lowbit" and q._lowbit.bits == 8
    want = F.linear(q._lowbit.reference_input(x), ref.dequantize(), ref.bias)
    got = q(x)
    scale = float(want.abs().max())
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
    exact = ref.forward_reference(x)
    bf16 = F.linear(x.bfloat16().float(), ref.dequantize(), ref.bias)
    assert (got - exact).abs().max() < 0.1 * (bf16 - exact).abs().max()
    assert torch.equal(q.portable_qweight(), ref.portable_qweight())  # checkpoints keep the signed codes


@pytest.mark.parametrize("scheme", ["int8", "int4", "int3", "int2", "ternary", "int1"])
@pytest.mark.parametrize("shape", SHAPES)
def test_prefill_weights_equal_the_reference_bit_for_bit(scheme, shape):
    """Prefill (more than DENSE_ROWS rows) multiplies by the dequantized weight: on the AVX2-and-up and NEON
    builds it comes from one C pass over the kernel's codes, elsewhere (and for groups that split a byte) from
    PyTorch's unpack-and-scale (NEON's pass is checked under qemu: tests/test_cpu_isa.py). Either way it is
    the reference's float32 weight exactly, so prefill is unchanged."""
    n, k, group = shape
    torch.manual_seed(n + 7 * k)
    lin = nn.Linear(k, n, bias=True)
    q = QuantLinear.from_linear(lin, scheme, group, zero_point=scheme == "int4")
    ref = QuantLinear.from_linear(lin, scheme, group, kernel="dequant", zero_point=scheme == "int4")
    assert torch.equal(q.dequantize(), ref.dequantize())
    x = torch.randn(DENSE_ROWS + 9, k)
    assert torch.equal(q(x), ref.forward_reference(x))
    if q._lowbit is None:
        return
    fast = q._lowbit.dequantize()
    per = {"int8": 1, "int4": 2, "int3": 8, "int2": 4, "ternary": 4, "int1": 8}[scheme]
    if cpu_kernels.isa() in ("avx2", "avxvnni", "avx512vnni", "neon") and q._lowbit.group % per == 0:
        assert fast is not None and torch.equal(fast, ref.dequantize())
    else:
        assert fast is None


def test_int8x2_reference_by_hand():
    x = torch.tensor([[1.0, -0.5, 0.3, 0.0]])
    s = 1.0 / 127
    q1 = torch.round(x / s)
    fine = torch.round((x - q1 * s) / (s / cpu_kernels.FINE)).clamp(-127, 127)
    assert torch.allclose(cpu_kernels.int8x2_reference(x, 4), q1 * s + fine * s / cpu_kernels.FINE)
    assert (cpu_kernels.int8x2_reference(x, 4) - x).abs().max() < s / cpu_kernels.FINE
    assert cpu_kernels.int8x2_reference(torch.zeros(1, 4), 4).abs().max() == 0


@needs_kernel
def test_lowbit_kernel_float_path_and_threads_agree():
    torch.manual_seed(0)
    lin = nn.Linear(384, 200, bias=False)
    q, kern = _kernel_for("int2", lin, 128)
    x = torch.randn(2, 384)
    want_int8 = kern(x)
    kern.idx, kern.int8_activations = None, False  # no lane map: the float path, exact activations
    got = kern(x)
    assert torch.allclose(got, F.linear(x, q.dequantize()), rtol=1e-5, atol=1e-5 * float(got.abs().max()))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.allclose(kern(x), got, rtol=1e-6, atol=1e-6)
    finally:
        torch.set_num_threads(threads)
    if cpu_kernels.int8_path():  # int8 activations cost little: within 2% of the exact product
        assert (want_int8 - got).norm() / got.norm() < 0.02


@needs_kernel
@pytest.mark.parametrize("scheme", ["int4", "int3", "int2", "int1"])
def test_lowbit_int8_path_thread_split_and_many_rows(scheme):
    """Threads split the rows in whole blocks (bit-identical results); more rows than the int8 path takes go
    through the float path and equal the exact-activation reference."""
    torch.manual_seed(4)
    lin = nn.Linear(300, 203, bias=False)  # 203 rows: blocks of 4 plus a tail
    q, kern = _kernel_for(scheme, lin, 64)
    x = torch.randn(2, 300)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kern(x)
        torch.set_num_threads(3)
        assert torch.equal(kern(x), one)
    finally:
        torch.set_num_threads(threads)
    many = torch.randn(cpu_kernels.INT8_MAX_ROWS + 3, 300)
    want = F.linear(kern.reference_input(many), q.dequantize())
    assert torch.equal(kern.reference_input(many), many)
    assert torch.allclose(kern(many), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_int8_reference_by_hand():
    x = torch.tensor([[1.0, -2.0, 0.5, 0.0, 0.0, 0.0]])
    got = cpu_kernels.int8_reference(x, 3)
    s = 2.0 / 127
    assert torch.allclose(got[0, :3], torch.round(x[0, :3] / s) * s)
    assert got[0, 3:].tolist() == [0.0, 0.0, 0.0]  # an all-zero group stays zero


@needs_kernel
@pytest.mark.parametrize("scheme", ["int4", "int3", "int2", "ternary", "int1"])
def test_quant_linear_uses_the_kernel_and_keeps_bias(scheme):
    torch.manual_seed(1)
    lin = nn.Linear(256, 48, bias=True)
    q = QuantLinear.from_linear(lin, scheme, 64, zero_point=scheme == "int4")
    if scheme != "int4":
        assert q.kernel == "lowbit"
    x = torch.randn(2, 256)
    ref = q.forward_reference(q._lowbit.reference_input(x) if q._lowbit else x)
    assert torch.allclose(q(x), ref, rtol=2e-2, atol=2e-2 * float(ref.abs().max()))
    state = q.state_dict()
    q2 = QuantLinear(256, 48, scheme, 64, bias=True, zero_point=scheme == "int4")
    q2.load_state_dict(state)
    assert torch.equal(q2.codes(), q.codes()) and torch.equal(q2(x), q(x))


@needs_kernel
@pytest.mark.parametrize("scheme", ["int4", "int2"])
def test_lowbit_hot_path_shapes_dtypes_and_bias(scheme):
    """The decode hot path (bias added in C, no reshape/cast for float32) keeps shapes, dtypes and the bias."""
    torch.manual_seed(5)
    lin = nn.Linear(128, 33, bias=True)
    with torch.no_grad():
        lin.bias.uniform_(-2, 2)
    q = QuantLinear.from_linear(lin, scheme, 64, zero_point=scheme == "int4", kernel="lowbit")
    assert q.kernel == "lowbit"
    for shape, dtype in (((1, 1, 128), torch.float32), ((2, 3, 128), torch.float32), ((1, 128), torch.bfloat16)):
        x = torch.randn(shape).to(dtype)
        y = q(x)
        assert y.shape == shape[:-1] + (33,) and y.dtype == dtype
        xr = q._lowbit.reference_input(x.reshape(-1, 128).float())
        want = F.linear(xr, q.dequantize(), lin.bias.detach()).reshape(y.shape)
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        assert torch.allclose(y.float(), want, rtol=tol, atol=tol * float(want.abs().max()))
    with pytest.raises(ValueError, match="input features"):
        q._lowbit(torch.randn(1, 127))
    twin = copy.deepcopy(q)  # the C struct is rebuilt for the copy's own tensors
    assert twin._lowbit.weight.data_ptr() != q._lowbit.weight.data_ptr()
    x = torch.randn(1, 128)
    del q
    want = F.linear(twin._lowbit.reference_input(x), twin.dequantize(), lin.bias.detach())
    assert torch.allclose(twin(x), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


# ---- int1 / int3 ----------------------------------------------------------------------------------------

def test_int1_is_sign_times_mean_abs():
    w = torch.tensor([[0.5, -1.5, 1.0, -1.0]])
    alpha = init_alpha(w, "int1")
    assert alpha.flatten().tolist() == [1.0]  # mean |w|
    assert fake_quant(w, alpha, "int1").tolist() == [[1.0, -1.0, 1.0, -1.0]]
    codes, scale = quantize_codes(w, "int1")
    assert codes.tolist() == [[1, 0, 1, 0]] and scale.tolist() == [[2.0]]  # value = (code - 0.5)·2·alpha
    q = QuantLinear.from_linear(_linear(w), "int1")
    assert q.dequantize().tolist() == [[1.0, -1.0, 1.0, -1.0]]


def test_int3_lsq_levels_by_hand():
    w = torch.tensor([[-3.0, -1.4, 0.2, 0.6, 3.0, 1.6]])
    alpha = init_alpha(w, "int3")  # max|w| / 3
    assert alpha.flatten().tolist() == [1.0]
    assert fake_quant(w, alpha, "int3").tolist() == [[-3.0, -1.0, 0.0, 1.0, 3.0, 2.0]]
    codes, _ = quantize_codes(w, "int3")
    assert codes.tolist() == [[1, 3, 4, 5, 7, 6]]  # offset 4


def _linear(w: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin


# ---- QAT: the learned-scale gradient bit for bit as ParetoQ computes it in bfloat16 ------------------------

def _paretoq_grad_alpha(w, alpha, g, bits):
    """ParetoQ's backward (models/utils_quant.py), restated: masks `.float()`, so products and sum are float32."""
    if bits in (0, 2):
        n_levels, shift = (1.5, 0.0) if bits == 0 else (2.0, 0.5)
        qp = (n_levels - shift) / n_levels
        qn = -qp
        x = w / alpha
        small, big = (x < -0.99).float(), (x > 0.99).float()
        mid = 1.0 - small - big
        q = (torch.round(torch.clamp(x, -0.99, 0.99) * n_levels - shift) + shift) / n_levels
        gs = 1.0 / math.sqrt(w.numel() * (1 if bits == 0 else 2 ** (bits - 1) - 1))
        inner = mid * (-x + q)
    elif bits == 1:
        return (w.sign() * g * (1.0 / math.sqrt(w.numel()))).sum(-1, keepdim=True)
    else:
        qn, qp = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        x = w / alpha
        small, big = (x < qn).float(), (x > qp).float()
        mid = 1.0 - small - big
        gs = 1.0 / math.sqrt(w.numel() * qp)
        inner = mid * (-x + x.round())
    return ((small * qn + big * qp + inner) * g * gs).sum(-1, keepdim=True)


@pytest.mark.parametrize("bits,fn", [(4, LsqQuant), (3, LsqQuant), (2, StretchedElasticQuant),
                                     (0, StretchedElasticQuant), (1, SignQuant)])
def test_bf16_alpha_gradient_matches_paretoq_bit_for_bit(bits, fn):
    g = torch.Generator().manual_seed(bits)
    w = (torch.randn(64, 512, generator=g) * 0.05).bfloat16()
    scheme = {4: "int4", 3: "int3", 2: "int2", 0: "ternary", 1: "int1"}[bits]
    alpha = (init_alpha(w.float(), scheme) * 0.8).bfloat16().squeeze(-1)  # (64, 1); some weights beyond the clip
    grad_out = torch.randn(64, 512, generator=g).bfloat16()
    w_, a_ = w.clone().requires_grad_(), alpha.clone().requires_grad_()
    fn.apply(w_, a_, bits).backward(grad_out)
    want = _paretoq_grad_alpha(w, alpha, grad_out, bits).to(torch.bfloat16)
    assert a_.grad.dtype == torch.bfloat16
    assert torch.equal(a_.grad, want)
    if bits != 1:  # the float32 sum is what makes it exact: a bfloat16 one differs on many rows
        assert a_.grad.float().sub(want.float()).abs().max() == 0


# ---- LM head and embeddings ---------------------------------------------------------------------------------

def _tiny_qwen2(tied: bool):
    from videollm._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    t = pytest.importorskip("transformers")
    cfg = t.Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    torch.manual_seed(0)
    return t.Qwen2ForCausalLM(cfg).eval()


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("scheme", ["int8", "int4", "int2"])
def test_quantized_head_and_embeddings(tied, scheme, tmp_path):
    from videollm.quant import io as qio
    from videollm.quant import quantize_head

    model = _tiny_qwen2(tied)
    emb_w = model.get_input_embeddings().weight.detach().clone()
    names = quantize_head(model, scheme, group_size=32)
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    assert names == ["lm_head", "model.embed_tokens"]
    assert isinstance(head, QuantLinear) and isinstance(emb, QuantEmbedding) and emb.tied == tied
    ids = torch.tensor([[0, 5, 319, 5, 42]])
    rows = emb(ids)
    assert rows.shape == (1, 5, 64)
    assert torch.equal(rows[0], emb.table.dequantize(rows=ids[0]))
    assert torch.equal(emb.table.dequantize(rows=ids[0]), emb.table.dequantize()[ids[0]])  # row-wise decode
    if tied:
        assert emb.table is head
        assert not any(k.startswith("model.embed_tokens") for k in model.state_dict())  # stored once, as the head
    err = (rows[0] - emb_w[ids[0]]).norm() / emb_w[ids[0]].norm()
    assert err < {"int8": 0.02, "int4": 0.15, "int2": 0.5}[scheme]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    qio.save_module(model, tmp_path / "m")
    fresh = _tiny_qwen2(tied)
    qio.load_into(fresh, tmp_path / "m")
    assert isinstance(fresh.get_input_embeddings(), QuantEmbedding)
    if tied:
        assert fresh.get_input_embeddings().table is fresh.get_output_embeddings()
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, logits)
    with pytest.raises(IndexError):
        emb(torch.tensor([[320]]))


def test_int4_kernel_layout_rows_decode_without_the_rest():
    if packing.cpu_int4_kernel_block() is None:
        pytest.skip("unknown CPU int4 layout on this machine")
    torch.manual_seed(3)
    q = QuantLinear.from_linear(nn.Linear(128, 192, bias=False), "int4", 64, kernel="int4_cpu")
    assert q.kernel == "int4_cpu"
    rows = torch.tensor([0, 191, 33, 64, 33])
    assert torch.equal(q.codes(rows), q.codes()[rows])


# ---- int3's kernel layout ----------------------------------------------------------------------------------
def test_int3_kernel_layout_by_hand():
    """Position j's 8 codes in three bytes (b0 = c0 | c1<<3 | (c6&3)<<6, b1 = c2 | c3<<3 | (c7&3)<<6,
    b2 = c4 | c5<<3 | (c6>>2)<<6 | (c7>>2)<<7), each 64-position block's b0s, then b1s, then b2s."""
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 5]])
    b0 = 1 | 2 << 3 | (7 & 3) << 6
    b1 = 3 | 4 << 3 | (5 & 3) << 6
    b2 = 5 | 6 << 3 | (7 >> 2) << 6 | (5 >> 2) << 7
    assert packing.to_int3_kernel(codes, 1).tolist() == [[b0, b1, b2]]
    # 70 positions: a block of 64, then one of 6 (planes 6 bytes apart)
    wide = torch.zeros(1, 560, dtype=torch.long)
    wide[0, 64 * 8] = 7  # position 64 = the short block's first: b0 = 7 at 192, b1 at 198, b2 at 204
    out = packing.to_int3_kernel(wide, 70)
    assert out.shape == (1, 210) and out[0].nonzero().flatten().tolist() == [192]
    wide[0, 64 * 8 + 4] = 1  # c4 → b2
    assert packing.to_int3_kernel(wide, 70)[0].nonzero().flatten().tolist() == [192, 204]


@pytest.mark.parametrize("shape", [(3, 8), (5, 130), (2, 8 * 64), (4, 8 * 150 - 3)])
def test_int3_kernel_layout_round_trips(shape):
    torch.manual_seed(shape[1])
    codes = torch.randint(0, 8, shape)
    positions = -(-shape[1] // 8)
    packed = packing.to_int3_kernel(codes, positions)
    assert packed.shape == (shape[0], 3 * positions)
    assert torch.equal(packing.from_int3_kernel(packed, shape[1]).long(), codes)


@needs_kernel
def test_int3_layer_holds_only_the_kernel_layout_and_saves_the_checkpoint_one():
    """int3 on the low-bit kernel keeps one copy of its weight (the kernel layout, 3 bits a weight) and still
    gives the portable bit-sliced rows for saving, and the same codes as the reference layer."""
    torch.manual_seed(0)
    lin = nn.Linear(256, 24, bias=False)
    ref = QuantLinear.from_linear(lin, "int3", 64, kernel="dequant")
    q = QuantLinear.from_linear(lin, "int3", 64)
    if q.kernel != "lowbit":
        pytest.skip(f"int3 takes {q.kernel} here")
    assert q.qweight.numel() == 0 and q._kweight.shape == (24, 3 * 256 // 8)
    assert torch.equal(q.codes(), ref.codes())
    assert torch.equal(q.codes(torch.tensor([5, 0])), ref.codes()[[5, 0]])
    assert torch.equal(q.portable_qweight(), ref.qweight)
