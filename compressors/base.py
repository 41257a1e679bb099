"""The compressor seam: `compressor(video, query=..., budget=...) -> VisualTokens`.

A compressor is built with the backbone injected and sees the video itself, not precomputed features,
because the methods differ in what they consume (LongVU picks frames before the vision tower runs;
STORM needs pre-projector features; Tempo feeds pixels to its own model). The base class validates the
budget, streams frames chunk by chunk, and guarantees the budget is never exceeded.
"""
from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from videollm.budget import MAX_BUDGET, check_budget
from videollm.errors import InvalidRequestError
from videollm.feature_cache import cached_chunks, default_cache, video_key
from videollm.models import load_report
from videollm.options import build_config, non_defaults
from videollm.protocols import SupportsVideoGeometry, VideoLanguageModel, VisionTower, temporal_patch
from videollm.timing import stage
from videollm.types import VisualTokens
from videollm.video import Video
from videollm.video.sampling import uniform_indices

logger = logging.getLogger(__name__)

T = TypeVar("T")
PROGRESS_MIN_FRAMES = 128  # show a progress bar from this many frames on


@dataclass
class CompressorConfig:
    """Options every compressor shares; subclasses extend it with their own dataclass and `validate()`."""

    chunk_size: int = 16  # frames through the vision tower at once: bounds memory for long videos

    def validate(self) -> None:
        """Raise `InvalidRequestError` for a value no run can use (called before any model loads)."""
        if int(self.chunk_size) < 1:
            raise InvalidRequestError(f"chunk_size must be >= 1, got {self.chunk_size}")


