"""Tempo (Vision-CAIR, 2025): a small VLM reads each short segment with the query, and a strict visual budget
is spent where it matters.

1. **Segments**: frames sampled at 2 fps (up to 1024), cut into 8-frame non-overlapping segments; a 1-frame
   tail is read as two copies of its frame by the SVLM (the reference's rule), but keeps one frame's tokens.
2. **Relevance**: the SVLM sees one segment and the query (options included) and is asked for Yes/No; the
   score is p(Yes) / (p(Yes) + p(No)) at the first answer position, in one batched forward per group of
   segments (`yes_no_relevance`). No generation. The SVLM is the pipeline's own backbone unless `svlm=NAME`.
3. **Adaptive Token Allocation** (`ata.allocate`): the reference's linear rule, strict: the total never
   exceeds the budget, timestamp text included (see ata.py for what happens with more segments than budget).
4. **Compression**: training-free: the backbone's projected tokens of the segment are reduced by pooling to
   exactly a_i tokens (`reduce_segment`). A backbone that carries Tempo's trained memory tokens
   (`SegmentMemoryEncoder`, the `tempo-6b` preset) instead gives K memory tokens per segment, of which the
   first a_i are kept ("semantic front-loading" holds only for those trained tokens).
5. Each kept segment is preceded by its time as text, "<12.0 seconds>" (segment centre), embedded by the LLM
   and counted in the budget (`patch_ids == TEXT_PATCH_ID`).

Per-segment relevance, time range and tokens are reported in `VisualTokens.stats["segments"]`.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from videollm.errors import InvalidRequestError
from videollm.models import get_model_like
from videollm.protocols import RelevancePrior, SegmentMemoryEncoder, VideoLanguageModel, VisionTower, temporal_patch
from videollm.timing import stage
from videollm.types import TEXT_PATCH_ID, VisualTokens
from videollm.video import Video
from videollm.video.sampling import SamplingConfig, plan_indices

from . import COMPRESSORS
from .ata import Allocation, allocate, tokens_per_segment
from .base import CompressorConfig, TokenCompressor, timed_chunks

logger = logging.getLogger(__name__)

#: The SVLM's instruction, after the reference's inference prompt (minus the memory-token sentence, which
#: only means something to Tempo's trained SVLM).
RELEVANCE_SYSTEM = ("You are a query-conditioned judge of one short segment of a long video. Answer exactly "
                    "'Yes' or 'No': is this segment relevant to the Query?")
RELEVANCE_USER = "\nQuery:\n{query}\nIs this segment relevant to the Query? Answer Yes or No."
RELEVANCE_MODES = ("yesno", "none")


@dataclass
class TempoConfig(CompressorConfig):
    fps: float = 2.0  # Tempo samples at 2 fps ...
    max_frames: int = 1024  # ... up to 1024 frames
    resample: bool = True  # False: keep the pipeline's sampling as it is
    segment_frames: int = 8  # frames per segment (stride = window: non-overlapping)
    min_tokens_per_frame: float = 0.5  # m = 4 tokens per 8-frame segment, as the reference
    max_tokens_per_frame: float = 16.0  # M = 128 per 8-frame segment (the reference's K memory tokens)
    relevance: str = "yesno"  # "yesno": the SVLM's Yes/No; "none": flat scores (uniform allocation)
    relevance_batch: int = 8  # segments per batched relevance forward
    relevance_tokens_per_frame: int | None = None  # pool what the SVLM sees (None: native tokens)
    timestamps: bool = True  # "<t seconds>" before each segment, counted in the budget
    svlm: str | None = None  # None: the pipeline's own backbone; else a model name or path

    def validate(self) -> None:
        """Checked when the compressor's options are parsed, before any model loads."""
        super().validate()
        c = self
        problems = []
        if not (c.fps > 0 and math.isfinite(c.fps)):
            problems.append(f"fps must be > 0, got {c.fps}")
        if c.segment_frames < 1 or c.max_frames < 1 or c.relevance_batch < 1 or c.chunk_size < 1:
            problems.append("segment_frames, max_frames, relevance_batch and chunk_size must be >= 1")
        if not 0 < c.min_tokens_per_frame <= c.max_tokens_per_frame:
            problems.append("need 0 < min_tokens_per_frame <= max_tokens_per_frame")
        if c.relevance not in RELEVANCE_MODES:
            problems.append(f"relevance must be one of {RELEVANCE_MODES}, got {c.relevance!r}")
        if c.relevance_tokens_per_frame is not None and c.relevance_tokens_per_frame < 1:
            problems.append("relevance_tokens_per_frame must be >= 1 (or null for native)")
        if problems:
            raise InvalidRequestError("tempo: " + "; ".join(problems))


