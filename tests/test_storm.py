"""STORM: the reference scan against a step loop (and the CUDA kernel on a GPU), the encoder's identity at
init, pooling/sampling choices under a budget, and checkpoints."""
import json
import math

import pytest
import torch

from videollm.compressors import create_compressor
from videollm.compressors.mamba_scan import cuda_selective_scan, selective_scan_loop, selective_scan_ref
from videollm.compressors.storm import (
    SelectiveMixer,
    StormCompressor,
    StormConfig,
    StormEncoder,
    plan_reduction,
    temporal_average,
)
from videollm.errors import InvalidRequestError
from videollm.video import Video


def scan_inputs(seed=0, b=2, d=6, L=29, n=4, b_shape="shared", c_shape="grouped"):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    shapes = {"shared": (b, n, L), "grouped": (b, 2, n, L), "constant": (d, n)}
    return dict(u=r(b, d, L), delta=0.5 * r(b, d, L), A=-2 * torch.rand(d, n, generator=g), B=r(*shapes[b_shape]),
                C=r(*shapes[c_shape]))


@pytest.mark.parametrize("b_shape,c_shape", [("shared", "shared"), ("grouped", "shared"), ("constant", "grouped")])
@pytest.mark.parametrize("extras", [{}, {"D": True}, {"z": True}, {"delta_bias": True, "delta_softplus": True},
                                    {"D": True, "z": True, "delta_bias": True, "delta_softplus": True}])
def test_reference_scan_chunked_equals_unchunked_equals_step_loop(b_shape, c_shape, extras):
    x = scan_inputs(b_shape=b_shape, c_shape=c_shape)
    b, d, L = x["u"].shape
    kw = {}
    if extras.get("D"):
        kw["D"] = torch.randn(d)
    if extras.get("z"):
        kw["z"] = torch.randn(b, d, L)
    if extras.get("delta_bias"):
        kw["delta_bias"] = torch.randn(d)
    if extras.get("delta_softplus"):
        kw["delta_softplus"] = True
    y0, h0 = selective_scan_loop(**x, **kw, return_last_state=True)
    for chunk in (None, 1, 4, 7, 64):
        y, h = selective_scan_ref(**x, **kw, return_last_state=True, chunk_size=chunk)
        torch.testing.assert_close(y, y0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h, h0, rtol=1e-5, atol=1e-5)
    assert y0.abs().max() > 0  # a real signal, not all zeros


def test_reference_scan_carries_state_across_calls():
    x = scan_inputs(L=40)
    y_full, h_full = selective_scan_ref(**x, return_last_state=True)
    first = {k: (v[..., :17] if v.dim() >= 3 else v) for k, v in x.items()}
    second = {k: (v[..., 17:] if v.dim() >= 3 else v) for k, v in x.items()}
    y1, h1 = selective_scan_ref(**first, return_last_state=True)
    y2, h2 = selective_scan_ref(**second, return_last_state=True, initial_state=h1)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y_full)
    torch.testing.assert_close(h2, h_full)


def test_reference_scan_keeps_dtype_and_computes_state_in_fp32():
    x = {k: v.to(torch.bfloat16) for k, v in scan_inputs().items()}
    x["A"] = x["A"].float()
    y, h = selective_scan_ref(**x, return_last_state=True)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32


