"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL driven stage by stage, token for token as transformers' processor + model.

What differs from LLaVA-OneVision, and how it passes the seam:

- **Two frames per token.** The ViT's temporal patch takes frames in pairs: one temporal *group* (sampled
  frames 2k and 2k+1, the last frame repeated when the count is odd, as the reference processor pads) gives
  rows × cols tokens. `temporal_patch` = 2 tells the compressor base to encode whole groups; a group's tokens
  carry the frame id of its first frame, and `frame_grid` is one group's grid.
- **Frame size per video.** The checkpoint's own video processor decides the resize (`smart_resize` with its
  min/max pixels and, for Qwen3-VL, the frame count), so `prepare_video(n, h, w)` fixes the grid for a video
  before any budget is planned; the processor itself (wrapped, not rewritten) then normalises and patchifies.
- **3-D positions.** Visual tokens get (t, row, col) rotary positions (`VisualTokens.positions` or, when a
  compressor sets none, the rule in `token_positions`); text after a visual block resumes at the block's start
  + max(grid rows, cols), as transformers 5's `get_rope_index` does, whichever tokens a compressor kept. After
  the prefill, the offset of the next position (last prompt position + 1 − prompt length, what transformers 5's
  `generate` continues from; its `rope_deltas`, max + 1 − length, is the same unless temporal positions run
  past the text's, a slow video) rides on the KV cache, so decode steps are 1-D positions
  `cache length + offset`, which is what transformers computes and what the lean decode step takes.
- **Time.** Qwen2.5-VL: group k's t = ⌊(time of its first frame − time of the first sampled frame) ·
  tokens_per_second⌋ (the reference's k · second_per_grid_t · tokens_per_second, from real frame times).
  Qwen2-VL: t = k. Qwen3-VL: every group is its own block after the text `<{t:.1f} seconds>` (the mean time
  of its two frames); a group with no kept token loses its timestamp too.
- **DeepStack (Qwen3-VL).** The ViT's three intermediate features per token are kept beside the tokens this
  backbone made (keyed by the token's values); a token a compressor passes on unchanged gets them back, a
  pooled or merged token gets none (its residual is zero), counted in `Answer.compressor_stats`.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .._compat import cache_kwargs, output_cache, require
from ..device import resolve_device, resolve_dtype
from ..errors import InvalidRequestError, ModelLoadError
from ..runtime.decode_step import forward_last
from ..types import VisualTokens
from .base import Backbone, PromptInputs
from .presets import register_preset

if TYPE_CHECKING:
    from transformers import PreTrainedModel
    from transformers.video_processing_utils import BaseVideoProcessor

    from ..protocols import Tokenizer

logger = logging.getLogger(__name__)

FAMILY_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
VIDEO_PAD, VISION_START, VISION_END = "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
#: the grid used before any video is seen (a 16:9 640×360 clip of 16 frames), only for planning without one
_DEFAULT_GEOMETRY = (16, 360, 640)


@dataclass
class _Plan:
    """3-D positions and DeepStack inputs of one prompt this backbone built, found again by `lm_forward`."""

    ref: Any  # weakref to the prompt's embeddings
    ptr: int
    length: int
    positions: torch.Tensor  # (3, L)
    delta: int  # position of the token after the prompt minus its sequence index (decode offset)
    visual_mask: torch.Tensor | None = None  # (L,) bool, Qwen3-VL only
    deepstack: list[torch.Tensor] | None = None


def token_positions(visual: VisualTokens, grid: tuple[int, int], temporal_patch: int = 2) -> torch.Tensor:
    """(N, 3) float (frame position of the group's first frame, row, col) of each visual token.

    `visual.positions` when a compressor set them. Otherwise: a token with a patch id sits at that cell of its
    group's grid; a frame's tokens without one (pooled) are taken as the `grid_for` grid `pool_grid` makes of
    that many tokens and sit at the centre of the cells they average; any other count sits at the frame's
    centre. Fractional centres are rounded down when turned into rotary positions.
    """
    if visual.positions is not None:
        return visual.positions.to(torch.float64).cpu()
    rows, cols = grid
    fid = visual.frame_ids.cpu()
    pid = visual.patch_ids.cpu()
    out = torch.zeros(fid.shape[0], 3, dtype=torch.float64)
    out[:, 0] = (fid // temporal_patch * temporal_patch).double()
    known = pid >= 0
    out[known, 1] = (pid[known] // cols).double()
    out[known, 2] = (pid[known] % cols).double()
    for f in torch.unique(fid[~known]).tolist():
        idx = torch.nonzero((fid == f) & ~known).flatten()
        k = int(idx.numel())
        from compressors.base import grid_for  # the grid `pool_grid` makes

        r, c = grid_for(k, rows, cols) if k <= rows * cols else (0, 0)
        if r * c == k:
            i = torch.arange(k)
            out[idx, 1] = ((i // c).double() + 0.5) * rows / r - 0.5
            out[idx, 2] = ((i % c).double() + 0.5) * cols / c - 0.5
        else:
            out[idx, 1], out[idx, 2] = (rows - 1) / 2, (cols - 1) / 2
    return out


class QwenVLBackbone(Backbone):
    """Any `qwen2_vl`, `qwen2_5_vl` or `qwen3_vl` checkpoint with its processor (see the module docstring)."""

    temporal_patch = 2

    def __init__(self, model: PreTrainedModel, tokenizer: Tokenizer, video_processor: BaseVideoProcessor, name: str,
                 chat_template: str | None = None, notice: str | None = None,
                 reasoning_preset: dict[str, Any] | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.video_processor = video_processor
        self.name = name
        self.chat_template = chat_template
        self.notice = notice
        #: VideoAuto-R1 checkpoints: their trained format and threshold (`answer.reasoning_qwen`)
        self.reasoning_preset = dict(reasoning_preset or {})
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        cfg = model.config
        self.model_type = str(cfg.model_type)
        if self.model_type not in FAMILY_TYPES:
            raise InvalidRequestError(f"{name}: model type {self.model_type!r} is not a Qwen-VL family type")
        vc = cfg.vision_config
        self.temporal_patch = int(getattr(vc, "temporal_patch_size", 2))
        self._merge = int(getattr(vc, "spatial_merge_size", 2))
        self._patch = int(vc.patch_size)
        self._tps = float(getattr(vc, "tokens_per_second", getattr(cfg, "tokens_per_second", 2) or 2))
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (VIDEO_PAD, VISION_START, VISION_END)}
        self._ids = ids
        self._plans: list[_Plan] = []
        self._deepstack: dict[bytes, torch.Tensor] = {}
        self._geometry: tuple[int, int, int] | None = None
        self._size = self._target_size(*_DEFAULT_GEOMETRY)

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_id: str, device: str | torch.device | None = "auto",
                        dtype: str | torch.dtype | None = "auto", reasoning_preset: dict[str, Any] | None = None,
                        **kwargs: Any) -> "QwenVLBackbone":
        transformers = require("transformers", purpose="Qwen-VL")
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        if reasoning_preset is None and model_id in VIDEOAUTO_R1:
            reasoning_preset = {"format": "videoauto-r1", "confidence_threshold": VIDEOAUTO_R1[model_id]}
        hub = {k: v for k, v in kwargs.items() if k == "local_files_only"}
        try:  # the processor first: it is small, and a checkpoint without one cannot be answered exactly
            processor = transformers.AutoProcessor.from_pretrained(model_id, **hub)
            if getattr(processor, "video_processor", None) is None:
                raise ValueError("its processor has no video processor")
            tokenizer = getattr(processor, "tokenizer", None) or transformers.AutoTokenizer.from_pretrained(
                model_id, **hub)
            model = transformers.AutoModelForImageTextToText.from_pretrained(model_id, dtype=dt, **kwargs)
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(model_id, err) from err
        model.to(dev)
        template = getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)
        return cls(model, tokenizer, processor.video_processor, name=model_id, chat_template=template,
                   reasoning_preset=reasoning_preset)

    # -- geometry ---------------------------------------------------------------------------------------
    def _target_size(self, num_frames: int, height: int, width: int) -> tuple[int, int]:
        """(H, W) the checkpoint's video processor resizes `num_frames` frames of height × width to."""
        vp = self.video_processor
        factor = self._patch * self._merge
        size = vp.size
        lo, hi = int(size["shortest_edge"]), int(size["longest_edge"])
        cap = bool(getattr(vp, "cap_pixels_per_frame", None))
        tokens = int(getattr(vp, "max_video_tokens", 0) or 0)
        if not getattr(vp, "do_resize", True):
            return height // factor * factor, width // factor * factor
        if self.model_type == "qwen3_vl":
            from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

            if cap:
                per = max(min(tokens * factor * factor, hi // num_frames), int(lo * 1.05))
                hi = per * num_frames
            return tuple(smart_resize(num_frames=num_frames, height=height, width=width, factor=factor,
                                      temporal_factor=self.temporal_patch, min_pixels=lo, max_pixels=hi))
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        if cap:
            total = int(tokens * factor * factor * 0.9)
            hi = max(min(hi, total * self.temporal_patch // num_frames), int(lo * 1.05))
        return tuple(smart_resize(height, width, factor=factor, min_pixels=lo, max_pixels=hi))

    def prepare_video(self, num_frames: int, height: int, width: int) -> None:
        """Fix the frame size (and so `frame_grid`) for a video of `num_frames` sampled frames of height × width,
        as the processor would resize them all at once."""
        geometry = (max(1, int(num_frames)), int(height), int(width))
        if geometry != self._geometry:
            self._geometry = geometry
            self._size = self._target_size(*geometry)

    # -- sizes ----------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    @property
    def frame_grid(self) -> tuple[int, int]:
        f = self._patch * self._merge
        return self._size[0] // f, self._size[1] // f

    @property
    def max_context(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def text_tokens_per_frame(self) -> int:  # type: ignore[override]
        """Qwen3-VL's "<t seconds>" + start/end tokens per group, spread over its two frames (for budgeting)."""
        return 6 if self.model_type == "qwen3_vl" else 0

    @property
    def video_token(self) -> str:
        return VIDEO_PAD

    # -- vision ---------------------------------------------------------------------------------------
    def _pixels(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 frames (n, H, W, 3) → the processor's flat patches and grid (1, 3), at this video's size."""
        from transformers.image_utils import SizeDict
        from transformers.video_processing_utils import BaseVideoProcessor

        vp = self.video_processor
        x = frames.permute(0, 3, 1, 2)[None]  # (1, n, 3, H, W) uint8, the processor's own layout
        h, w = self._size
        if tuple(x.shape[-2:]) != (h, w):
            x = BaseVideoProcessor.resize(vp, x, size=SizeDict(height=h, width=w), resample=vp.resample)
        out = vp(videos=[x[0]], do_resize=False, do_sample_frames=False, return_tensors="pt",
                 input_data_format="channels_first")
        return out["pixel_values_videos"], out["video_grid_thw"]

    @torch.inference_mode()
    def _encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Merged tokens (groups, rows, cols, D) and DeepStack features (each the same shape; Qwen3-VL only)."""
        pixels, grid = self._pixels(frames)
        out = self.model.model.get_video_features(pixels.to(self.device, self.dtype), grid.to(self.device))
        emb = torch.cat(list(out.pooler_output)) if isinstance(out.pooler_output, (tuple, list)) else out.pooler_output
        t, gh, gw = (int(v) for v in grid[0])
        shape = (t, gh // self._merge, gw // self._merge, emb.shape[-1])
        ds = [torch.cat(list(f)) if isinstance(f, (tuple, list)) else f
              for f in (getattr(out, "deepstack_features", None) or [])]
        return emb.reshape(shape), [f.reshape(shape) for f in ds]

    @torch.inference_mode()
    def frame_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (n, H, W, 3), taken in pairs → tokens (ceil(n/2), rows, cols, D), one row per group."""
        tokens, ds = self._encode(frames)
        if ds:
            self._remember_deepstack(tokens, ds)
        return tokens

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """The merged tokens per group (the merger is where the ViT meets the LLM: `project` is identity)."""
        return self.frame_tokens(frames)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def _remember_deepstack(self, tokens: torch.Tensor, ds: list[torch.Tensor]) -> None:
        flat = tokens.reshape(-1, tokens.shape[-1])
        stacked = torch.stack([f.reshape(-1, f.shape[-1]) for f in ds], dim=1)  # (N, 3, D)
        if len(self._deepstack) + flat.shape[0] > 2_000_000:
            self._deepstack.clear()
        for key, value in zip(_row_keys(flat), stacked):
            self._deepstack[key] = value

    # -- prompt ---------------------------------------------------------------------------------------
    def build_inputs(self, user_text: str, visual: VisualTokens, system: str | None = None,
                     assistant_prefix: str = "") -> PromptInputs:
        """Chat prompt with the visual tokens in their groups, plus the 3-D positions `lm_forward` uses."""
        p = self.prompt_ids(user_text, system, assistant_prefix)
        before, after = list(p.before), list(p.after)
        start, end = self._ids[VISION_START], self._ids[VISION_END]
        vis = visual.without_text()
        grid = self.frame_grid
        pos = token_positions(vis, grid, self.temporal_patch)
        ts = visual.timestamps.double()
        n_frames = max(1, int(visual.num_sampled_frames))
        group = (pos[:, 0].long() // self.temporal_patch)
        pieces: list[tuple[str, Any]] = []  # ("text", ids) | ("visual", (index tensor, rel positions (n, 3)))
        rel = torch.zeros(pos.shape[0], 3, dtype=torch.long)
        rel[:, 1] = pos[:, 1].floor().long()
        rel[:, 2] = pos[:, 2].floor().long()
        if self.model_type == "qwen3_vl":
            if before and before[-1] == start:
                before = before[:-1]
            if after and after[0] == end:
                after = after[1:]
            pieces.append(("text", before))
            for g in torch.unique(group).tolist():
                idx = torch.nonzero(group == g).flatten()
                a, b = g * self.temporal_patch, min(g * self.temporal_patch + 1, n_frames - 1)
                t = (float(ts[min(a, len(ts) - 1)]) + float(ts[min(b, len(ts) - 1)])) / 2
                pieces.append(("text", self.text_ids(f"<{t:.1f} seconds>") + [start]))
                pieces.append(("visual", (idx, rel[idx])))
                pieces.append(("text", [end]))
            pieces.append(("text", after))
        else:
            if self.model_type == "qwen2_5_vl":
                t0 = float(ts[0]) if len(ts) else 0.0
                first = (group * self.temporal_patch).clamp(max=max(len(ts) - 1, 0))
                secs = ts[first] - t0 if len(ts) else torch.zeros(len(group), dtype=torch.float64)
                rel[:, 0] = torch.floor(secs * self._tps + 1e-4).long()
            else:
                rel[:, 0] = group
            pieces += [("text", before), ("visual", (torch.arange(pos.shape[0]), rel)), ("text", after)]
        return self._assemble(pieces, vis, p, visual)

    def _assemble(self, pieces: list[tuple[str, Any]], vis: VisualTokens, p: Any, visual: VisualTokens
                  ) -> PromptInputs:
        embeds: list[torch.Tensor] = []
        positions: list[torch.Tensor] = []
        mask: list[torch.Tensor] = []
        order: list[torch.Tensor] = []
        cur = 0
        for kind, value in pieces:
            if kind == "text":
                if not value:
                    continue
                n = len(value)
                embeds.append(self.embed_ids(value))
                positions.append((torch.arange(n) + cur).expand(3, n))
                mask.append(torch.zeros(n, dtype=torch.bool))
                cur += n
            else:
                idx, rel = value
                if idx.numel() == 0:
                    continue
                block = (rel + cur).T  # (3, n)
                embeds.append(vis.embeds[idx].to(self.device, self.dtype))
                positions.append(block)
                mask.append(torch.ones(idx.numel(), dtype=torch.bool))
                order.append(idx)
                cur += max(self.frame_grid)  # transformers 5: text resumes after the grid's spatial extent
        x = torch.cat(embeds).unsqueeze(0)
        length = int(x.shape[1])
        if length > self.max_context:
            raise InvalidRequestError(
                f"prompt of {length} tokens ({vis.num_tokens} visual) exceeds the model's context of "
                f"{self.max_context}; lower --budget or the number of frames")
        pos = torch.cat(positions, dim=1).to(self.device)
        vmask = torch.cat(mask)
        deepstack = None
        if self.model_type == "qwen3_vl" and self._deepstack:
            deepstack, missing = self._deepstack_for(vis.embeds[torch.cat(order)] if order else vis.embeds[:0])
            visual.stats["deepstack_missing"] = missing
        plan = _Plan(weakref.ref(x), x.data_ptr(), length, pos, cur - length,
                     vmask.to(self.device) if deepstack is not None else None, deepstack)
        self._plans = [q for q in self._plans if q.ref() is not None][-7:] + [plan]
        # the question follows the video: everything before it is shared; else what precedes the question
        shared = length - len(p.after) if p.fixed_before == len(p.before) else p.fixed_before
        text = p.before_text + VIDEO_PAD + p.after_text
        return PromptInputs(x, length - vis.num_tokens, vis.num_tokens, text, prefix_len=shared)

    def _deepstack_for(self, tokens: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        d = tokens.shape[-1]
        out = torch.zeros(tokens.shape[0], 3, d, device=self.device, dtype=self.dtype)
        missing = 0
        for i, key in enumerate(_row_keys(tokens.to(self.dtype))):
            found = self._deepstack.get(key)
            if found is None:
                missing += 1
            else:
                out[i] = found.to(self.device, self.dtype)
        return [out[:, k] for k in range(out.shape[1])], missing

    # -- language -------------------------------------------------------------------------------------
    def input_embeddings(self) -> torch.nn.Embedding:
        return self.model.get_input_embeddings()

    def _find_plan(self, embeds: torch.Tensor, past: int = 0) -> _Plan | None:
        """The plan of the prompt `embeds` is a slice of, starting `past` tokens in (the prefix cache prefills
        the question after a stored prefix), found by memory address and length."""
        start = embeds.data_ptr() - past * embeds.stride(1) * embeds.element_size()
        for plan in reversed(self._plans):
            x = plan.ref()
            if x is not None and plan.ptr == start and past + embeds.shape[1] <= plan.length:
                return plan
        return None

    @torch.inference_mode()
    def lm_forward(self, inputs_embeds: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
        lm = self.model.model.language_model
        x = inputs_embeds.to(self.device, self.dtype)
        past = int(cache.get_seq_length()) if cache is not None else 0
        length = int(x.shape[1])
        plan = self._find_plan(inputs_embeds, past)
        delta = plan.delta if plan is not None else int(getattr(cache, "_videollm_rope_delta", 0))
        if length == 1 and cache is not None and plan is None:
            hidden, cache = forward_last(lm, x, cache, position_offset=delta)
        else:
            extra: dict[str, Any] = {}
            if plan is not None:
                end = past + length
                positions = plan.positions[:, None, past:end]
                if plan.deepstack is not None and bool(plan.visual_mask[past:end].any()):
                    skip = int(plan.visual_mask[:past].sum())  # visual tokens already in the reused prefix
                    count = int(plan.visual_mask[past:end].sum())
                    extra = {"visual_pos_masks": plan.visual_mask[None, past:end],
                             "deepstack_visual_embeds": [d[skip:skip + count] for d in plan.deepstack]}
            else:
                positions = (torch.arange(length, device=self.device) + past + delta).expand(3, 1, length)
            out = lm(inputs_embeds=x, position_ids=positions, return_dict=True,
                     **cache_kwargs(cache), **extra)
            hidden, cache = out.last_hidden_state[:, -1:], output_cache(out)
        if cache is not None:
            cache._videollm_rope_delta = delta
        return self.model.lm_head(hidden).float()[:, -1], cache

    def sequence_logits(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        plan = self._find_plan(inputs_embeds)
        plan = plan if plan is not None and plan.length == inputs_embeds.shape[1] else None
        extra: dict[str, Any] = {}
        positions = None
        if plan is not None:
            positions = plan.positions[:, None, :]
            if plan.deepstack is not None:
                extra = {"visual_pos_masks": plan.visual_mask[None], "deepstack_visual_embeds": plan.deepstack}
        out = self.model.model.language_model(inputs_embeds=inputs_embeds.to(self.dtype), position_ids=positions,
                                              use_cache=False, return_dict=True, **extra)
        return self.model.lm_head(out.last_hidden_state).float()

    # -- optional capabilities ------------------------------------------------------------------------
    def quantizable_modules(self) -> dict[str, torch.nn.Module]:
        """The language model (without embeddings and LM head) and the ViT with its merger(s)."""
        return {"llm": self.model.model.language_model, "vision": self.model.model.visual}

    def causal_lm(self) -> torch.nn.Module:
        return self.model

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "family": self.model_type, "temporal_patch": self.temporal_patch,
                "frame_size": list(self._size)}


def _row_keys(rows: torch.Tensor) -> list[bytes]:
    """Exact value keys of (N, D) token rows (DeepStack lookup): their bytes, viewed as integers."""
    x = rows.detach().contiguous().cpu()
    view = x.view(torch.int16) if x.element_size() == 2 else x.view(torch.int32)
    arr = view.numpy()
    return [r.tobytes() for r in arr]


# ---- presets: hub checkpoints ------------------------------------------------------------------------
#: VideoAuto-R1 (IVUL-KAUST/VideoAuto-R1, arXiv 2601.05175): confidence threshold per base (eval scripts)
VIDEOAUTO_R1 = {"IVUL-KAUST/VideoAuto-R1-Qwen2.5-VL-7B": 0.97, "IVUL-KAUST/VideoAuto-R1-Qwen3-VL-8B": 0.98}

HUB_PRESETS = {
    "qwen2-vl-2b": "Qwen/Qwen2-VL-2B-Instruct",
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen3-vl-2b": "Qwen/Qwen3-VL-2B-Instruct",
    "qwen3-vl-4b": "Qwen/Qwen3-VL-4B-Instruct",
    "qwen3-vl-8b": "Qwen/Qwen3-VL-8B-Instruct",
    "videoauto-r1-qwen2.5-vl-7b": "IVUL-KAUST/VideoAuto-R1-Qwen2.5-VL-7B",
    "videoauto-r1-qwen3-vl-8b": "IVUL-KAUST/VideoAuto-R1-Qwen3-VL-8B",
}


for _name, _mid in HUB_PRESETS.items():
    register_preset(_name, _mid)(QwenVLBackbone.from_pretrained)

__all__ = ["FAMILY_TYPES", "HUB_PRESETS", "QwenVLBackbone", "VIDEOAUTO_R1", "token_positions"]
