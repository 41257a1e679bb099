"""LongVU (Shen et al., 2024): three training-free stages that fit long video into an LLM's context.

1. **Temporal reduction**: DINOv2 features of densely sampled frames; inside non-overlapping windows, frames
   whose mean cosine similarity to the window is at or above `dino_threshold` are dropped (the middle
   frame always stays). Only the surviving frames ever reach the backbone's vision tower.
2. **Selective feature reduction** (cross-modal query): if all frames at full resolution overflow the budget
   but a reduced copy of each fits, every frame gets the reduced grid and the frames whose tokens best match
   the question's LLM input embeddings are upgraded back to full tokens, as many as the budget allows.
3. **Spatial token compression** (STC): if the tokens still overflow, within windows of consecutive frames
   the tokens that stay the same as the window's first frame at the same position are dropped.

Defaults follow the released code (`preset="code"`); `preset="paper"` switches to the paper's values. The
decisions are pure functions on tensors below; `LongVUCompressor` only moves tensors between them.
See docs/longvu.md for the paper/code differences and the mapping to LongVU's 12×12/8×8 token counts.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from videollm.errors import InvalidRequestError
from videollm.feature_cache import cached_chunks, default_cache, video_key
from videollm.protocols import SupportsDedupFeatures, SupportsLowResTokens, VideoLanguageModel
from videollm.timing import stage
from videollm.types import VisualTokens
from videollm.video import Video
from videollm.video.sampling import SamplingConfig, plan_indices

from . import COMPRESSORS
from .base import CompressorConfig, TokenCompressor, pack, spread, timed_chunks

logger = logging.getLogger(__name__)

#: LongVU's full and reduced per-frame grids (SVA output 12×12, low-res copy 8×8): side ratio 2/3.
LONGVU_FULL_SIDE, LONGVU_REDUCED_SIDE = 12, 8
WHEN_CHOICES = ("overflow", "always")
#: "code": the released gate arithmetic (the `<image>` placeholder counted as a prompt token, frame limits
#: `max(1, V // T)`); "exact": the placeholder not counted, token-exact `N·T <= V` comparisons
GATE_CHOICES = ("code", "exact")
#: leftover overflow after STC. "code": the released cut, `ceil(excess / windows)` from every window's end,
#: then whatever still overflows from the end of the video; "even": the same number from every window, never
#: more than a window holds, landing exactly on the budget
OVERFLOW_CUTS = ("code", "even")
REDUCE_MODES = ("bilinear", "avgpool")

#: Values each preset fills in for options left at None. "code" = released Vision-CAIR/LongVU code and
#: config; "paper" = the paper's description (see docs/longvu.md for sources and what is unverified).
PRESETS: dict[str, dict[str, Any]] = {
    "code": dict(fps=1.0, dedup_when="overflow", dedup_window=16, dino_threshold=0.83, max_frames_after_dedup=400,
                 reduce_mode="bilinear", stc_when="overflow", stc_window=8, stc_threshold=0.7, gates="code",
                 overflow_cut="code"),
    "paper": dict(fps=1.0, dedup_when="always", dedup_window=8, dino_threshold=0.83, max_frames_after_dedup=0,
                  reduce_mode="avgpool", stc_when="overflow", stc_window=8, stc_threshold=0.8, gates="exact",
                  overflow_cut="even"),
}


# =====================================================================================================
# Pure decisions
# =====================================================================================================
def dedup_window_keep(sim: torch.Tensor, threshold: float) -> torch.Tensor:
    """Which frames of one window stay, from the window's cosine-similarity matrix (w, w).

    LongVU's rule: a frame's score is its mean similarity to every frame of the window, itself included;
    frames scoring below `threshold` stay. The middle frame (index w // 2) gets the score 0, as in the release
    (`similarities[len(segment) // 2] = 0`): it stays for every threshold > 0 (the only ones the config
    accepts) and goes at a threshold <= 0, where the release drops it too.
    """
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] == 0:
        raise ValueError(f"expected a non-empty square similarity matrix, got {tuple(sim.shape)}")
    scores = sim.float().mean(dim=1)
    scores[sim.shape[0] // 2] = 0.0
    return scores < threshold


def normalize_descriptors(features: torch.Tensor) -> torch.Tensor:
    """One L2-normalised vector per frame: the whole patch map flattened (LongVU does not pool)."""
    return F.normalize(features.float().reshape(features.shape[0], -1), dim=-1)


def dedup_keep(features: torch.Tensor, window: int, threshold: float) -> torch.Tensor:
    """Keep mask (N,) over frames from per-frame features (N, ...), window by window (last may be short)."""
    if window < 1:
        raise ValueError("window must be >= 1")
    q = normalize_descriptors(features)
    n = q.shape[0]
    full = (n // window) * window
    parts = []
    if full:  # all complete windows at once: (windows, w, F) @ (windows, F, w)
        w = q[:full].reshape(n // window, window, -1)
        scores = torch.bmm(w, w.transpose(1, 2)).mean(dim=2)
        scores[:, window // 2] = 0.0  # the middle frame, as in dedup_window_keep
        parts.append((scores < threshold).reshape(-1).cpu())
    if full < n:
        w = q[full:]
        parts.append(dedup_window_keep(w @ w.T, threshold).cpu())
    return torch.cat(parts)


def dedup_gate(num_frames: int, max_visual: int, tokens_per_frame: int, when: str) -> bool:
    """Whether temporal reduction runs. The code runs it only once the frames would not fit even at
    `tokens_per_frame` (the reduced count when the query stage is on); the paper always runs it."""
    if when == "always":
        return True
    if when != "overflow":
        raise ValueError(f"when must be one of {WHEN_CHOICES}, got {when!r}")
    return num_frames >= max(1, max_visual // max(1, tokens_per_frame))


def cap_frames(positions: np.ndarray, cap: int | None) -> np.ndarray:
    """The code's guard after dedup: more than `cap` survivors are subsampled with idx = int((n / cap) * i),
    in that floating-point order (`interval = n / float(cap)` first), so the indices are the released ones
    bit for bit (`int(i * n / cap)` differs by one frame where the product rounds below an integer)."""
    n = len(positions)
    if not cap or n <= cap:
        return positions
    interval = n / float(cap)
    return positions[[int(interval * i) for i in range(cap)]]


def reduced_grid(rows: int, cols: int, ratio: float = LONGVU_REDUCED_SIDE / LONGVU_FULL_SIDE) -> tuple[int, int]:
    """The reduced grid for a backbone's native grid: LongVU's 12×12 → 8×8 side ratio (14×14 → 9×9, 4×4 → 3×3)."""
    return max(1, min(rows, round(rows * ratio))), max(1, min(cols, round(cols * ratio)))


@dataclass(frozen=True)
class ResolutionPlan:
    mode: str  # "full": all frames fit at full res; "mix": reduced + `num_full` upgraded; "overflow": STC's turn
    num_full: int  # frames that keep the full token count


def plan_resolution(num_frames: int, max_visual: int, t_full: int, t_reduced: int) -> ResolutionPlan:
    """How many frames keep full tokens: all if they fit; else, if every frame fits at the reduced count,
    floor((max_visual - N*t_reduced) / (t_full - t_reduced)) of them; else none (full res, left to STC)."""
    if num_frames * t_full <= max_visual:
        return ResolutionPlan("full", num_frames)
    if t_reduced >= t_full or num_frames * t_reduced > max_visual:
        return ResolutionPlan("overflow", num_frames)
    k = (max_visual - num_frames * t_reduced) // (t_full - t_reduced)
    return ResolutionPlan("mix", int(min(num_frames, k)))


def plan_resolution_code(num_frames: int, gate_visual: int, max_visual: int, t_full: int, t_reduced: int,
                         gate_full: int | None = None, gate_reduced: int | None = None) -> ResolutionPlan:
    """The released gates, verbatim: all frames full if `N < max(1, G // T_full)`; even the reduced copies
    overflow (STC's turn) if `N > max(1, G // T_red)`; else mix, upgrading
    `min(N, floor((V − N·T_red) / (T_full − T_red)))` frames (none when `V <= N·T_red`).

    `G` is the gates' limit (the prompt counted with its `<image>` placeholder, one token less than `V`),
    `V` the limit the mix and the final cut use. The `max(1, ...)` means a single frame never overflows:
    with a budget smaller than one reduced frame it keeps its reduced copy, which the cut then trims.
    `gate_full` / `gate_reduced` are the per-frame counts the gates divide by when they differ from the real
    ones (the released model: 144 and 64, while its frames carry 156 and 72 tokens with row newlines).
    """
    if num_frames < max(1, gate_visual // (gate_full or t_full)):
        return ResolutionPlan("full", num_frames)
    if t_reduced >= t_full or num_frames > max(1, gate_visual // (gate_reduced or t_reduced)):
        return ResolutionPlan("overflow", num_frames)
    spare = max_visual - num_frames * t_reduced
    k = spare // (t_full - t_reduced) if spare > 0 else 0
    return ResolutionPlan("mix", int(min(num_frames, k)))


def query_scores(frame_tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Per-frame relevance (N,): mean over the frame's tokens of the mean over text tokens of the raw dot
    product, as LongVU scores its low-res tokens (by linearity: mean token · mean text embedding)."""
    if frame_tokens.ndim != 3 or text.ndim != 2 or frame_tokens.shape[-1] != text.shape[-1]:
        raise ValueError(f"expected (N, P, D) tokens and (L, D) text, got {tuple(frame_tokens.shape)} and "
                         f"{tuple(text.shape)}")
    return frame_tokens.float().mean(dim=1) @ text.float().mean(dim=0).to(frame_tokens.device)


def select_full_frames(scores: torch.Tensor | None, k: int, num_frames: int) -> torch.Tensor:
    """Indices (sorted) of the `k` frames that keep full tokens: top-k by score, or spread evenly without one."""
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    if k >= num_frames:
        return torch.arange(num_frames)
    if scores is None:
        return torch.from_numpy(spread(k, num_frames))
    return torch.topk(scores.float().cpu(), k).indices.sort().values


def stc_keep_mask(tokens: torch.Tensor, window: int, threshold: float, block: int = 64) -> torch.Tensor:
    """Keep mask (N, P): the first frame of each `window` keeps every token; later frames keep the tokens
    whose cosine similarity to the window's first frame at the same position is below `threshold`."""
    if window < 1:
        raise ValueError("window must be >= 1")
    n, p = tokens.shape[:2]
    keep = torch.ones(n, p, dtype=torch.bool)
    step = window * block  # bounded memory for long videos: a block of windows at a time
    for a in range(0, n, step):
        x = tokens[a : a + step].float()
        anchors = x[(torch.arange(x.shape[0], device=x.device) // window) * window]
        sim = F.cosine_similarity(x, anchors, dim=-1)
        k = sim < threshold
        k[0::window] = True
        keep[a : a + step] = k.cpu()
    return keep


def trim_counts(counts: np.ndarray | list[int], budget: int) -> np.ndarray:
    """Fit per-window token counts to `budget` by cutting the same number from the end of every window.

    The code cuts ceil(excess / windows) from each window, which can empty short windows and under-fill;
    here a window never gives more than it holds and the total lands exactly on the budget.
    """
    c = np.asarray(counts, dtype=np.int64)
    if budget < 0:
        raise ValueError("budget must be >= 0")
    if c.sum() <= budget:
        return c.copy()
    lo, hi = 0, int(c.max())  # smallest r with sum(max(c - r, 0)) <= budget
    while lo < hi:
        mid = (lo + hi) // 2
        if np.maximum(c - mid, 0).sum() <= budget:
            hi = mid
        else:
            lo = mid + 1
    out = np.maximum(c - lo, 0)
    spare = int(budget - out.sum())
    if spare > 0:  # r-1 overshoots, so more than `spare` windows can take one token back
        eligible = np.flatnonzero(c >= lo)
        out[eligible[spread(spare, len(eligible))]] += 1
    return out


def trim_counts_code(counts: np.ndarray | list[int], budget: int) -> np.ndarray:
    """The released overflow cut: `ceil(excess / windows)` tokens off every window's end (a window shorter
    than that empties), then `[:budget]` over the concatenation, which cuts the *end of the video* whenever
    emptied windows left too much. The ceiling can also under-fill the budget by up to `windows - 1`."""
    c = np.asarray(counts, dtype=np.int64)
    if budget < 0:
        raise ValueError("budget must be >= 0")
    total = int(c.sum())
    if total <= budget or len(c) == 0:
        return c.copy()
    force_remove = -(-(total - budget) // len(c))
    out = np.maximum(c - force_remove, 0)
    excess = int(out.sum()) - budget
    for w in range(len(out) - 1, -1, -1):  # the final slice keeps the first `budget` tokens
        if excess <= 0:
            break
        take = min(int(out[w]), excess)
        out[w] -= take
        excess -= take
    return out


# =====================================================================================================
# Config
# =====================================================================================================
@dataclass
class LongVUConfig(CompressorConfig):
    """Options left at None take the preset's value (PRESETS). Every stage is on by default."""

    preset: str = "code"  # "code" (released code) | "paper"
    # frame sampling: LongVU samples densely; this only ever adds frames to the pipeline's sampling
    resample: bool = True
    fps: float | None = None
    max_frames: int = 1000  # the eval scripts thin anything beyond ~1000 frames
    # 1. temporal reduction with DINOv2
    dedup: bool = True
    dedup_when: str | None = None  # "overflow" (code: only when frames overflow) | "always" (paper)
    dedup_window: int | None = None
    dino_threshold: float | None = None
    max_frames_after_dedup: int | None = None  # 0 = no cap
    dino_model: str = "vit_small_patch14_dinov2"  # any timm DINOv2 (LongVU itself uses giant)
    dino_pretrained: bool = True
    dino_image_size: int | None = 378
    dino_pad_to_square: bool = True
    dino_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm kwargs (tests: depth, embed_dim, ...)
    dino_batch: int = 64
    dedup_fallback: bool = True  # DINOv2 weights unavailable (offline): dedup on the backbone's features, or raise
    # 2. selective feature reduction by cross-modal query
    query: bool = True
    reduce_ratio: float = LONGVU_REDUCED_SIDE / LONGVU_FULL_SIDE
    reduced_grid: list[int] | None = None  # explicit [rows, cols] instead of the ratio
    reduce_mode: str | None = None  # "bilinear" (code) | "avgpool"
    # 3. spatial token compression
    stc: bool = True
    stc_when: str | None = None  # "overflow" (both) | "always"
    stc_window: int | None = None
    stc_threshold: float | None = None
    # released-code arithmetic (see GATE_CHOICES / OVERFLOW_CUTS)
    gates: str | None = None  # "code" (placeholder counted, max(1, V // T) limits) | "exact"
    overflow_cut: str | None = None  # "code" (ceil per window, then the video's end) | "even"
    # context: LongVU's own limit is tokenizer_model_max_length (8192) minus the prompt minus 16
    context_length: int | None = 8192  # None: the backbone's context
    reserve_tokens: int = 16

    def validate(self) -> None:
        super().validate()
        resolve_params(self)


@dataclass(frozen=True)
class LongVUParams:
    """Concrete, validated values after the preset is applied."""

    preset: str
    resample: bool
    fps: float
    max_frames: int
    dedup: bool
    dedup_when: str
    dedup_window: int
    dino_threshold: float
    max_frames_after_dedup: int
    query: bool
    reduce_mode: str
    stc: bool
    stc_when: str
    stc_window: int
    stc_threshold: float
    gates: str
    overflow_cut: str


def resolve_params(cfg: LongVUConfig) -> LongVUParams:
    if cfg.preset not in PRESETS:
        raise InvalidRequestError(f"unknown longvu preset {cfg.preset!r}; choose from {', '.join(PRESETS)}")
    preset = PRESETS[cfg.preset]
    values: dict[str, Any] = {}
    for f in fields(LongVUParams):
        v = getattr(cfg, f.name)
        values[f.name] = preset[f.name] if v is None and f.name in preset else v
    p = LongVUParams(**values)
    problems = []
    if not (p.fps > 0 and math.isfinite(p.fps)):
        problems.append(f"fps must be > 0, got {p.fps}")
    if p.max_frames < 1:
        problems.append(f"max_frames must be >= 1, got {p.max_frames}")
    for name in ("dedup_window", "stc_window"):
        if int(getattr(p, name)) < 1:
            problems.append(f"{name} must be >= 1, got {getattr(p, name)}")
    if not 0.0 < float(p.dino_threshold) <= 1.01:  # NaN fails too
        problems.append(f"dino_threshold must be in (0, 1] (a mean cosine similarity; at <= 0 the released rule "
                        f"drops even each window's middle frame, usually every frame), got {p.dino_threshold}")
    if not -1.0 <= float(p.stc_threshold) <= 1.01:
        problems.append(f"stc_threshold is a cosine similarity in [-1, 1], got {p.stc_threshold}")
    for name in ("dedup_when", "stc_when"):
        if getattr(p, name) not in WHEN_CHOICES:
            problems.append(f"{name} must be one of {WHEN_CHOICES}, got {getattr(p, name)!r}")
    if p.gates not in GATE_CHOICES:
        problems.append(f"gates must be one of {GATE_CHOICES}, got {p.gates!r}")
    if p.overflow_cut not in OVERFLOW_CUTS:
        problems.append(f"overflow_cut must be one of {OVERFLOW_CUTS}, got {p.overflow_cut!r}")
    if p.reduce_mode not in REDUCE_MODES:
        problems.append(f"reduce_mode must be one of {REDUCE_MODES}, got {p.reduce_mode!r}")
    if p.max_frames_after_dedup is not None and p.max_frames_after_dedup < 0:
        problems.append("max_frames_after_dedup must be >= 0 (0 = no cap)")
    if not 0 < cfg.reduce_ratio <= 1:
        problems.append(f"reduce_ratio must be in (0, 1], got {cfg.reduce_ratio}")
    if cfg.reduced_grid is not None and (len(cfg.reduced_grid) != 2 or min(cfg.reduced_grid) < 1):
        problems.append(f"reduced_grid must be [rows, cols] >= 1, got {cfg.reduced_grid}")
    if cfg.dino_batch < 1 or cfg.chunk_size < 1:
        problems.append("dino_batch and chunk_size must be >= 1")
    if cfg.context_length is not None and cfg.context_length < 1:
        problems.append("context_length must be >= 1 (or null for the backbone's)")
    if problems:
        raise InvalidRequestError("longvu: " + "; ".join(problems))
    return p


# =====================================================================================================
# What the stages hand each other
# =====================================================================================================
@dataclass(frozen=True)
class LongVUSizes:
    """Per-frame token counts and visual-token limits of one call (see `LongVUCompressor.max_visual_tokens`)."""

    full_grid: tuple[int, int]
    reduced_grid: tuple[int, int]
    t_full: int  # tokens of a full-resolution frame
    t_red: int  # tokens of a reduced frame
    max_visual: int  # the limit the mix count and the final cut use
    gate_visual: int  # the limit the gates use (the released code counts the `<image>` placeholder)
    g_full: int  # per-frame counts the gates divide by (the released model: newline tokens not counted)
    g_red: int


@dataclass(frozen=True)
class SurvivorTokens:
    """The frames that survived temporal reduction, in LLM space."""

    positions: list[int]  # each row's position among the sampled frames
    full: torch.Tensor  # (M, rows, cols, D)
    full_flat: torch.Tensor  # (M, rows·cols, D)
    own_low: torch.Tensor | None  # (M, r·c, D): the backbone's own low-res copy (SupportsLowResTokens), or None

    @property
    def count(self) -> int:
        return int(self.full.shape[0])


@dataclass(frozen=True)
class Resolution:
    """Stage 2's outcome: which frames keep full tokens, the reduced copies, and the tokens that leaves."""

    plan: ResolutionPlan
    is_full: torch.Tensor  # (M,) bool
    reduced: torch.Tensor | None  # (M, r·c, D), None when no frame needs a reduced copy
    tokens: int


@dataclass
class KeptTokens:
    """Stage 3's outcome, per kept frame: its tokens, its position, and each token's patch (-1: reduced)."""

    tokens: list[torch.Tensor]
    frames: list[int]
    patches: list[torch.Tensor]

    @property
    def num_tokens(self) -> int:
        return int(sum(t.shape[0] for t in self.tokens))


# =====================================================================================================
# The compressor
# =====================================================================================================
@COMPRESSORS.register("longvu")
class LongVUCompressor(TokenCompressor):
    """DINOv2 frame dedup → query-guided full/reduced tokens → spatial token compression."""

    name = "longvu"
    config_class = LongVUConfig
    config: LongVUConfig

    def __init__(self, backbone: VideoLanguageModel, config: LongVUConfig | None = None, **overrides: Any):
        super().__init__(backbone, config, **overrides)
        self.params = resolve_params(self.config)
        self._dino: Callable[[torch.Tensor], torch.Tensor] | None = None  # DINOv2 (a DinoV2Encoder), loaded lazily
        self._dino_error: str | None = None

    # -- sizes ------------------------------------------------------------------------------------------
    @property
    def full_grid(self) -> tuple[int, int]:
        rows, cols = self.backbone.frame_grid
        return int(rows), int(cols)

    @property
    def own_lowres(self) -> bool:
        """The backbone makes its own low-res copy (the released LongVU model): used instead of resizing."""
        return self._lowres_backbone() is not None

    def _lowres_backbone(self) -> SupportsLowResTokens | None:
        """The backbone as `SupportsLowResTokens` when the query stage uses its own low-res copy, else None."""
        b = self.backbone
        return b if self.params.query and isinstance(b, SupportsLowResTokens) else None

    @property
    def reduced_grid(self) -> tuple[int, int]:
        lowres = self._lowres_backbone()
        if lowres is not None:
            r, c = lowres.reduced_frame_grid
            return int(r), int(c)
        if self.config.reduced_grid is not None:
            r, c = self.config.reduced_grid
            return min(int(r), self.full_grid[0]), min(int(c), self.full_grid[1])
        return reduced_grid(*self.full_grid, ratio=self.config.reduce_ratio)

    def max_visual_tokens(self, query: str | None, budget: int | None, count_placeholder: bool = False) -> int:
        """LongVU's max_visual_len = context - prompt tokens - reserve, further capped by the budget.

        The released code counts the prompt two ways: its gates (dedup, mix/overflow) take the length of
        `input_ids`, which still holds the `<image>` placeholder (`count_placeholder=True`, one token less for
        frames); the mix count and the final cut sum the text embeddings around it (the placeholder not counted).
        """
        ctx = int(self.backbone.max_context)
        if self.config.context_length is not None:
            ctx = min(ctx, int(self.config.context_length))
        tok = self.backbone.tokenizer
        prompt = self.backbone.render_prompt(query or "")
        n_ids = len(tok(prompt, add_special_tokens=False)["input_ids"])
        text_len = n_ids if count_placeholder else max(0, n_ids - 1)
        avail = ctx - text_len - self.config.reserve_tokens
        limit = avail if budget is None else min(budget, avail)
        return max(1, int(limit))

    # -- encoders ---------------------------------------------------------------------------------------
    def dino(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The DINOv2 encoder, from the process-wide model cache (one instance per settings, shared)."""
        if self._dino is None:
            from videollm.models import get_model

            c = self.config
            dtype = str(self.backbone.dtype).replace("torch.", "")
            self._dino = get_model(f"dinov2:{c.dino_model}", device=str(self.backbone.device), dtype=dtype,
                                   pretrained=c.dino_pretrained, image_size=c.dino_image_size,
                                   pad_to_square=c.dino_pad_to_square, **c.dino_kwargs)  # `encoders.load_dinov2`
        return self._dino

    def _dino_unavailable(self) -> str | None:
        """Why DINOv2 cannot run (its weights cannot be had and `dedup_fallback` is on), else None. The
        encoder module remembers a failure for the process, so it is tried once, never in a retry loop."""
        from videollm.encoders import EncoderLoadError

        if self._dino is None and self._dino_error is None:
            try:
                self.dino()
            except EncoderLoadError as err:
                if not self.config.dedup_fallback:
                    raise
                self._dino_error = str(err)
                logger.info("longvu: DINOv2 unavailable, frame dedup uses the backbone's vision features: %s", err)
        return self._dino_error

    # -- stages -----------------------------------------------------------------------------------------
    def densify(self, video: Video) -> Video:
        """Sample at least `fps` frames per second (up to `max_frames`); denser pipeline sampling is kept."""
        p = self.params
        info = video.info
        if not p.resample or info.fps <= 0:
            return video
        target = plan_indices(info.frame_times(), SamplingConfig(num_frames=None, fps=p.fps, max_frames=p.max_frames))
        if len(target) <= len(video) or video.in_memory:  # in memory: no frames beyond those held
            return video
        logger.info("longvu: sampling %d frames at %.2f fps (pipeline sampled %d)", len(target), p.fps, len(video))
        return video.resampled(target)  # same decoder, same decode log

    def dedup_mask(self, video: Video, enc: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
        """Stream an encoder (DINOv2 by default) over all sampled frames in batches; decide each window as
        soon as it is complete."""
        p = self.params
        enc = enc or self.dino()
        keep: list[torch.Tensor] = []
        window: list[torch.Tensor] = []

        def flush() -> None:
            q = torch.cat(window)
            keep.append(dedup_window_keep(q @ q.T, p.dino_threshold).cpu())
            window.clear()

        size = self.config.dino_batch

        def compute(missing: np.ndarray) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
            start = 0
            for batch in timed_chunks(video, size, missing, desc="DINOv2 dedup"):
                # a frame that did not decode is left out of its batch: the batch says which positions it holds
                pos = batch.positions.numpy() if batch.positions is not None else missing[start : start + len(batch)]
                with stage("dino"):
                    q = normalize_descriptors(enc(batch.frames))
                yield pos, q
                start += len(batch)

        # DINOv2 descriptors do not depend on the question: a video's later questions redo only the query step
        owner = getattr(enc, "__self__", enc)  # a backbone's method: a fresh bound object on every access
        kind = "dino" if owner is enc else f"dino:{getattr(enc, '__name__', '')}"
        key = video_key(video, owner, kind, extra=(video.info.height, video.info.width, str(self.backbone.dtype)))
        decoded: list[np.ndarray] = []
        for pos, q in cached_chunks(default_cache(), key, np.arange(len(video)), size, compute,
                                    device=self.backbone.device):
            decoded.append(np.asarray(pos))
            with stage("dino"):
                for row in q:
                    window.append(row[None])
                    if len(window) == p.dedup_window:
                        flush()
        if window:
            flush()
        mask = np.zeros(len(video), dtype=bool)  # frames that never decoded (damaged file) cannot be kept
        if keep:
            mask[np.concatenate(decoded)] = torch.cat(keep).numpy()
        return mask

    @torch.inference_mode()
    def compress(self, video: Video, query: str | None, budget: int | None) -> VisualTokens:
        """The paper's three stages in order; each returns what the next needs and its `stats["stages"]` entry."""
        video = self.densify(video)
        sizes = self.sizes(query, budget)
        n = len(video)
        stages: dict[str, dict[str, Any]] = {"sampling": {"frames": n, "tokens": n * sizes.t_full}}
        positions, stages["dedup"] = self.temporal_reduction(video, sizes)
        encoded = self._encode_survivors(video, positions)
        with stage("compress"):
            frames = self._survivor_tokens(encoded, sizes)
            resolution, stages["query"] = self.selective_feature_reduction(frames, query, sizes)
            kept, reduced_stages = self.spatial_token_reduction(frames, resolution, sizes)
            stages.update(reduced_stages)
        return self._result(video, kept, stages, sizes)

    def sizes(self, query: str | None, budget: int | None) -> LongVUSizes:
        """Per-frame token counts and the visual-token limits for this question and budget."""
        full, red = self.full_grid, self.reduced_grid
        t_full, t_red = full[0] * full[1], red[0] * red[1]
        max_visual = self.max_visual_tokens(query, budget)
        code_gates = self.params.gates == "code"
        gate_visual = self.max_visual_tokens(query, budget, count_placeholder=True) if code_gates else max_visual
        # the counts the released gates divide by (the released model: newline tokens not counted)
        lowres = self._lowres_backbone()
        g_full, g_red = lowres.gate_tokens_per_frame if lowres is not None else (t_full, t_red)
        return LongVUSizes(full, red, t_full, t_red, max_visual, gate_visual, g_full, g_red)

    # -- 1. temporal reduction --------------------------------------------------------------------------
    def temporal_reduction(self, video: Video, sizes: LongVUSizes) -> tuple[np.ndarray, dict[str, Any]]:
        """Stage 1: DINOv2 on every sampled frame, window by window; the vision tower later sees only the
        survivors (their positions in `video`, after the code's frame cap)."""
        p = self.params
        n = len(video)
        positions = np.arange(n)
        ran = p.dedup and dedup_gate(n, sizes.gate_visual, sizes.g_red if p.query else sizes.g_full, p.dedup_when)
        capped = 0
        own = self.backbone if isinstance(self.backbone, SupportsDedupFeatures) else None  # released LongVU's DINOv2
        unavailable = self._dino_unavailable() if ran and own is None else None
        features = "backbone_vision" if unavailable else ("model_dinov2" if own is not None else "dinov2")
        if ran:  # without DINOv2 weights, the backbone's own pre-projector features still catch frozen frames
            enc = (self.backbone.encode_frames if unavailable
                   else own.dedup_features if own is not None else None)
            mask = self.dedup_mask(video, enc)
            positions = np.flatnonzero(mask)
            before_cap = len(positions)
            positions = cap_frames(positions, p.max_frames_after_dedup)
            capped = before_cap - len(positions)
        info: dict[str, Any] = {"enabled": p.dedup, "ran": bool(ran), "frames_removed": n - len(positions) - capped,
                                "frames_capped": capped, "frames": len(positions),
                                "tokens": len(positions) * sizes.t_full,
                                "tokens_removed": (n - len(positions)) * sizes.t_full}
        if ran:
            info["features"] = features
        if unavailable:
            info["dino_unavailable"] = unavailable
        return positions, info

    def _encode_survivors(self, video: Video, positions: np.ndarray) -> list[tuple[list[int], torch.Tensor]]:
        """The survivors through the vision tower and projector, with the backbone's own low-res copy riding
        along when it makes one: [(positions, tokens)] per chunk."""
        lowres = self._lowres_backbone()
        frames_iter = (self._iter_frames(video, positions, lowres.frame_tokens_multires, "tokens+lowres")
                       if lowres is not None else self.iter_frame_tokens(video, positions))
        chunks = [([int(x) for x in pos], tok) for pos, tok in frames_iter]
        if not chunks:
            raise InvalidRequestError(f"{video.source}: no frame could be decoded")
        return chunks

    def _survivor_tokens(self, chunks: list[tuple[list[int], torch.Tensor]], sizes: LongVUSizes) -> SurvivorTokens:
        positions = [x for pos, _ in chunks for x in pos]
        if self._lowres_backbone() is not None:  # (M, full + low-res tokens, D)
            flat = torch.cat([tok for _, tok in chunks])
            full = flat[:, :sizes.t_full].reshape(flat.shape[0], *sizes.full_grid, flat.shape[-1])
            return SurvivorTokens(positions, full, full.flatten(1, 2), flat[:, sizes.t_full:])
        full = torch.cat([tok for _, tok in chunks])  # (M, rows, cols, D) in LLM space
        return SurvivorTokens(positions, full, full.flatten(1, 2), None)

    # -- 2. selective feature reduction -----------------------------------------------------------------
    def selective_feature_reduction(self, frames: SurvivorTokens, query: str | None, sizes: LongVUSizes
                                    ) -> tuple[Resolution, dict[str, Any]]:
        """Stage 2: when full-resolution tokens overflow but reduced ones fit, every frame gets the reduced grid
        and those whose tokens best match the question's LLM embeddings are upgraded back to full."""
        p = self.params
        m = frames.count
        t_full, t_red, max_visual = sizes.t_full, sizes.t_red, sizes.max_visual
        if p.query and p.gates == "code":
            plan = plan_resolution_code(m, sizes.gate_visual, max_visual, t_full, t_red, sizes.g_full, sizes.g_red)
        elif p.query:
            plan = plan_resolution(m, max_visual, t_full, t_red)
        else:  # no reduced copy (the code without `highres`): STC runs once the tokens overflow
            plan = ResolutionPlan("full" if m * t_full <= max_visual else "overflow", m)
        is_full = torch.ones(m, dtype=torch.bool)
        reduced = None
        scored = False
        if plan.mode == "mix" or (p.stc and p.stc_when == "always" and p.query and t_red < t_full):
            reduced = (frames.own_low if frames.own_low is not None
                       else reduce_tokens(frames.full, sizes.reduced_grid, p.reduce_mode).flatten(1, 2))
        if plan.mode == "mix" and reduced is not None:
            text = self.backbone.embed_text(query) if query and query.strip() else None
            scores = query_scores(reduced, text) if text is not None and text.shape[0] > 0 else None
            scored = scores is not None
            chosen = select_full_frames(scores, plan.num_full, m)
            is_full = torch.zeros(m, dtype=torch.bool)
            is_full[chosen] = True
        full_idx = torch.nonzero(is_full).flatten()
        counts = torch.where(is_full, t_full, t_red)
        info = {"enabled": p.query, "ran": plan.mode == "mix", "mode": plan.mode, "scored_by_query": scored,
                "full_frames": len(full_idx), "reduced_frames": m - len(full_idx), "frames": m,
                "tokens": int(counts.sum()), "tokens_removed": m * t_full - int(counts.sum()),
                "full_frame_ids": [frames.positions[i] for i in full_idx.tolist()]}
        return Resolution(plan, is_full, reduced, int(counts.sum())), info

    # -- 3. spatial token reduction ---------------------------------------------------------------------
    def spatial_token_reduction(self, frames: SurvivorTokens, res: Resolution, sizes: LongVUSizes
                                ) -> tuple[KeptTokens, dict[str, dict[str, Any]]]:
        """Stage 3: inside windows of consecutive frames, drop the tokens that match the window's first frame
        at the same position (STC); then cut any leftover overflow (`overflow_cut`). Returns the kept tokens and
        the "stc" and "budget" stage entries."""
        p = self.params
        m = frames.count
        keep_full = torch.ones(m, sizes.t_full, dtype=torch.bool)
        keep_red = torch.ones(m, sizes.t_red, dtype=torch.bool)
        # the released model's gates divide by 64 while a low-res frame holds 72 tokens: when no frame could be
        # upgraded and the low-res copies still overflow, the release runs STC on them
        plan = res.plan
        low_overflow = plan.mode == "mix" and plan.num_full == 0 and m * sizes.t_red > sizes.max_visual
        run_stc = p.stc and (plan.mode == "overflow" or p.stc_when == "always" or low_overflow)
        if run_stc:
            keep_full = stc_keep_mask(frames.full_flat, p.stc_window, p.stc_threshold)
            if res.reduced is not None:
                keep_red = stc_keep_mask(res.reduced, p.stc_window, p.stc_threshold)
        per_frame = [keep_full[i] if res.is_full[i] else keep_red[i] for i in range(m)]
        after_stc = int(sum(int(k.sum()) for k in per_frame))
        kept = self._cut_overflow(frames, res, per_frame, sizes.max_visual)
        return kept, {"stc": {"enabled": p.stc, "ran": bool(run_stc), "tokens": after_stc,
                              "tokens_removed": res.tokens - after_stc},
                      "budget": {"max_visual_tokens": sizes.max_visual, "tokens": kept.num_tokens,
                                 "tokens_removed": after_stc - kept.num_tokens, "frames": len(kept.frames)}}

    def _cut_overflow(self, frames: SurvivorTokens, res: Resolution, per_frame: list[torch.Tensor],
                      max_visual: int) -> KeptTokens:
        """Whatever still overflows is cut from the end of every window (OVERFLOW_CUTS)."""
        p = self.params
        m, win = frames.count, p.stc_window
        wcounts = [sum(int(per_frame[i].sum()) for i in range(a, min(a + win, m))) for a in range(0, m, win)]
        cut = trim_counts_code if p.overflow_cut == "code" else trim_counts
        allowed = cut(wcounts, max_visual)
        reduced = res.reduced if res.reduced is not None else frames.full_flat  # None: every frame is full
        kept = KeptTokens([], [], [])
        for w, a in enumerate(range(0, m, win)):
            quota = int(allowed[w])
            for i in range(a, min(a + win, m)):
                idx = torch.nonzero(per_frame[i]).flatten()[:quota]
                quota -= len(idx)
                if len(idx) == 0:
                    continue
                src = frames.full_flat[i] if res.is_full[i] else reduced[i]
                kept.tokens.append(src[idx.to(src.device)])
                kept.frames.append(frames.positions[i])
                kept.patches.append(idx if res.is_full[i] else torch.full((len(idx),), -1, dtype=torch.long))
        return kept

    def _result(self, video: Video, kept: KeptTokens, stages: dict[str, dict[str, Any]], sizes: LongVUSizes
                ) -> VisualTokens:
        p = self.params
        n = stages["sampling"]["frames"]
        final = kept.num_tokens
        stats = {"preset": p.preset, "stages": stages, "sampled_frames": n, "surviving_frames": kept.frames,
                 "full_res_frames": stages["query"]["full_frame_ids"], "tokens_per_frame_full": sizes.t_full,
                 "tokens_per_frame_reduced": sizes.t_red, "grid_full": list(sizes.full_grid),
                 "grid_reduced": list(sizes.reduced_grid),
                 "reduced_by": "backbone" if self._lowres_backbone() is not None else p.reduce_mode,
                 "tokens_after": {k: v["tokens"] for k, v in stages.items()},
                 "frames_after": {k: v["frames"] for k, v in stages.items() if "frames" in v}}
        warnings = []
        if stages["dedup"].get("dino_unavailable"):  # the user sees it once per answer (CLI, demo), not a log line
            warnings.append("longvu: no DINOv2 weights here (offline), so frame dedup used the backbone's own "
                            "vision features")
        if not any(stages[k]["ran"] for k in ("dedup", "query", "stc")) and stages["budget"]["tokens_removed"] == 0:
            stats["all_stages_skipped"] = True
            warnings.append(f"longvu: every stage skipped: the {n} sampled frames' {final} tokens already fit the "
                            f"{sizes.max_visual} visual tokens allowed, so the model saw every frame at full "
                            "resolution, as with --compressor uniform; sample more frames or lower --budget for "
                            "LongVU to act")
        if warnings:
            stats["warnings"] = warnings
        return pack(kept.tokens, kept.frames, video.timestamps, n, kept.patches, stats)


def reduce_tokens(tokens: torch.Tensor, grid: tuple[int, int], mode: str) -> torch.Tensor:
    """(n, rows, cols, D) → (n, grid, D): bilinear like the code's 12×12→8×8, or adaptive average pooling."""
    if tuple(tokens.shape[1:3]) == tuple(grid):
        return tokens
    x = tokens.permute(0, 3, 1, 2).float()
    if mode == "bilinear":
        y = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
    elif mode == "avgpool":
        y = F.adaptive_avg_pool2d(x, grid)
    else:
        raise ValueError(f"reduce mode must be one of {REDUCE_MODES}, got {mode!r}")
    return y.to(tokens.dtype).permute(0, 2, 3, 1).contiguous()


__all__ = ["KeptTokens", "LongVUCompressor", "LongVUConfig", "LongVUParams", "LongVUSizes", "PRESETS", "Resolution",
           "ResolutionPlan", "SurvivorTokens", "cap_frames",
           "dedup_gate", "dedup_keep", "dedup_window_keep", "normalize_descriptors", "plan_resolution",
           "plan_resolution_code", "query_scores", "reduce_tokens", "reduced_grid", "resolve_params",
           "select_full_frames", "stc_keep_mask", "trim_counts", "trim_counts_code"]