def test_mixer_matches_transformers_mamba_mixer():
    """Same parameter names and semantics as transformers' MambaMixer (its pure-PyTorch path)."""
    from videollm._compat import require

    transformers = require("transformers")
    torch.manual_seed(0)
    ours = SelectiveMixer(16, d_state=4, d_conv=4, expand=2)
    torch.nn.init.normal_(ours.out_proj.weight, std=0.2)
    with torch.no_grad():
        ours.A_log.add_(0.1 * torch.randn_like(ours.A_log))
    cfg = transformers.MambaConfig(hidden_size=16, state_size=4, conv_kernel=4, expand=2, time_step_rank=ours.dt_rank,
                                   use_bias=False, use_conv_bias=True, num_hidden_layers=1)
    theirs = transformers.models.mamba.modeling_mamba.MambaMixer(cfg, layer_idx=0)
    missing = theirs.load_state_dict(ours.state_dict(), strict=True)
    assert not missing.missing_keys
    x = torch.randn(2, 23, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_untrained_encoder_is_an_exact_identity(causal):
    enc = StormEncoder(32, StormConfig(num_layers=2, causal=causal))
    x = torch.randn(5, 3, 4, 32)
    with torch.no_grad():
        assert torch.equal(enc(x), x)
    assert all(m.bwd is None for m in enc.layers) == causal


def test_trained_encoder_mixes_across_frames_in_both_directions():
    enc = StormEncoder(8, StormConfig(num_layers=1))
    for m in enc.mixers():
        torch.nn.init.normal_(m.out_proj.weight, std=0.5)
    x = torch.randn(4, 2, 2, 8)
    x2 = x.clone()
    x2[3] += torch.randn(2, 2, 8)  # change only the last frame (not by a constant: LayerNorm removes that)
    with torch.no_grad():
        diff = (enc(x2) - enc(x)).abs().sum(dim=(1, 2, 3))
    assert diff[0] > 0, "the backward scan must carry the last frame's change to the first"
    causal = StormEncoder(8, StormConfig(num_layers=1, causal=True))
    for m in causal.mixers():
        torch.nn.init.normal_(m.out_proj.weight, std=0.5)
    with torch.no_grad():
        cdiff = (causal(x2) - causal(x)).abs().sum(dim=(1, 2, 3))
    assert torch.all(cdiff[:3] == 0) and cdiff[3] > 0, "a causal encoder must not look ahead"


# -- the reduction plan ----------------------------------------------------------------------------

@pytest.mark.parametrize("frames", [1, 3, 8, 13, 32, 128])
@pytest.mark.parametrize("budget", [1, 2, 7, 16, 50, 196, 1000, 6272, None])
def test_plan_always_fits_the_budget(frames, budget):
    p = plan_reduction(frames, (14, 14), budget)
    if budget is not None:
        assert 1 <= p.tokens <= budget
    assert p.groups == math.ceil(frames / p.temporal_pool)
    assert p.kept_groups == math.ceil(p.groups / p.sample_stride)


def test_plan_follows_the_papers_order():
    # no budget: nothing is reduced
    assert plan_reduction(32, (14, 14), None).tokens == 32 * 196
    # temporal pooling first, smallest k that fits
    p = plan_reduction(32, (14, 14), 16 * 196)
    assert (p.temporal_pool, p.sample_stride, p.grid) == (2, 1, (14, 14))
    # then spatial pooling, down to a quarter of the native tokens
    p = plan_reduction(32, (14, 14), 8 * 64)
    assert p.temporal_pool == 4 and p.sample_stride == 1 and p.grid[0] * p.grid[1] == 64
    # then test-time sampling
    p = plan_reduction(32, (14, 14), 4 * 49)
    assert p.temporal_pool == 4 and p.sample_stride == 2 and p.grid == (7, 7)


def test_plan_respects_fixed_options_and_refuses_impossible_ones():
    p = plan_reduction(32, (14, 14), 1024, temporal_pool=1, sample_stride=1)
    assert (p.temporal_pool, p.sample_stride) == (1, 1) and p.grid[0] * p.grid[1] <= 32
    p = plan_reduction(32, (14, 14), 1024, spatial_pool="14x14", sample_stride=1)
    assert p.grid == (14, 14) and p.temporal_pool == 7  # only k was free: ceil(32/7) = 5 frames of 196 fit 1024
    with pytest.raises(InvalidRequestError, match="cannot fit"):
        plan_reduction(32, (14, 14), 100, temporal_pool=1, sample_stride=1, spatial_pool=196)
    assert plan_reduction(8, (14, 14), None, spatial_pool=64).grid == (8, 8)
    with pytest.raises(InvalidRequestError, match="spatial_pool"):
        plan_reduction(8, (14, 14), None, spatial_pool="big")


def test_temporal_average_handles_a_short_last_group():
    x = torch.arange(5.0).view(5, 1, 1, 1)
    assert temporal_average(x, 2).flatten().tolist() == [0.5, 2.5, 4.0]


# -- the compressor on a backbone --------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip():
    g = torch.Generator().manual_seed(1)
    return Video.from_frames(torch.randint(0, 256, (10, 48, 64, 3), dtype=torch.uint8, generator=g), fps=2.0)


def test_untrained_storm_with_k_s_1_equals_uniform(tiny_backbone, clip):
    a = create_compressor("storm", tiny_backbone, temporal_pool=1, sample_stride=1)(clip)
    b = create_compressor("uniform", tiny_backbone)(clip)
    assert torch.equal(a.embeds, b.embeds)
    assert torch.equal(a.frame_ids, b.frame_ids) and torch.equal(a.patch_ids, b.patch_ids)


def test_storm_pools_what_the_budget_needs_and_says_so(tiny_backbone, clip):
    per = tiny_backbone.tokens_per_frame
    comp = create_compressor("storm", tiny_backbone)
    out = comp(clip, budget=3 * per)
    assert out.num_tokens == 3 * per  # 10 frames, k=4 → 3 pooled frames at full grid
    assert out.stats["temporal_pool"] == 4 and out.stats["sample_stride"] == 1
    assert out.kept_frames == [0, 4, 8]
    uni = create_compressor("uniform", tiny_backbone)(clip)
    expected = uni.embeds.view(10, per, -1)[0:4].mean(0)  # identity encoder: a plain average of frames 0..3
    torch.testing.assert_close(out.embeds[:per], expected)
    out = create_compressor("storm", tiny_backbone, sample_stride=2, temporal_pool=2)(clip)
    assert out.kept_frames == [0, 4, 8] and out.stats["kept_pooled_frames"] == 3


def test_storm_options_are_checked(tiny_backbone):
    with pytest.raises(InvalidRequestError, match="placement"):
        create_compressor("storm", tiny_backbone, placement="middle")
    with pytest.raises(InvalidRequestError, match="temporal_pool"):
        create_compressor("storm", tiny_backbone, temporal_pool=0)
    with pytest.raises(InvalidRequestError, match="trained first"):
        create_compressor("storm", tiny_backbone, placement="pre_projector")
    with pytest.raises(InvalidRequestError, match="no STORM checkpoint"):
        create_compressor("storm", tiny_backbone, weights="/nonexistent/dir")


def test_pre_projector_placement_runs_on_vision_features(tiny_backbone, clip):
    comp = StormCompressor(tiny_backbone, StormConfig(placement="pre_projector"), untrained_ok=True)
    assert comp.encoder.input_proj.in_features == 4 * tiny_backbone.encode_frames(
        torch.zeros(1, 32, 32, 3, dtype=torch.uint8)).shape[-1]
    out = comp(clip, budget=40)
    assert out.num_tokens <= 40 and out.embeds.shape[1] == tiny_backbone.hidden_size


def test_save_and_load_round_trip(tiny_backbone, clip, tmp_path):
    comp = create_compressor("storm", tiny_backbone, num_layers=2, temporal_pool=2)
    for m in comp.encoder.mixers():
        torch.nn.init.normal_(m.out_proj.weight, std=0.1)
    before = comp(clip, budget=200)
    comp.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert saved["compressor"] == "storm" and saved["config"]["num_layers"] == 2
    loaded = create_compressor("storm", tiny_backbone, weights=str(tmp_path / "ckpt"))
    assert loaded.trained and loaded.config.num_layers == 2 and loaded.config.temporal_pool == 2
    after = loaded(clip, budget=200)
    assert torch.equal(before.embeds, after.embeds)
    assert after.stats["encoder"] == "trained"
    # inference options may change; architecture options may not
    assert (
        create_compressor("storm", tiny_backbone, weights=str(tmp_path / "ckpt"), sample_stride=2).config.sample_stride
        == 2
    )
    with pytest.raises(InvalidRequestError, match="conflicts"):
        create_compressor("storm", tiny_backbone, weights=str(tmp_path / "ckpt"), num_layers=3)
    again = StormCompressor.from_pretrained(tmp_path / "ckpt", tiny_backbone)
    assert torch.equal(again(clip, budget=200).embeds, before.embeds)
    # dtype move: the module moves like any nn.Module and still runs (scan state stays fp32)
    half = again.to(torch.bfloat16)
    assert next(half.encoder.parameters()).dtype == torch.bfloat16
    out = half(clip, budget=200)
    torch.testing.assert_close(out.embeds.float(), before.embeds.float(), rtol=0.05, atol=0.05)


def test_weights_for_another_width_are_refused(tiny_backbone, tmp_path):
    from safetensors.torch import save_file

    other = StormEncoder(16, StormConfig())
    (tmp_path / "config.json").write_text(json.dumps({"compressor": "storm", "config": {}}))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(InvalidRequestError, match="do not fit"):
        create_compressor("storm", tiny_backbone, weights=str(tmp_path))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernel_matches_reference(dtype):
    kernel = cuda_selective_scan()
    if kernel is None:
        pytest.skip("mamba-ssm is not installed")
    x = scan_inputs(b=2, d=64, L=1000, n=16, b_shape="shared", c_shape="shared")
    x = {k: v.cuda() for k, v in x.items()}
    for k in ("u", "delta", "B", "C"):
        x[k] = x[k].to(dtype)
    D, z, bias = torch.randn(64, device="cuda"), torch.randn(2, 64, 1000, device="cuda", dtype=dtype), \
        torch.randn(64, device="cuda")
    y_k = kernel(x["u"], x["delta"], x["A"], x["B"], x["C"], D, z, bias, True)
    y_r = selective_scan_ref(**x, D=D, z=z, delta_bias=bias, delta_softplus=True)
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(y_k.float(), y_r.float(), rtol=tol, atol=tol)


def test_pooling_alone_forgets_order_inside_a_window_and_the_encoder_does_not(tiny_backbone):
    """The toy task's premise: the same frames in another order pool to the same tokens unless STORM mixes them."""
    import numpy as np

    from videollm.synthetic import flash_order_clip

    frames = torch.from_numpy(flash_order_clip(True, np.random.default_rng(0)))
    swapped = frames[[3, 2, 1, 0]]  # reversed: the flashes now come in the other order
    clips = [Video.from_frames(f, fps=4.0) for f in (frames, swapped)]
    plain = create_compressor("storm", tiny_backbone, temporal_pool=4, sample_stride=1)
    a, b = (plain(c).embeds for c in clips)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for m in plain.encoder.mixers():
        torch.nn.init.normal_(m.out_proj.weight, std=0.1)
    a, b = (plain(c).embeds for c in clips)
    assert (a - b).abs().max() > 1e-3
