"""Packing, ParetoQ quantizers and QuantLinear: exact round trips, hand-computed cases, kernels vs oracle."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from videollm.errors import InvalidRequestError
from videollm.quant import Int4WeightConfig, QuantLinear, WeightQuantConfig, packing, quantize_
from videollm.quant.paretoq import (
    LsqQuant,
    StretchedElasticQuant,
    dequantize_codes,
    fake_quant,
    init_alpha,
    quantize_codes,
    quantize_int4_asym,
)


@pytest.mark.parametrize("width,levels", [(8, 256), (4, 16), (3, 8), (2, 4), ("ternary", 3), (1, 2)])
@pytest.mark.parametrize("k", [1, 5, 37, 128])
def test_pack_round_trip_exact(width, levels, k):
    g = torch.Generator().manual_seed(k)
    if width == 8:
        codes = torch.randint(-128, 128, (7, k), generator=g).to(torch.int8)
    else:
        codes = torch.randint(0, levels, (7, k), generator=g).to(torch.uint8)
    packed = packing.pack(codes, width)
    assert packed.shape == (7, packing.packed_cols(k, width))
    assert torch.equal(packing.unpack(packed, width, k).to(codes.dtype), codes)


def test_pack_sizes_and_bit_layout():
    assert packing.pack_int4(torch.tensor([[1, 2]], dtype=torch.uint8)).tolist() == [[0x21]]
    assert packing.pack_int2(torch.tensor([[1, 2, 3, 0]], dtype=torch.uint8)).tolist() == [[1 | 2 << 2 | 3 << 4]]
    assert packing.pack_ternary(torch.tensor([[2, 1, 0, 0, 1]], dtype=torch.uint8)).tolist() == [[2 + 3 + 81]]
    codes = torch.zeros(4, 1000, dtype=torch.uint8)
    assert packing.pack(codes, "ternary").numel() == 4 * 200  # 1.6 bits per weight
    with pytest.raises(ValueError):
        packing.pack_int2(torch.tensor([[4]], dtype=torch.uint8))
    assert packing.pack_int1(torch.tensor([[1, 0, 1, 1, 0, 0, 0, 1]], dtype=torch.uint8)).tolist() == [[0b10001101]]
    # int3 = the low two bits packed as int2, then the high bit as int1
    c3 = torch.tensor([[5, 2, 7, 0]], dtype=torch.uint8)
    assert packing.pack_int3(c3).tolist() == [[1 | 2 << 2 | 3 << 4, 0b0101]]
    assert packing.pack(torch.zeros(4, 1000, dtype=torch.uint8), 1).numel() == 4 * 125  # 1 bit per weight
    assert packing.pack(torch.zeros(4, 1000, dtype=torch.uint8), 3).numel() == 4 * 375  # 3 bits per weight


@pytest.mark.parametrize("width,levels", [(4, 16), (2, 4), ("ternary", 3), (1, 2)])
def test_byte_table_unpacks_like_unpack(width, levels):
    codes = torch.randint(0, levels, (5, 40), generator=torch.Generator().manual_seed(2)).to(torch.uint8)
    packed = packing.pack(codes, width)
    via_table = packing.byte_table(width)[packed.long()].reshape(5, -1)[:, :40]
    assert torch.equal(via_table, codes)


def test_cpu_int4_kernel_layout_inverts():
    if packing.cpu_int4_kernel_block() is None:
        pytest.skip("unknown CPU int4 layout on this machine")
    codes = torch.randint(0, 16, (128, 96), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    kernel = packing.to_cpu_int4_kernel(codes)
    assert torch.equal(packing.from_cpu_int4_kernel(kernel, 128, 96), codes)


# ---- quantizers on hand-computed cases --------------------------------------------------------------------

def test_int4_lsq_codes_by_hand():
    w = torch.tensor([[0.7, -0.35, 0.1, -0.7]])
    codes, scale = quantize_codes(w, "int4", search=False)  # ParetoQ's init: alpha = max|w| / 7
    assert torch.allclose(scale, torch.tensor([[0.1]]))
    assert codes.tolist() == [[15, 4, 9, 1]]  # round(7, -3.5→-4, 1, -7) + 8
    assert torch.allclose(dequantize_codes(codes, scale, "int4"), torch.tensor([[0.7, -0.4, 0.1, -0.7]]))


def test_int8_codes_by_hand():
    codes, scale = quantize_codes(torch.tensor([[1.27, -0.5, 0.0]]), "int8")
    assert codes.dtype == torch.int8 and codes.tolist() == [[127, -50, 0]]
    assert math.isclose(float(scale), 0.01, rel_tol=1e-6)


def test_int2_seq_levels_by_hand():
    w = torch.tensor([[1.0, 0.6, -0.1, -1.0]])
    codes, scale = quantize_codes(w, "int2", search=False)
    assert codes.tolist() == [[3, 3, 1, 0]]
    assert torch.allclose(dequantize_codes(codes, scale, "int2"), torch.tensor([[0.75, 0.75, -0.25, -0.75]]))
    alpha = init_alpha(w, "int2")
    assert torch.allclose(fake_quant(w, alpha, "int2"), torch.tensor([[0.75, 0.75, -0.25, -0.75]]))


def test_ternary_seq_levels_by_hand():
    w = torch.tensor([[0.9, 0.2, -0.4, -0.9]])
    codes, scale = quantize_codes(w, "ternary", search=False)
    assert codes.tolist() == [[2, 1, 0, 0]]  # |w/alpha| < 1/3 → 0
    assert torch.allclose(dequantize_codes(codes, scale, "ternary"), torch.tensor([[0.6, 0.0, -0.6, -0.6]]))


def test_group_alphas_are_per_group():
    w = torch.cat([torch.full((1, 4), 0.7), torch.full((1, 4), 0.07)], dim=1)
    alpha = init_alpha(w, "int4", group_size=4)
    assert alpha.shape == (1, 2, 1)
    assert torch.allclose(alpha.flatten(), torch.tensor([0.1, 0.01]))
    codes, scale = quantize_codes(w, "int4", group_size=4, search=False)
    assert torch.allclose(dequantize_codes(codes, scale, "int4"), w)


def test_mse_search_never_worse_than_max_init():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0)) ** 3  # heavy-tailed, like LLM weights
    for scheme in ("int4", "int2", "ternary"):
        errs = []
        for search in (False, True):
            codes, scale = quantize_codes(w, scheme, group_size=128, search=search)
            errs.append(float((dequantize_codes(codes, scale, scheme) - w).square().sum()))
        assert errs[1] < errs[0]


def test_lsq_gradients_by_hand():
    w = torch.tensor([[0.05, 0.3]], requires_grad=True)
    alpha = torch.tensor([[0.1]], requires_grad=True)
    LsqQuant.apply(w, alpha, 2).sum().backward()  # Qn=-2, Qp=1; x = [0.5 (mid), 3 (above)]
    assert w.grad.tolist() == [[1.0, 0.0]]
    expected = (round(0.5) - 0.5 + 1.0) / math.sqrt(2 * 1)  # (round(x)-x) + Qp, times 1/sqrt(numel·Qp)
    assert math.isclose(float(alpha.grad), expected, rel_tol=1e-5)


def test_seq_gradients_by_hand():
    w = torch.tensor([[0.5, 2.0]], requires_grad=True)
    alpha = torch.tensor([[1.0]], requires_grad=True)
    out = StretchedElasticQuant.apply(w, alpha, 0)
    assert torch.allclose(out, torch.tensor([[2 / 3, 2 / 3]]))
    out.sum().backward()
    assert w.grad.tolist() == [[1.0, 0.0]]
    expected = ((2 / 3 - 0.5) + 1.0) / math.sqrt(2)  # mid: q(x)-x; above the clip: Qp' = 1 for ternary
    assert math.isclose(float(alpha.grad), expected, rel_tol=1e-5)


# ---- QuantLinear ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["int8", "int4", "int3", "int2", "ternary", "int1"])
@pytest.mark.parametrize("shape", [(96, 256), (100, 200)])
def test_quant_linear_matches_oracle_and_shrinks(scheme, shape):
    from videollm.quant import cpu_kernels

    n, k = shape
    torch.manual_seed(0)
    lin = nn.Linear(k, n, bias=True)
    q = QuantLinear.from_linear(lin, scheme, group_size=64)
    ref = QuantLinear.from_linear(lin, scheme, group_size=64, kernel="dequant")
    assert ref.kernel == "dequant"
    if scheme == "int8":  # our kernel where it has its int8 (VNNI) path, else PyTorch's (row counts it takes)
        if cpu_kernels.int8_path():
            assert q.kernel == "lowbit"
        elif n % 32 == 0:
            assert q.kernel == "int8_cpu"  # the fast kernel is really in use
    if scheme == "int4":  # our kernel where it has its int8 (VNNI) path, else PyTorch's
        assert q.kernel == ("lowbit" if cpu_kernels.int8_path() else "int4_cpu")
    if scheme in ("int3", "int2", "ternary", "int1"):
        assert q.kernel == ("lowbit" if cpu_kernels.available() else "dequant" if scheme == "int3" else "lut")
    x = torch.randn(3, k)
    y, y_ref = q(x), ref.forward_reference(x)
    assert torch.allclose(y, y_ref, rtol=2e-2, atol=2e-2 * float(y_ref.abs().max()))
    assert torch.equal(q.dequantize(), ref.dequantize())
    float_bytes = (n * k + n) * 4
    # ternary: 1.6 bits packed, 2 in the low-bit kernel's layout
    ternary_bits = 2 if q.kernel == "lowbit" else 1.6
    bits = {"int8": 8, "int4": 4, "int3": 3, "int2": 2, "ternary": ternary_bits, "int1": 1}[scheme]
    rows = math.ceil(n / 64) * 64 if q.kernel == "int4_cpu" else n  # the CPU int4 kernel's row blocks
    overhead = n * 4 + rows * 3 * 2 * math.ceil(k / 64)  # float32 bias + bfloat16 scales (+ kernel scale/zero)
    assert q.weight_bytes() <= rows * math.ceil(k / 64) * 64 * bits / 8 + overhead + 2 * n
    assert q.weight_bytes() < float_bytes / 2
    rel = (y_ref - lin(x)).norm() / lin(x).norm()
    assert rel < {"int8": 0.02, "int4": 0.15, "int3": 0.3, "int2": 0.45, "ternary": 0.5, "int1": 0.7}[scheme]


def test_quant_linear_dense_path_for_many_rows_matches():
    lin = nn.Linear(128, 64)
    q = QuantLinear.from_linear(lin, "int4", group_size=32)
    x = torch.randn(2, 40, 128)  # more rows than DENSE_ROWS: dequantize + GEMM
    assert torch.allclose(q(x), q.forward_reference(x))


def test_quantize_filter_and_errors():
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    names = quantize_(m, WeightQuantConfig("int2", group_size=32), filter_fn=lambda mod, n: n != "2")
    assert names == ["0"] and isinstance(m[0], QuantLinear) and type(m[2]) is nn.Linear
    with pytest.raises(InvalidRequestError):
        WeightQuantConfig("int5")
    with pytest.raises(InvalidRequestError):
        WeightQuantConfig("int4", backend="tensorrt")


# ---- asymmetric int4 (per-group scale + zero point) -------------------------------------------------------

def test_int4_asym_codes_by_hand():
    # group 1: [-1, 14] → scale 1, zero = -1 + 8·1 = 7; group 2 (all positive): [0.5, 8] → scale 0.5, zero 4.5
    w = torch.tensor([[-1.0, 0.4, 2.6, 14.0, 0.5, 1.2, 3.0, 8.0]])
    codes, scale, zero = quantize_int4_asym(w, group_size=4)
    assert scale.tolist() == [[1.0, 0.5]] and zero.tolist() == [[7.0, 4.5]]
    assert codes.tolist() == [[0, 1, 4, 15, 0, 1, 5, 15]]  # round((w - zero)/scale) + 8
    deq = dequantize_codes(codes, scale, "int4", zero=zero)  # (code - 8)·scale + zero
    assert deq.tolist() == [[-1.0, 0.0, 3.0, 14.0, 0.5, 1.0, 3.0, 8.0]]
    # the symmetric grid spends half its levels on the empty negative side of group 2
    sc, ss = quantize_codes(w, "int4", group_size=4)
    assert (dequantize_codes(sc, ss, "int4") - w)[:, 4:].abs().max() > (deq - w)[:, 4:].abs().max()


def test_int4_asym_constant_and_padded_groups_are_exact():
    w = torch.tensor([[0.25, 0.25, 0.25, 0.25, 0.0, 0.0, 0.0, 0.0, -2.0]])  # K=9 → padded to 12
    codes, scale, zero = quantize_int4_asym(w, group_size=4)
    assert codes.shape == (1, 12)
    assert torch.equal(dequantize_codes(codes, scale, "int4", zero=zero)[:, :9], w)


def test_int4_asym_beats_symmetric_and_clip_search_lowers_mse():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g) ** 3 + torch.rand(64, 1, generator=g)  # heavy tails, shifted rows
    sc, ss = quantize_codes(w, "int4", group_size=64)
    err_sym = float((dequantize_codes(sc, ss, "int4") - w).square().sum())
    errs = []
    for search in (False, True):
        c, s, z = quantize_int4_asym(w, group_size=64, clip_search=search)
        errs.append(float((dequantize_codes(c, s, "int4", zero=z) - w).square().sum()))
    assert errs[0] < err_sym and errs[1] < errs[0]


def test_cpu_int4_kernel_zero_point_convention():
    """aten::_weight_int4pack_mm_for_cpu computes (q - 8)·scale + zero, zero in the dequantized domain."""
    if packing.cpu_int4_kernel_block() is None:
        pytest.skip("unknown CPU int4 layout on this machine")
    g = torch.Generator().manual_seed(0)
    n, k, gs = 64, 128, 32
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.int32)
    scale = (torch.rand(n, k // gs, generator=g) * 0.1 + 0.01).bfloat16()
    zero = (torch.randn(n, k // gs, generator=g) * 0.3).bfloat16()
    sz = torch.stack((scale.t(), zero.t()), dim=-1).contiguous()
    x = torch.randn(3, k, generator=g).bfloat16()
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packing.to_cpu_int4_kernel(codes), gs, sz).float()
    ref = x.float() @ dequantize_codes(codes, scale.float(), "int4", zero=zero.float()).t()
    assert (y - ref).abs().max() < 1e-2 * ref.abs().max()
    minus = x.float() @ dequantize_codes(codes, scale.float(), "int4", zero=-zero.float()).t()
    assert (y - minus).abs().max() > 0.1 * ref.abs().max()  # the sign of the zero really is tested


@pytest.mark.parametrize("shape,group,kernel", [((96, 256), 64, "int4_cpu"), ((100, 200), 64, "int4_cpu"),
                                                 ((40, 96), 48, "lowbit"), ((100, 200), 64, "lowbit")])
def test_asym_quant_linear_kernels_match_oracle(shape, group, kernel):
    from videollm.quant import cpu_kernels

    if kernel == "lowbit" and not cpu_kernels.available():
        kernel = "lut"  # groups PyTorch's int4 kernel does not take, without a C compiler
    n, k = shape
    torch.manual_seed(1)
    lin = nn.Linear(k, n, bias=True)
    with torch.no_grad():
        lin.weight.add_(torch.rand(n, 1) * 0.05)  # rows off-centre: where zero points matter
    q = QuantLinear.from_linear(lin, "int4", group_size=group, zero_point=True,
                                kernel=kernel if kernel != "lut" else "auto")
    ref = QuantLinear.from_linear(lin, "int4", group_size=group, zero_point=True, kernel="dequant")
    if kernel == "int4_cpu" and packing.cpu_int4_kernel_block() is None:
        pytest.skip("unknown CPU int4 layout on this machine")
    assert q.kernel == kernel and ref.kernel == "dequant" and q.zero is not None
    assert torch.equal(q.dequantize(), ref.dequantize())  # codes survive the kernel layout exactly
    x = torch.randn(3, k)
    y, y_ref = q(x), ref.forward_reference(x)
    assert torch.allclose(y, y_ref, rtol=2e-2, atol=2e-2 * float(y_ref.abs().max()))
    sym = QuantLinear.from_linear(lin, "int4", group_size=group)
    with torch.no_grad():
        want = lin(x)
        assert (ref.forward_reference(x) - want).norm() < (sym.forward_reference(x) - want).norm()
    x40 = torch.randn(40, k)  # more rows than DENSE_ROWS: dequantize + GEMM, zero points included
    assert torch.equal(q(x40), ref.forward_reference(x40))


def test_asym_state_dict_round_trip_is_bit_identical(tmp_path):
    from videollm.quant import io as qio

    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(128, 96), nn.ReLU(), nn.Linear(96, 64, bias=False), nn.Linear(64, 40))
    quantize_(m, Int4WeightConfig(group_size=32))
    assert all(isinstance(m[i], QuantLinear) and m[i].zero is not None for i in (0, 2, 3))
    qio.save_module(m, tmp_path / "q")
    assert qio.read_manifest(tmp_path / "q")["layers"]["0"]["zero_point"] is True
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "q" / qio.WEIGHTS))
    assert {"0.qweight", "0.scale", "0.zero", "0.bias", "2.zero"} <= set(saved)
    fresh = nn.Sequential(nn.Linear(128, 96), nn.ReLU(), nn.Linear(96, 64, bias=False), nn.Linear(64, 40))
    qio.load_into(fresh, tmp_path / "q")
    assert fresh[3].kernel == m[3].kernel and fresh[0].zero is not None
    for x in (torch.randn(2, 128), torch.randn(50, 128)):  # kernel path and dense path
        assert torch.equal(fresh(x), m(x))
    assert torch.equal(fresh[0].zero, m[0].zero)


def test_int4_config_default_is_asymmetric_symmetric_by_option():
    assert Int4WeightConfig().symmetric is False and Int4WeightConfig().zero_point
    assert WeightQuantConfig("int8").symmetric is True and WeightQuantConfig("int2").symmetric is True
    m = nn.Sequential(nn.Linear(64, 64))
    quantize_(m, Int4WeightConfig(group_size=32, symmetric=True))
    assert m[0].zero is None
    assert set(m.state_dict()) == {"0.qweight", "0.scale", "0.bias"}
    with pytest.raises(InvalidRequestError):
        WeightQuantConfig("int2", symmetric=False)
    with pytest.raises(InvalidRequestError):
        Int4WeightConfig(symmetric=True, clip_search=True)


def test_int1_all_zero_row_starts_at_the_clamp_paretoq_applies():
    """docs/quant.md: ParetoQ stores mean|w| = 0 for an all-zero row and clamps it to 1e-5 in every forward;
    we store the clamped 1e-5, so the fake-quant, the alpha gradient and the packed row agree with it."""
    w = torch.randn(3, 64)
    w[1] = 0.0
    alpha = init_alpha(w, "int1")
    assert alpha[1].item() == pytest.approx(1e-5) and alpha[0].item() == pytest.approx(w[0].abs().mean().item())
    paretoq_alpha = w.abs().mean(dim=-1, keepdim=True)  # what ParetoQ stores: 0 for the zero row
    assert paretoq_alpha[1].item() == 0.0
    clamped = torch.where(paretoq_alpha > 1e-5, paretoq_alpha, torch.full_like(paretoq_alpha, 1e-5))
    a_ours, a_pq = alpha.reshape(3, 1).clone().requires_grad_(), paretoq_alpha.clone().requires_grad_()
    out_ours = fake_quant(w, a_ours.reshape(3, 1, 1), "int1")
    out_pq = fake_quant(w, a_pq.reshape(3, 1, 1), "int1")  # SignQuant clamps as ParetoQ's forward does
    assert torch.equal(out_ours, out_pq) and torch.equal(out_ours, w.sign() * clamped)
    g = torch.randn(3, 64)
    (out_ours * g).sum().backward()
    (out_pq * g).sum().backward()
    assert torch.allclose(a_ours.grad, a_pq.grad)
    q = QuantLinear.from_linear(_linear_with(w), "int1", kernel="reference")
    assert torch.allclose(q.dequantize()[1], torch.full((64,), 1e-5), rtol=0.01, atol=0)  # + (bf16 scale)


def _linear_with(w: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin
