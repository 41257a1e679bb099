"""STORM (arXiv 2503.04130): a bidirectional Mamba temporal encoder before temporal/spatial pooling and sampling.

The encoder mixes information across all frames' tokens, flattened in (frame, row, col) order, *before*
tokens are dropped, so that averaging k consecutive frames (temporal pooling), average-pooling each frame to
a smaller grid (spatial pooling) and keeping every s-th pooled frame (test-time sampling) lose little.
Each layer is pre-norm residual: `x + fwd(LN(x)) + flip(bwd(flip(LN(x))))` (`causal=True`: forward only).
Output projections start at zero, so an untrained encoder is an exact identity and the pooling/sampling
run training-free; the encoder only helps once trained (`videollm train storm`, see docs/storm.md).

The mixer is written here rather than taken from transformers' `MambaMixer`: its CPU path materialises
d_inner x L x d_state floats (about 700 MiB at 32 frames x 196 tokens), while ours calls `mamba_scan`, which
chunks the sequence on CPU and uses mamba-ssm's fused kernel on CUDA. Parameter names, shapes and
initialisation follow `MambaMixer` / mamba-ssm's `Mamba` so weights load either way (the tests check
that both produce the same output from the same weights).

Placement: `post_projector` (default) runs on the backbone's own LLM-space tokens: nothing of the frozen
backbone is replaced. `pre_projector` is the paper's: 2x2 pixel-unshuffle of the vision tower's features,
a new Linear to the LLM width in place of the projector, then the encoder; it must be trained first.
"""
from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from videollm.errors import InvalidRequestError
from videollm.options import non_defaults
from videollm.protocols import SupportsProjectorSwap, VideoLanguageModel, VisionTower, require, temporal_patch
from videollm.timing import stage
from videollm.types import VisualTokens
from videollm.video import Video

from . import COMPRESSORS
from .base import WEIGHTS_FILE, CompressorConfig, WeightedCompressor, grid_for, pack
from .mamba_scan import DEFAULT_CHUNK, selective_scan

logger = logging.getLogger(__name__)

PLACEMENTS = ("post_projector", "pre_projector")
CONFIG_FILE = "config.json"
#: config fields that define the weights' shapes (a checkpoint fixes them; the rest are inference options)
ARCH_FIELDS = ("num_layers", "d_state", "d_conv", "expand", "dt_rank", "causal", "placement", "pre_downsample",
               "train_projector")