@dataclass(frozen=True)
class Segment:
    start: int  # first sampled-frame position
    stop: int  # one past the last

    @property
    def frames(self) -> int:
        return self.stop - self.start


def cut_segments(num_frames: int, window: int) -> list[Segment]:
    """Non-overlapping windows of `window` frames; the last one may be shorter (down to one frame)."""
    if window < 1:
        raise ValueError("window must be >= 1")
    return [Segment(s, min(s + window, num_frames)) for s in range(0, num_frames, window)]


def segment_centre(timestamps: np.ndarray, seg: Segment, window: int, interval: float) -> float:
    """The reference's stamp: start time + window/2 sampling intervals (the centre of a full segment)."""
    return float(timestamps[seg.start]) + window / 2 * interval


def sampling_interval(video: Video) -> float:
    """Seconds per sampled frame, as the reference's "real fps" (sampled frames / clip duration)."""
    info = video.info
    if info.fps > 0 and info.num_frames > 0 and len(video) > 0:
        return info.num_frames / info.fps / len(video)
    ts = video.timestamps.numpy()
    return float(np.median(np.diff(ts))) if len(ts) > 1 else 0.5


def stamp_text(seconds: float) -> str:
    return f"<{seconds:.1f} seconds>"


def reduce_frame(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """One frame's (rows, cols, D) grid → exactly k tokens (k ≤ rows*cols): 2-D average pooling to the
    smallest aspect-keeping grid with at least k cells, then 1-D average pooling of its raster to k."""
    rows, cols, d = tokens.shape
    if k >= rows * cols:
        return tokens.reshape(rows * cols, d)
    r = max(1, min(rows, math.ceil(math.sqrt(k * rows / cols))))
    c = max(1, min(cols, math.ceil(k / r)))
    while r * c < k:  # rounding: grow the grid until it holds k cells
        r, c = (r + 1, c) if r < rows else (r, c + 1)
    x = F.adaptive_avg_pool2d(tokens.permute(2, 0, 1)[None].float(), (r, c))[0]  # (D, r, c)
    flat = x.reshape(d, r * c)
    if r * c > k:
        flat = F.adaptive_avg_pool1d(flat[None], k)[0]
    return flat.T.to(tokens.dtype)


def reduce_segment(tokens: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A segment's native tokens (T, rows, cols, D) → exactly k tokens (k ≥ 1) and the frame (0..T-1) each
    token mostly comes from. k ≥ T: k split over the frames as evenly as possible, each frame pooled alone;
    k < T: the frames fall into k consecutive groups, each averaged over time and space into one token."""
    t, rows, cols, d = tokens.shape
    if k < 1:
        raise ValueError("k must be >= 1")
    k = min(k, t * rows * cols)
    if k >= t:
        per = np.full(t, k // t)
        per[np.round(np.linspace(0, t - 1, k % t)).astype(int) if k % t else []] += 1
        per = _fix_counts(per, k, rows * cols)
        out = [reduce_frame(tokens[i], int(n)) for i, n in enumerate(per) if n > 0]
        frames = torch.cat([torch.full((int(n),), i, dtype=torch.long) for i, n in enumerate(per) if n > 0])
        return torch.cat(out), frames
    bounds = np.round(np.linspace(0, t, k + 1)).astype(int)
    out = torch.stack([tokens[a:b].float().mean(dim=(0, 1, 2)) for a, b in zip(bounds[:-1], bounds[1:])])
    frames = torch.as_tensor([(a + b - 1) // 2 for a, b in zip(bounds[:-1], bounds[1:])], dtype=torch.long)
    return out.to(tokens.dtype), frames


def _fix_counts(per: np.ndarray, k: int, cap: int) -> np.ndarray:
    """Per-frame counts summing to k with none above `cap` (linspace rounding can repeat an index)."""
    per = np.minimum(per, cap)
    i = 0
    while per.sum() < k:
        if per[i % len(per)] < cap:
            per[i % len(per)] += 1
        i += 1
    return per


@COMPRESSORS.register("tempo")
class TempoCompressor(TokenCompressor):
    """Query-aware segment relevance → strict Adaptive Token Allocation → per-segment compression."""

    name = "tempo"
    config_class = TempoConfig
    config: TempoConfig
    #: the pipeline passes the question *with its options* as the query (Tempo's SVLM reads both)
    wants_options: ClassVar[bool] = True


    # -- the SVLM ---------------------------------------------------------------------------------------
    def _svlm(self) -> VideoLanguageModel:
        """The model that judges relevance: the pipeline's own backbone, or another one by name from the
        process-wide model cache, loaded as the backbone was (device, dtype, `--quant` for its LLM and
        `--vision-quant` for its tower, CPU int8): one instance shared by every pipeline, the demo and eval."""
        if self.config.svlm is None:
            return self.backbone
        return get_model_like(self.config.svlm, self.backbone)

    # -- sampling ---------------------------------------------------------------------------------------
    def densify(self, video: Video) -> Video:
        """Sample at `fps` (up to `max_frames`) from the file, like the reference; in-memory videos as given."""
        info = video.info
        if not self.config.resample or info.fps <= 0 or video.in_memory:
            return video
        target = plan_indices(info.frame_times(), SamplingConfig(num_frames=None, fps=self.config.fps,
                                                                 max_frames=self.config.max_frames))
        if len(target) == 0 or np.array_equal(target, video.indices):
            return video
        return video.resampled(target)  # same decoder, same decode log

    # -- relevance --------------------------------------------------------------------------------------
    def yes_no_ids(self, svlm: VideoLanguageModel) -> tuple[int, int]:
        """The first token of "Yes" and of "No" in the SVLM's tokenizer (asked, never hard-coded)."""
        tok = svlm.tokenizer
        yes = tok("Yes", add_special_tokens=False)["input_ids"]
        no = tok("No", add_special_tokens=False)["input_ids"]
        if not yes or not no or yes[0] == no[0]:
            raise InvalidRequestError(f"tempo: {svlm.name}'s tokenizer cannot tell 'Yes' from 'No'")
        return int(yes[0]), int(no[0])

    @torch.inference_mode()
    def yes_no_relevance(self, svlm: VideoLanguageModel, segments: list[VisualTokens], query: str) -> torch.Tensor:
        """p(Yes) / (p(Yes) + p(No)) at the first answer position, for each segment's prompt.

        Prompts are built with the SVLM's own `build_inputs` (its chat template, its visual splice) and run
        `relevance_batch` at a time through `batch_last_logits` (one left-padded forward per group).
        """
        yes, no = self.yes_no_ids(svlm)
        user = RELEVANCE_USER.format(query=query.strip() or "Describe this content.")
        scores = []
        for a in range(0, len(segments), self.config.relevance_batch):
            group = segments[a : a + self.config.relevance_batch]
            prompts = [svlm.build_inputs(user, seg, system=RELEVANCE_SYSTEM).embeds[0] for seg in group]
            logits = svlm.batch_last_logits(prompts).float().cpu()
            margin = logits[:, yes] - logits[:, no]  # sigmoid of it = p(Yes) / (p(Yes) + p(No))
            if isinstance(svlm, RelevancePrior):
                margin = margin + torch.tensor([svlm.relevance_prior(query, seg) for seg in group])
            scores.append(torch.sigmoid(margin))
        return torch.cat(scores)

    def _svlm_view(self, tokens: torch.Tensor, frame_ids: torch.Tensor, timestamps: torch.Tensor, n: int
                   ) -> VisualTokens:
        """What the SVLM sees of one segment: its native tokens (optionally pooled), one frame after another."""
        k = self.config.relevance_tokens_per_frame
        rows, cols = tokens.shape[1:3]
        per = [reduce_frame(f, min(k, rows * cols)) if k else f.reshape(rows * cols, -1) for f in tokens]
        ids = torch.cat([torch.full((p.shape[0],), int(f), dtype=torch.long) for p, f in zip(per, frame_ids)])
        return VisualTokens(torch.cat(per), ids, torch.full_like(ids, -1), timestamps, n)

    # -- the whole method -------------------------------------------------------------------------------
    def compress(self, video: Video, query: str | None, budget: int | None) -> VisualTokens:
        video = self.densify(video)
        if isinstance(self.backbone, SegmentMemoryEncoder):
            return self._compress_with_memory(video, query, budget)
        return self._compress_training_free(video, query, budget)

    def _add_stamp(self, text: str, frame: int, parts: list[torch.Tensor], frames: list[torch.Tensor],
                   patches: list[torch.Tensor]) -> None:
        """The segment's "<t seconds>" text, embedded by the LLM, marked as text tokens of its first frame."""
        e = self.backbone.embed_text(text).detach()
        parts.append(e)
        frames.append(torch.full((e.shape[0],), frame, dtype=torch.long))
        patches.append(torch.full((e.shape[0],), TEXT_PATCH_ID, dtype=torch.long))

    def _stamps(self, video: Video, segments: list[Segment]) -> tuple[list[str], list[float]]:
        ts = video.timestamps.numpy()
        step = sampling_interval(video)
        centres = [segment_centre(ts, s, self.config.segment_frames, step) for s in segments]
        return [stamp_text(c) for c in centres], centres

    def _allocate(self, scores: torch.Tensor, segments: list[Segment], stamps: list[str], budget: int | None,
                  capacity: int, native: list[int] | None = None) -> Allocation:
        """ATA with m/M from a full segment's per-frame rates, M capped at `capacity` (the tokens a segment can
        give: its native count, or its memory tokens); `native` then caps each segment (a short tail)."""
        stamp_costs = [len(self.backbone.tokenizer(s, add_special_tokens=False)["input_ids"]) if self.config.timestamps
                       else 0 for s in stamps]
        full = self.config.segment_frames
        big_m = min(capacity, tokens_per_segment(self.config.max_tokens_per_frame, full))
        m = min(big_m, tokens_per_segment(self.config.min_tokens_per_frame, full))
        limit = budget if budget is not None else sum(stamp_costs) + big_m * len(segments)
        alloc = allocate(scores.numpy(), limit, m, big_m, stamp_costs)
        if not alloc.kept.any():  # not even one stamp + token fits: the picture matters more than its time
            alloc = allocate(scores.numpy(), limit, m, big_m, None)
        if native is None:
            return alloc
        return Allocation(np.minimum(alloc.tokens, native), alloc.stamp_tokens, alloc.min_tokens, alloc.max_tokens)

    def _assemble(self, segments: list[Segment], alloc: Allocation, stamps: list[str],
                  take: Callable[[int, Segment, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Each kept segment's stamp, then `take(i, segment, k)`'s (tokens, frame index, patch index)."""
        parts: list[torch.Tensor] = []
        frames: list[torch.Tensor] = []
        patches: list[torch.Tensor] = []
        for i, seg in enumerate(segments):
            k = int(alloc.tokens[i])
            if k == 0:
                continue
            if alloc.stamp_tokens[i] > 0:
                self._add_stamp(stamps[i], seg.start, parts, frames, patches)
            toks, seg_frames, seg_patches = take(i, seg, k)
            parts.append(toks.to(self.backbone.dtype))
            frames.append(seg_frames)
            patches.append(seg_patches)
        return parts, frames, patches

    def _compress_training_free(self, video: Video, query: str | None, budget: int | None) -> VisualTokens:
        segments = cut_segments(len(video), self.config.segment_frames)
        svlm = self._svlm()
        same = svlm is self.backbone
        native: list[torch.Tensor] = []  # per segment (T, rows, cols, D) of the answering backbone
        seg_views: list[VisualTokens] = []
        ts = video.timestamps
        want_relevance = self.config.relevance == "yesno" and len(segments) > 1
        for batch_start, batch in self._segment_batches(video, segments):
            with stage("vision"):
                tok = tokens_per_sampled_frame(self.backbone, batch.frames)
                stok = tok if same else (tokens_per_sampled_frame(svlm, batch.frames) if want_relevance else None)
            for seg in segments:
                if batch_start <= seg.start < batch_start + len(batch):
                    a, b = seg.start - batch_start, seg.stop - batch_start
                    native.append(tok[a:b])
                    if want_relevance:
                        s_tok = stok[a:b]
                        if seg.frames == 1:  # the reference duplicates a 1-frame tail for its SVLM
                            s_tok = torch.cat([s_tok, s_tok])
                        ids = torch.arange(seg.start, seg.stop).repeat(2 if seg.frames == 1 else 1)
                        seg_views.append(self._svlm_view(s_tok, ids, ts, len(video)))
        if want_relevance:
            with stage("relevance"):
                scores = self.yes_no_relevance(svlm, seg_views, query or "")
        else:
            scores = torch.full((len(segments),), 0.5)
        stamps, centres = self._stamps(video, segments)
        per_frame = self.backbone.tokens_per_frame
        alloc = self._allocate(scores, segments, stamps, budget, capacity=per_frame * self.config.segment_frames,
                               native=[per_frame * s.frames for s in segments])

        def pooled(i: int, seg: Segment, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            with stage("compress"):
                toks, offs = reduce_segment(native[i], k)
            return toks, offs + seg.start, torch.full((toks.shape[0],), -1, dtype=torch.long)

        parts, frames, patches = self._assemble(segments, alloc, stamps, pooled)
        return self._pack(video, parts, frames, patches, segments, scores, alloc, centres,
                          mode="training-free pooling", svlm=svlm.name)

    def _segment_batches(self, video: Video, segments: list[Segment]):  # type: ignore[no-untyped-def]
        """Decode whole segments at a time (chunk_size rounded up to a multiple of the segment length)."""
        w = self.config.segment_frames
        chunk = max(w, (self.config.chunk_size // w) * w)
        start = 0
        for batch in timed_chunks(video, chunk, desc="tempo segments"):
            yield start, batch
            start += len(batch)

    def _compress_with_memory(self, video: Video, query: str | None, budget: int | None) -> VisualTokens:
        """Tempo's own path: trained memory tokens per segment, relevance from the same pass, head truncation."""
        segments = cut_segments(len(video), self.config.segment_frames)
        memory, scores = [], []
        group = self.config.relevance_batch
        for batch_start, batch in self._segment_batches(video, segments):  # stream: one chunk in memory
            inside = [s for s in segments if batch_start <= s.start < batch_start + len(batch)]
            clips = [batch.frames[s.start - batch_start : s.stop - batch_start] for s in inside]
            times = [batch.timestamps[s.start - batch_start : s.stop - batch_start].tolist() for s in inside]
            for a in range(0, len(clips), group):
                with stage("relevance"):
                    mem, rel = self.backbone.encode_segments(clips[a : a + group], query or "", times[a : a + group])
                memory.append(mem)
                scores.append(rel.float().cpu())
        mem_all = torch.cat(memory)
        rel_all = torch.cat(scores)
        if self.config.relevance == "none" or len(segments) == 1:
            rel_all = torch.full_like(rel_all, 0.5)
        stamps, centres = self._stamps(video, segments)
        alloc = self._allocate(rel_all, segments, stamps, budget, capacity=int(mem_all.shape[1]))

        def head(i: int, seg: Segment, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            # head truncation: memory tokens are front-loaded
            return mem_all[i, :k], torch.full((k,), (seg.start + seg.stop - 1) // 2, dtype=torch.long), torch.arange(k)

        parts, frames, patches = self._assemble(segments, alloc, stamps, head)
        return self._pack(video, parts, frames, patches, segments, rel_all, alloc, centres,
                          mode="memory tokens (head truncation)", svlm=self.backbone.name)

    def _pack(self, video: Video, parts: list[torch.Tensor], frames: list[torch.Tensor],
              patches: list[torch.Tensor], segments: list[Segment], scores: torch.Tensor, alloc: Allocation,
              centres: list[float], mode: str, svlm: str) -> VisualTokens:
        if not parts:
            raise InvalidRequestError("tempo kept no visual tokens")
        ts = video.timestamps
        seg_stats = []
        for i, seg in enumerate(segments):
            seg_stats.append({
                "start": round(float(ts[seg.start]), 3), "end": round(float(ts[seg.stop - 1]), 3),
                "centre": round(centres[i], 3), "frames": seg.frames,
                "relevance": round(float(scores[i]), 4), "tokens": int(alloc.tokens[i]),
                "stamp_tokens": int(alloc.stamp_tokens[i]),
            })
        visual_tokens = int(alloc.tokens.sum())
        stats = {
            "mode": mode, "svlm": svlm, "segments": seg_stats, "num_segments": len(segments),
            "dropped_segments": int((alloc.tokens == 0).sum()), "segment_tokens": visual_tokens,
            "timestamp_tokens": int(alloc.stamp_tokens.sum()), "min_tokens": alloc.min_tokens,
            "max_tokens": alloc.max_tokens,
            "tokens_per_frame_mean": round(visual_tokens / max(1, len(video)), 3),
        }
        embeds = torch.cat([p.to(self.backbone.dtype) for p in parts])
        return VisualTokens(embeds=embeds, frame_ids=torch.cat(frames), patch_ids=torch.cat(patches),
                            timestamps=ts, num_sampled_frames=len(video), stats=stats)


__all__ = ["RELEVANCE_SYSTEM", "RELEVANCE_USER", "RelevancePrior", "Segment", "SegmentMemoryEncoder", "TempoCompressor",
           "TempoConfig", "cut_segments", "reduce_frame", "reduce_segment", "sampling_interval", "segment_centre",
           "stamp_text"]


def tokens_per_sampled_frame(backbone: VisionTower, frames: torch.Tensor) -> torch.Tensor:
    """One token grid per frame: a backbone encoding frames in temporal groups (Qwen-VL: pairs) gives each
    frame its group's tokens (both frames of a pair then share positions; the budget counts what is kept)."""
    tok = backbone.frame_tokens(frames)
    tp = temporal_patch(backbone)
    return tok if tp == 1 else tok.repeat_interleave(tp, dim=0)[: frames.shape[0]]