class TokenCompressor(ABC):
    """`compressor(video, query=..., budget=...) -> VisualTokens`; subclasses implement `compress`.

    Built with the backbone injected (its `VisionTower` at least; query-aware methods also use its
    `PromptBuilder` / `LanguageModel`), and with a validated `config_class` instance.
    """

    name: ClassVar[str] = "base"
    config_class: ClassVar[type[CompressorConfig]] = CompressorConfig
    backbone: VideoLanguageModel
    #: True: the pipeline passes the question with its options as `query` (Tempo's SVLM reads both)
    wants_options: ClassVar[bool] = False

    def __init__(self, backbone: VideoLanguageModel, config: CompressorConfig | None = None, **overrides: Any):
        self.backbone = backbone
        self.config = self.make_config(config, **overrides)

    @classmethod
    def build_config(cls, values: CompressorConfig | Mapping[str, Any] | None = None) -> CompressorConfig:
        """The one way options become this compressor's config: a dict's names and types checked
        (`build_dataclass`), a config object's types (`check_fields`), then its `validate()`. A config that
        passed this already is trusted as it is (`videollm.options.mark_checked`)."""
        return build_config(cls.config_class, values, f"{cls.name} option",
                            f"compressor {cls.name!r} takes a {cls.config_class.__name__} or an object of option "
                            f"names and values")

    @classmethod
    def make_config(cls, config: CompressorConfig | None = None, **overrides: Any) -> CompressorConfig:
        """`config` (or the defaults) with keyword `overrides` (`create_compressor("pool", bb, tokens_per_frame=16)`),
        through `build_config`."""
        if not overrides:
            return cls.build_config(config)
        if config is not None and not isinstance(config, cls.config_class):
            return cls.build_config(config)  # refused there, with the config class named
        base = {f.name: getattr(config, f.name) for f in fields(config) if f.init} if config is not None else {}
        return cls.build_config({**base, **overrides})

    def __call__(self, video: Video, query: str | None = None, budget: int | None = None) -> VisualTokens:
        budget = check_budget(budget)  # the pipeline checked it already; a direct call gets the same message
        if len(video) == 0:
            raise InvalidRequestError("the video has no sampled frames")
        prepare_video(self.backbone, video)
        with torch.inference_mode():  # frames' features are inference tensors; trained modules run as in eval
            out = self.compress(video, query=query, budget=budget)
        if budget is not None and out.num_tokens > budget:
            logger.warning("%s returned %d tokens for a budget of %d; trimming", self.name, out.num_tokens, budget)
            out = trim_to_budget(out, budget)
        out.stats.setdefault("compressor", self.name)
        out.stats.setdefault("budget", budget)
        out.stats["visual_tokens"] = out.num_tokens
        out.stats["kept_frames"] = len(out.kept_frames)
        return out

    @abstractmethod
    def compress(self, video: Video, query: str | None, budget: int | None) -> VisualTokens: ...

    # -- helpers shared by compressors ----------------------------------------------------------------
    def iter_frame_tokens(self, video: Video, positions: np.ndarray | None = None
                          ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield (positions, native tokens (n, rows, cols, D)) chunk by chunk: decode and vision timed apart."""
        return self._iter_frames(video, positions, self.backbone.frame_tokens, "tokens")

    def iter_frame_features(self, video: Video, positions: np.ndarray | None = None
                            ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield (positions, pre-projector features (n, h, w, Dv)) chunk by chunk, timed like the tokens
        (STORM's temporal encoder reads these; `backbone.project` maps them to LLM space)."""
        return self._iter_frames(video, positions, self.backbone.encode_frames, "features")

    def _iter_frames(self, video: Video, positions: np.ndarray | None, fn: Callable[[torch.Tensor], torch.Tensor],
                     kind: str) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        pos_all = np.arange(len(video)) if positions is None else np.asarray(positions, dtype=np.int64)
        size = self.config.chunk_size
        tp = temporal_patch(self.backbone)
        if tp > 1:  # frames go through the tower in fixed groups (Qwen-VL): one token set per group
            pos_all = np.unique(pos_all // tp) * tp
            size = ceil_div(size, tp) * tp

        def compute(missing: np.ndarray) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
            if tp > 1:
                yield from _group_compute(video, missing, tp, size, fn)
                return
            start = 0
            for batch in timed_chunks(video, size, missing, "vision"):
                n = len(batch)
                with stage("vision"):
                    out = fn(batch.frames)
                # a frame that did not decode is left out of its batch: the batch says which positions it holds
                pos = batch.positions.numpy() if batch.positions is not None else missing[start : start + n]
                yield pos, out
                start += n

        # encode once, ask many: the features depend on the frames and the model, never on the question; the
        # decode size, dtype and what loading did (quantization, CPU int8; the model cache's report) are in the
        # key because they change the output of one model
        bb = self.backbone
        report = load_report(bb)
        loaded = report.feature_tag() if report is not None else (repr(None), "none")
        key = video_key(video, bb, kind, extra=(video.info.height, video.info.width, str(bb.dtype),
                                                *loaded))
        cache = default_cache()
        if key is None or not cache.has_any(key, pos_all.tolist()):  # first pass: one stream, decode prefetched
            for pos, out in compute(pos_all):
                if key is not None:
                    cache.put(key, pos.tolist(), out)
                yield pos, out
            return
        yield from cached_chunks(cache, key, pos_all, size, compute, device=bb.device)


def prepare_video(backbone: VisionTower, video: Video) -> None:
    """Tell a backbone whose token grid depends on the video (Qwen-VL's resize) which video comes next."""
    if isinstance(backbone, SupportsVideoGeometry):
        backbone.prepare_video(len(video), video.info.height, video.info.width)


def _group_compute(video: Video, groups: np.ndarray, tp: int, size: int, fn: Callable[[torch.Tensor], torch.Tensor]
                   ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Encode whole temporal groups (sampled frames g..g+tp-1, starting at each of `groups`): a group cut short
    (the video's end, or a frame that did not decode) repeats its last frame, as the reference processor pads."""
    n = len(video)
    frames = np.unique(np.concatenate([np.arange(g, min(g + tp, n)) for g in groups.tolist()]))
    for batch in timed_chunks(video, size, frames, "vision"):
        pos = batch.positions.numpy() if batch.positions is not None else frames[: len(batch)]
        starts = pos // tp * tp
        parts, kept = [], []
        for g in np.unique(starts).tolist():
            sel = torch.from_numpy(np.nonzero(starts == g)[0])
            f = batch.frames[sel]
            if f.shape[0] < tp:
                f = torch.cat([f, f[-1:].expand(tp - f.shape[0], -1, -1, -1)])
            parts.append(f)
            kept.append(g)
        with stage("vision"):
            out = fn(torch.cat(parts))
        yield np.asarray(kept, dtype=np.int64), out


class WeightedCompressor(TokenCompressor, torch.nn.Module):
    """A compressor that owns trainable modules (STORM's temporal encoder, a learned projector).

    It is an `nn.Module`: `to()`, `state_dict()`, `parameters()` behave as usual, and `save_pretrained(dir)`
    / `from_pretrained(dir, backbone)` round-trip it as `config.json` ({"compressor": name, "config": ...})
    plus `model.safetensors`. The backbone is held outside the module tree, so it is never saved with it.
    `quantizable_modules()` offers its children to `quantize_backbone` (role "vision" unless a key says
    "llm", see `quant_role`). A second, shared model (a small VLM, DINOv2) comes from
    `videollm.models.get_model`, not from these weights.
    """

    def __init__(self, backbone: VideoLanguageModel, config: CompressorConfig | None = None, **overrides: Any):
        torch.nn.Module.__init__(self)
        object.__setattr__(self, "backbone", backbone)  # never a submodule, even if the backbone is a Module
        self.config = self.make_config(config, **overrides)

    __call__ = TokenCompressor.__call__  # not nn.Module's forward dispatch

    def quantizable_modules(self) -> dict[str, torch.nn.Module]:
        return dict(self.named_children())

    def shared_model(self, attr: str, name: str, **get_model_args: Any) -> Any:
        """`self.<attr>` = the cache's one instance of model `name` (`videollm.models.get_model`), held
        outside the module tree: not saved with the compressor's weights, not moved by its `to()`, not
        quantized twice (it is loaded quantized through `quant=`)."""
        from videollm.models import get_model

        model = get_model(name, **get_model_args)
        object.__setattr__(self, attr, model)
        return model

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(json.dumps({"compressor": self.name, "config": asdict(self.config)}, indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(out / WEIGHTS_FILE), metadata={"compressor": self.name})
        return out

    @classmethod
    def read_pretrained_config(cls, directory: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
        """(compressor name, config dict) of a `save_pretrained` directory, without loading weights."""
        path = Path(directory)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise InvalidRequestError(f"{path}: not a saved compressor (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        try:
            meta = json.loads((path / CONFIG_FILE).read_text())
            return str(meta["compressor"]), dict(meta.get("config") or {})
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise InvalidRequestError(f"{path / CONFIG_FILE}: unreadable compressor config ({err})") from err

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], backbone: VideoLanguageModel,
                        config: CompressorConfig | None = None, **overrides: Any) -> "WeightedCompressor":
        """Rebuild from `save_pretrained` output; `overrides` change config fields (not the weights' shapes).
        `config`'s fields that differ from the defaults override the saved config like `overrides`. Weights
        land on the backbone's device, in the dtype they were saved in."""
        from safetensors.torch import load_file

        name, cfg = cls.read_pretrained_config(directory)
        if name != cls.name:
            raise InvalidRequestError(f"{directory} holds a {name!r} compressor, not {cls.name!r}")
        given = {**(non_defaults(config) if config is not None else {}), **overrides}  # what the user chose
        built = cls.build_config({**cfg, **given})
        comp = cls(backbone, built)
        state = load_file(str(Path(directory) / WEIGHTS_FILE))
        dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
        if len(dtypes) == 1:
            comp.to(dtype=dtypes.pop())
        missing, unexpected = comp.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise InvalidRequestError(f"{directory}: weights do not match {cls.name} (missing {list(missing)[:5]}, "
                                      f"unexpected {list(unexpected)[:5]})")
        return comp.to(device=backbone.device).eval()


CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def timed_chunks(video: Video, chunk_size: int, positions: np.ndarray | None = None, desc: str = "frames"
                 ) -> Iterator[Any]:
    """`video.iter_chunks` with decoding timed under "decode" and a progress bar for long videos."""
    total = len(video) if positions is None else len(positions)
    chunks = video.iter_chunks(chunk_size, positions)
    if prefetch_enabled() and total > chunk_size:  # more than one chunk: decode the next during the tower
        chunks = prefetched(chunks)
    try:
        with frame_progress(total, desc) as bar:
            while True:
                with stage("decode"):  # with prefetch: only the time spent waiting for the decoder
                    batch = next(chunks, None)
                if batch is None:
                    return
                yield batch
                bar.update(len(batch))
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def prefetch_enabled() -> bool:
    """`VIDEOLLM_PREFETCH=0` decodes in the caller's thread (for debugging and for timing decode alone)."""
    return os.environ.get("VIDEOLLM_PREFETCH", "1") not in ("0", "false", "no", "")


def prefetched(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Run `items` in one background thread, at most `depth` items ahead, so decoding overlaps encoding.

    Same items in the same order; an exception in the worker is raised here at the point it happened. Closing
    the returned generator stops the worker and waits for it, so the decoder is never used after its video is
    closed. PyAV and decord release the GIL while they decode, so one thread is enough to overlap.
    """
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for x in items:
                if not put(("item", x)):
                    return
            put(("end", None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
            put(("error", err))

    worker = threading.Thread(target=work, name="videollm-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        worker.join()
        close = getattr(items, "close", None)
        if close is not None:
            close()


def frame_progress(total: int, desc: str) -> Any:
    """A stderr progress bar for long videos only (short clips stay quiet)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="frame", leave=False, disable=total < PROGRESS_MIN_FRAMES)


def pool_grid(tokens: torch.Tensor, target: int) -> torch.Tensor:
    """Average-pool (n, rows, cols, D) to at most `target` tokens per frame, keeping the aspect ratio."""
    n, rows, cols, d = tokens.shape
    if target >= rows * cols:
        return tokens
    r, c = grid_for(target, rows, cols)
    x = F.adaptive_avg_pool2d(tokens.permute(0, 3, 1, 2).float(), (r, c)).to(tokens.dtype)
    return x.permute(0, 2, 3, 1)


def grid_for(target: int, rows: int, cols: int) -> tuple[int, int]:
    """The largest (r, c) grid with r*c <= target whose shape stays within one cell of rows:cols."""
    if target < 1:
        raise ValueError("target must be >= 1")
    best = (1, 1)
    for r in range(1, rows + 1):
        ideal = r * cols / rows
        c = min(cols, target // r, math.floor(ideal + 1))
        if c >= 1 and c >= ideal - 1 and r * c > best[0] * best[1]:
            best = (r, c)
    return best


def pack(frame_tokens: list[torch.Tensor], frame_positions: list[int], timestamps: torch.Tensor,
         num_sampled: int, patch_ids: list[torch.Tensor] | None = None, stats: dict[str, Any] | None = None
         ) -> VisualTokens:
    """Concatenate per-frame token sets (each (k, D)) in time order with their provenance."""
    if not frame_tokens:
        raise InvalidRequestError("the compressor kept no visual tokens")
    embeds = torch.cat(frame_tokens)
    frame_ids = torch.cat(
        [torch.full((t.shape[0],), p, dtype=torch.long) for t, p in zip(frame_tokens, frame_positions)]
    )
    if patch_ids is None:
        pids = torch.full((embeds.shape[0],), -1, dtype=torch.long)
    else:
        pids = torch.cat([p.long().cpu() for p in patch_ids])
    return VisualTokens(embeds=embeds, frame_ids=frame_ids, patch_ids=pids, timestamps=timestamps,
                        num_sampled_frames=num_sampled, stats=dict(stats or {}))


def trim_to_budget(vt: VisualTokens, budget: int) -> VisualTokens:
    """Last-resort enforcement: keep `budget` tokens spread evenly over the sequence."""
    keep = torch.from_numpy(spread(budget, vt.num_tokens))
    out = vt.select(keep)
    out.stats = {**vt.stats, "trimmed": True}
    return out


def frames_within(budget: int | None, num_frames: int, per_frame: int) -> int:
    """How many frames fit a budget at `per_frame` tokens each (at least one)."""
    if budget is None:
        return num_frames
    return max(1, min(num_frames, budget // per_frame))


def spread(n_keep: int, n_total: int) -> np.ndarray:
    """`n_keep` positions spread evenly over `n_total` (always includes both ends when n_keep > 1): the
    same rule as uniform frame sampling, so a compressor thinning frames agrees with the sampler."""
    return uniform_indices(n_total, n_keep)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b) if b else 0


__all__ = [
    "MAX_BUDGET",  # re-exported: the limit lives with the one budget check (videollm.budget)
    "CompressorConfig",
    "TokenCompressor",
    "WeightedCompressor",
    "frames_within",
    "grid_for",
    "math",
    "pack",
    "pool_grid",
    "spread",
    "trim_to_budget",
]