@dataclass
class StormConfig(CompressorConfig):
    # encoder (Mamba-1 defaults; the paper does not state them)
    num_layers: int = 1
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # None: ceil(D / 16)
    dt_min: float = 0.001
    dt_max: float = 0.1
    causal: bool = False  # forward scan only (streaming); default bidirectional as in the paper
    placement: str = "post_projector"  # or "pre_projector" (the paper's; needs trained weights)
    pre_downsample: int = 2  # pre_projector: pixel-unshuffle factor before the Linear (VILA's 2x2)
    train_projector: bool = False  # post_projector: the checkpoint holds its own copy of the projector, trained too
    # reduction: None = chosen to meet the budget (see plan_reduction)
    temporal_pool: int | None = None  # k: average k consecutive frames (paper: 4)
    spatial_pool: int | str | None = None  # tokens per frame, or a grid "RxC"
    sample_stride: int | None = None  # s: keep every s-th pooled frame (paper: 2)
    max_temporal_pool: int = 4  # auto k stops here before pooling spatially (the k STORM is trained with)
    # runtime
    weights: str | None = None  # directory written by save_pretrained / `videollm train storm`
    scan_impl: str = "auto"  # auto | cuda | ref
    scan_chunk: int = DEFAULT_CHUNK  # steps per chunk of the CPU reference scan (bounds its memory)

    def validate(self) -> None:
        if self.placement not in PLACEMENTS:
            raise InvalidRequestError(f"storm placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        for name in ("num_layers", "d_state", "d_conv", "expand", "pre_downsample", "max_temporal_pool", "scan_chunk"):
            if int(getattr(self, name)) < 1:
                raise InvalidRequestError(f"storm option {name} must be >= 1, got {getattr(self, name)}")
        for name in ("temporal_pool", "sample_stride"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise InvalidRequestError(f"storm option {name} must be an integer >= 1, got {v!r}")
        if self.scan_impl not in ("auto", "cuda", "ref"):
            raise InvalidRequestError(f"storm scan_impl must be auto, cuda or ref, got {self.scan_impl!r}")
        if self.spatial_pool is not None:
            parse_spatial(self.spatial_pool, (10**6, 10**6))


# -- reduction plan (a pure function: which k, s and grid meet the budget) -------------------------------

@dataclass(frozen=True)
class ReductionPlan:
    temporal_pool: int
    sample_stride: int
    grid: tuple[int, int]
    groups: int  # pooled frames before sampling
    kept_groups: int

    @property
    def tokens(self) -> int:
        return self.kept_groups * self.grid[0] * self.grid[1]


def parse_spatial(value: int | str | tuple[int, int] | list[int], native: tuple[int, int]) -> tuple[int, int]:
    """`64` (tokens per frame) → the largest grid of at most 64 with the native aspect; `"8x8"` → (8, 8)."""
    r, c = native
    if isinstance(value, bool):
        raise InvalidRequestError(f"storm spatial_pool must be tokens per frame or 'RxC', got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise InvalidRequestError(f"storm spatial_pool must be >= 1 token per frame, got {value}")
        return (r, c) if value >= r * c else grid_for(value, r, c)
    if isinstance(value, str):
        parts = value.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise InvalidRequestError(f"storm spatial_pool must be tokens per frame or 'RxC', got {value!r}")
        value = (int(parts[0]), int(parts[1]))
    rr, cc = (int(v) for v in value)
    if not (1 <= rr and 1 <= cc):
        raise InvalidRequestError(f"storm spatial_pool grid must be at least 1x1, got {rr}x{cc}")
    return min(rr, r), min(cc, c)


def plan_reduction(num_frames: int, grid: tuple[int, int], budget: int | None, temporal_pool: int | None = None,
                   sample_stride: int | None = None, spatial_pool: int | str | None = None,
                   max_temporal_pool: int = 4) -> ReductionPlan:
    """Choose k, s and the grid so that ceil(ceil(T/k)/s) x grid <= budget, changing only the options left None.

    Order (the paper's priorities): temporal pooling up to `max_temporal_pool`; spatial pooling down to a
    quarter of the native tokens (the paper's 256 → 64); test-time sampling; spatial pooling below a
    quarter; temporal pooling beyond `max_temporal_pool`. Options the user fixed are never changed; if they
    alone make the budget impossible, that is an `InvalidRequestError`, never a silent truncation.
    """
    if num_frames < 1:
        raise InvalidRequestError("the video has no sampled frames")
    r, c = grid
    k_auto, s_auto, g_auto = temporal_pool is None, sample_stride is None, spatial_pool is None
    k = 1 if k_auto else int(temporal_pool)  # type: ignore[arg-type]
    s = 1 if s_auto else int(sample_stride)  # type: ignore[arg-type]
    g = (r, c) if g_auto else parse_spatial(spatial_pool, grid)  # type: ignore[arg-type]

    def make() -> ReductionPlan:
        groups = math.ceil(num_frames / k)
        return ReductionPlan(k, s, g, groups, math.ceil(groups / s))

    def fits() -> bool:
        return budget is None or make().tokens <= budget

    if fits():
        return make()
    assert budget is not None
    if k_auto:
        for k in range(1, max(1, max_temporal_pool) + 1):
            if fits():
                return make()
    quarter = max(1, (r * c) // 4)
    if g_auto:
        per = budget // make().kept_groups
        if per >= quarter:
            g = grid_for(per, r, c)
            return make()
        g = grid_for(quarter, r, c)
    if s_auto:
        max_kept = budget // (g[0] * g[1])
        groups = math.ceil(num_frames / k)
        s = math.ceil(groups / max_kept) if max_kept >= 1 else groups
        if fits():
            return make()
    if g_auto:
        per = budget // make().kept_groups
        if per >= 1:
            g = grid_for(per, r, c)
            return make()
    if k_auto:
        for k in range(k + 1, num_frames + 1):
            if fits():
                return make()
    raise InvalidRequestError(
        f"storm cannot fit {num_frames} frames into {budget} tokens with temporal_pool={temporal_pool}, "
        f"sample_stride={sample_stride}, spatial_pool={spatial_pool} fixed (it would need {make().tokens}); "
        "raise --budget or leave one of them unset")


# -- the encoder ---------------------------------------------------------------------------------------

class SelectiveMixer(nn.Module):
    """Mamba-1 mixer (mamba-ssm's `Mamba`, transformers' `MambaMixer`): same parameter names and init."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | None = None,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4):
        super().__init__()
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.d_state = d_state
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.scan_impl, self.scan_chunk = "auto", DEFAULT_CHUNK
        self.reset_parameters(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def reset_parameters(self, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus: softplus(bias) = dt
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand(self.d_inner, -1))
        self.D.fill_(1.0)
        nn.init.zeros_(self.out_proj.weight)  # exact identity of the residual layer until trained

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, L, d_model) → (batch, L, d_model)."""
        L = hidden.shape[1]
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (b, d_inner, L) each
        x = F.silu(self.conv1d(x)[..., :L])
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # bias goes in as delta_bias (fp32)
        A = -torch.exp(self.A_log.float())
        y = selective_scan(x, delta, A, B.transpose(1, 2), C.transpose(1, 2), self.D.float(), z=z,
                           delta_bias=self.dt_proj.bias.float(), delta_softplus=True, impl=self.scan_impl,
                           chunk_size=self.scan_chunk)
        return self.out_proj(y.transpose(1, 2).to(hidden.dtype))


class StormLayer(nn.Module):
    """x + fwd(LN(x)) + flip(bwd(flip(LN(x)))); forward only when causal."""

    def __init__(self, d_model: int, cfg: StormConfig):
        super().__init__()
        kw = dict(d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, dt_rank=cfg.dt_rank,
                  dt_min=cfg.dt_min, dt_max=cfg.dt_max)
        self.norm = nn.LayerNorm(d_model)
        self.fwd = SelectiveMixer(d_model, **kw)
        self.bwd = None if cfg.causal else SelectiveMixer(d_model, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        out = x + self.fwd(h)
        if self.bwd is not None:
            out = out + self.bwd(h.flip(1)).flip(1)
        return out


class StormEncoder(nn.Module):
    """[pre_projector: Linear(f² Dv → D)] → L STORM layers, over tokens flattened in (frame, row, col) order."""

    def __init__(self, d_model: int, cfg: StormConfig, vision_dim: int | None = None):
        super().__init__()
        self.input_proj = None
        if cfg.placement == "pre_projector":
            if vision_dim is None:
                raise ValueError("pre_projector placement needs the vision feature width")
            self.input_proj = nn.Linear(vision_dim, d_model)
        self.layers = nn.ModuleList(StormLayer(d_model, cfg) for _ in range(cfg.num_layers))
        for m in self.mixers():
            m.scan_impl, m.scan_chunk = cfg.scan_impl, cfg.scan_chunk

    def mixers(self) -> Iterator[SelectiveMixer]:
        return (m for m in self.modules() if isinstance(m, SelectiveMixer))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T, rows, cols, Din) → (T, rows, cols, D): one sequence of T*rows*cols tokens; a leading batch
        dimension (B, T, rows, cols, Din) scans B videos of the same shape at once (training)."""
        if self.input_proj is not None:
            tokens = self.input_proj(tokens)
        batched = tokens.dim() == 5
        x5 = tokens if batched else tokens[None]
        B, T, r, c, d = x5.shape
        x = x5.reshape(B, T * r * c, d)
        for layer in self.layers:
            x = layer(x)
        x = x.reshape(B, T, r, c, d)
        return x if batched else x[0]


def pixel_unshuffle(features: torch.Tensor, factor: int) -> torch.Tensor:
    """(n, h, w, C) → (n, ceil(h/f), ceil(w/f), f*f*C): VILA's 2x2 downsample; odd edges repeat the last row/col."""
    n, h, w, ch = features.shape
    f = factor if min(h, w) >= factor else 1
    if f == 1:
        return features
    ph, pw = (-h) % f, (-w) % f
    x = features.permute(0, 3, 1, 2)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    x = F.pixel_unshuffle(x, f)
    return x.permute(0, 2, 3, 1).contiguous()


def temporal_average(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """Average each group of k consecutive frames (the last group may be shorter): (T, ...) → (ceil(T/k), ...)."""
    if k == 1:
        return tokens
    return torch.stack([tokens[i:i + k].float().mean(0).to(tokens.dtype) for i in range(0, tokens.shape[0], k)])


def spatial_average(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(n, r, c, D) → (n, R, C, D) by adaptive average pooling (kernel = stride when the sizes divide)."""
    if tuple(tokens.shape[1:3]) == tuple(grid):
        return tokens
    x = F.adaptive_avg_pool2d(tokens.permute(0, 3, 1, 2).float(), grid).to(tokens.dtype)
    return x.permute(0, 2, 3, 1)


# -- the compressor ------------------------------------------------------------------------------------

@COMPRESSORS.register("storm")
class StormCompressor(WeightedCompressor):
    """STORM: Mamba temporal encoder → temporal pooling (k) → spatial pooling → test-time sampling (s).

    A `WeightedCompressor`: its modules are `encoder` (and, with `train_projector`, `projector`, its own
    trained copy of the backbone's projector); `save_pretrained(dir)` writes config.json + model.safetensors
    and `weights=DIR` (or `from_pretrained(DIR, backbone)`) loads them. Checkpoints written before the seam
    (encoder keys without the `encoder.` prefix) still load.
    """

    name = "storm"
    config_class = StormConfig
    config: StormConfig

    def __init__(self, backbone: VideoLanguageModel, config: StormConfig | None = None, untrained_ok: bool = False,
                 **overrides: Any):
        weights = overrides.get("weights") or (config.weights if config is not None else None)
        if weights:  # the checkpoint fixes the architecture; the user's options override the rest
            if config is not None:  # a config's own choices (its fields off the defaults) are the user's options
                overrides = {**non_defaults(config), **overrides, "weights": weights}
            saved = read_config(weights)
            for k, v in overrides.items():
                if k in ARCH_FIELDS and v != getattr(saved, k):
                    raise InvalidRequestError(f"storm option {k}={v!r} conflicts with the checkpoint in {weights} "
                                              f"({k}={getattr(saved, k)!r})")
            config = saved
        super().__init__(backbone, config, **overrides)
        self.trained = bool(weights)
        c = self.config
        if c.placement == "pre_projector" and not (weights or untrained_ok):
            raise InvalidRequestError(
                "storm placement=pre_projector replaces the backbone's projector with a new Linear that must be "
                "trained first: pass weights=DIR (made by `videollm train storm --placement pre_projector`)")
        if c.train_projector and c.placement == "pre_projector":
            raise InvalidRequestError("storm train_projector applies to placement=post_projector (pre_projector "
                                      "always trains its own Linear in place of the projector)")
        vision_dim = None
        if c.placement == "pre_projector":
            vision_dim = self._vision_dim() * self._unshuffle_factor() ** 2
        self.encoder = StormEncoder(backbone.hidden_size, c, vision_dim)
        self.projector: nn.Module | None = None
        if c.train_projector:
            parent, attr = projector_slot(backbone)
            self.projector = copy.deepcopy(getattr(parent, attr)).float().requires_grad_(True)
        self.to(backbone.device)
        if weights:
            self.load_weights(weights)
            self.config.weights = str(weights)

    # -- backbone geometry -------------------------------------------------------------------------------
    def _probe(self) -> torch.Tensor:
        """Pre-projector features of one black frame: their width and grid (cached)."""
        cached = getattr(self, "_probe_cache", None)
        if cached is None:
            frame = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
            with torch.inference_mode():
                feats = self.backbone.encode_frames(frame)
            cached = torch.tensor([feats.shape[1], feats.shape[2], feats.shape[3]])
            object.__setattr__(self, "_probe_cache", cached)
        return cached

    def _vision_dim(self) -> int:
        return int(self._probe()[2])

    def _unshuffle_factor(self) -> int:
        h, w = int(self._probe()[0]), int(self._probe()[1])
        f = self.config.pre_downsample
        return f if min(h, w) >= f else 1

    def token_grid(self) -> tuple[int, int]:
        """The per-frame grid the encoder sees (and pooling starts from)."""
        if self.config.placement == "post_projector":
            return tuple(self.backbone.frame_grid)  # type: ignore[return-value]
        f = self._unshuffle_factor()
        h, w = int(self._probe()[0]), int(self._probe()[1])
        return math.ceil(h / f), math.ceil(w / f)

    def frozen_inputs(self, video: Video) -> torch.Tensor:
        """What the frozen backbone gives for all sampled frames (T, rows, cols, Din): the projector's
        LLM-space tokens, or (own projector) the tower's features, or (pre_projector) unshuffled features.
        The training loop caches these once per clip."""
        parts = []
        if self.config.placement == "post_projector" and self.projector is None:
            for _, tok in self.iter_frame_tokens(video):
                parts.append(tok)
        elif self.config.placement == "post_projector":
            for _, feats in self.iter_frame_features(video):
                parts.append(feats)
        else:
            for _, feats in self.iter_frame_features(video):
                parts.append(pixel_unshuffle(feats, self._unshuffle_factor()))
        return torch.cat(parts).clone()  # clone: out of inference mode, so training can backprop through them

    encoder_inputs = frozen_inputs  # the name before the projector option

    def encode(self, frozen: torch.Tensor) -> torch.Tensor:
        """The trainable part: [own projector →] encoder. (T, r, c, Din) or (B, T, r, c, Din) → (..., D)."""
        param = next(self.encoder.parameters())
        x = frozen.to(param.device)
        if self.projector is not None:
            lead = x.shape[:-3]
            flat = x.reshape(-1, *x.shape[-3:]).to(next(self.projector.parameters()).dtype)
            with swapped_projector(self.backbone, self.projector):
                x = project_with_grad(self.backbone, flat)
            x = x.reshape(*lead, *x.shape[1:])
        return self.encoder(x.to(param.dtype))

    def reduce(self, tokens: torch.Tensor, plan: ReductionPlan) -> torch.Tensor:
        """Encoder → temporal pooling → spatial pooling → sampling: (T, r, c, Din) → (kept, R, C, D)."""
        return apply_plan(self.encode(tokens), plan)

    def plan(self, num_frames: int, budget: int | None) -> ReductionPlan:
        c = self.config
        return plan_reduction(num_frames, self.token_grid(), budget, c.temporal_pool, c.sample_stride,
                              c.spatial_pool, c.max_temporal_pool)

    def compress(self, video: Video, query: str | None, budget: int | None) -> VisualTokens:
        T = len(video)
        tp = temporal_patch(self.backbone)  # Qwen-VL: one token set per 2 frames
        plan = self.plan(math.ceil(T / tp), budget)
        tokens = self.frozen_inputs(video)
        with stage("compress"), torch.no_grad():
            out = self.reduce(tokens, plan)
        starts = [s * tp for s in range(0, math.ceil(T / tp), plan.temporal_pool)][::plan.sample_stride]
        native = tuple(plan.grid) == tuple(self.token_grid())
        per = plan.grid[0] * plan.grid[1]
        flat = out.flatten(1, 2).to(self.backbone.dtype)
        patches = [torch.arange(per) if native else torch.full((per,), -1) for _ in starts]
        stats = {"temporal_pool": plan.temporal_pool, "sample_stride": plan.sample_stride,
                 "grid": list(plan.grid), "tokens_per_frame": per, "pooled_frames": plan.groups,
                 "kept_pooled_frames": plan.kept_groups, "placement": self.config.placement,
                 "encoder": "trained" if self.trained else
                 ("untrained (identity)" if self.config.placement == "post_projector" else "untrained"),
                 "projector": "own (trained)" if self.projector is not None else "backbone's",
                 "layers": self.config.num_layers, "causal": self.config.causal}
        return pack(list(flat), starts, video.timestamps, T, patches, stats)

    # -- weights (WeightedCompressor's format; old encoder-only checkpoints are read too) ------------------
    def quantizable_modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"storm.encoder": self.encoder}
        if self.projector is not None:
            mods["storm.projector"] = self.projector
        return mods

    def save_pretrained(self, directory: str | Path) -> Path:
        weights, self.config.weights = self.config.weights, None  # a checkpoint never points at another one
        try:
            return super().save_pretrained(directory)
        finally:
            self.config.weights = weights

    @classmethod
    def from_pretrained(cls, directory: str | Path, backbone: VideoLanguageModel, config: StormConfig | None = None,
                        **overrides: Any) -> "StormCompressor":
        overrides.pop("weights", None)
        return cls(backbone, config, weights=str(directory), **overrides)

    def load_weights(self, directory: str | Path) -> None:
        from safetensors.torch import load_file

        path = Path(directory) / WEIGHTS_FILE
        if not path.is_file():
            raise InvalidRequestError(f"storm weights not found: {path}")
        state = load_file(str(path))
        if state and not any(k.startswith(("encoder.", "projector.")) for k in state):
            state = {f"encoder.{k}": v for k, v in state.items()}  # a checkpoint from before the seam
        own = self.state_dict()
        bad = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if bad or set(state) != set(own):
            raise InvalidRequestError(
                f"storm weights in {path.parent} do not fit this backbone (hidden size {self.backbone.hidden_size}): "
                f"{'shape mismatch in ' + bad[0] if bad else 'different layers'}; were they trained for another model?")
        self.load_state_dict(state)


def apply_plan(encoded: torch.Tensor, plan: ReductionPlan) -> torch.Tensor:
    """Temporal pooling → spatial pooling → sampling of one encoded video: (T, r, c, D) → (kept, R, C, D)."""
    x = temporal_average(encoded, plan.temporal_pool)
    x = spatial_average(x, plan.grid)
    return x[::plan.sample_stride]


def projector_slot(backbone: VideoLanguageModel) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the backbone's projector, for `train_projector`."""
    return require(backbone, SupportsProjectorSwap, "storm train_projector").projector_slot()


def project_with_grad(backbone: VisionTower, features: torch.Tensor) -> torch.Tensor:
    """`backbone.project` without the `torch.inference_mode` its class may wrap it in (training needs autograd
    through the projector copy; the arithmetic is the backbone's own)."""
    fn = type(backbone).project
    return getattr(fn, "__wrapped__", fn)(backbone, features)


@contextmanager
def swapped_projector(backbone: VideoLanguageModel, module: nn.Module) -> Iterator[None]:
    """Run `backbone.project` with `module` in place of its projector (so the backbone's own pooling and
    layout still apply), then put the original back."""
    parent, attr = projector_slot(backbone)
    original = getattr(parent, attr)
    setattr(parent, attr, module)
    try:
        yield
    finally:
        setattr(parent, attr, original)


def read_config(directory: str | Path) -> StormConfig:
    """The StormConfig saved beside a checkpoint (a one-line error if it is missing or not STORM's)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise InvalidRequestError(f"no STORM checkpoint in {directory} (missing {CONFIG_FILE})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InvalidRequestError(f"{path} is not valid JSON: {err}") from err
    if data.get("compressor") != StormCompressor.name:
        raise InvalidRequestError(f"{directory} holds a {data.get('compressor')!r} checkpoint, not storm")
    known = {f.name for f in fields(StormConfig)}
    return StormConfig(**{k: v for k, v in data.get("config", {}).items() if k in known})


__all__ = ["ReductionPlan", "SelectiveMixer", "StormCompressor", "StormConfig", "StormEncoder", "StormLayer",
           "plan_reduction", "read_config"]
