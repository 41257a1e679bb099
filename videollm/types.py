"""The values that flow between stages: frames → visual tokens → answer."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class FrameBatch:
    """Decoded frames with where they came from. `frames` is uint8 (T, H, W, 3)."""

    frames: torch.Tensor
    indices: torch.Tensor  # source frame index in the file, (T,) int64
    timestamps: torch.Tensor  # seconds, (T,) float64: each frame's own presentation time
    positions: torch.Tensor | None = None  # (T,) int64 positions in the sampled list (None: 0..T-1)

    def __len__(self) -> int:
        return int(self.frames.shape[0])


@dataclass
class PromptIds:
    """The chat prompt split at the video placeholder: token ids and text on each side."""

    before: list[int]
    after: list[int]
    before_text: str
    after_text: str
    #: leading ids of `before` that precede the user's text (all of them when the question follows the video)
    fixed_before: int = -1

    def __post_init__(self) -> None:
        if self.fixed_before < 0:
            self.fixed_before = len(self.before)


@dataclass
class PromptInputs:
    """A chat prompt as LLM input embeddings, visual tokens spliced in (`PromptBuilder.build_inputs`)."""

    embeds: torch.Tensor  # (1, L, D)
    num_text_tokens: int
    num_visual_tokens: int
    prompt_text: str
    #: leading embeddings that do not depend on the question (system and user-turn start, visual tokens):
    #: their KV can be shared by every question about the same video (`runtime.prefix_cache`); 0 = none known
    prefix_len: int = 0


#: `patch_ids` value of a token that is text embedded by the LLM among the visual tokens (Tempo's
#: "<12.0 seconds>" timestamps): counted in the budget, but not a picture of anything
TEXT_PATCH_ID = -2


@dataclass
class VisualTokens:
    """Compressed visual tokens, already in the LLM's embedding space, plus their provenance.

    Provenance lets the demo draw what survived and lets eval report tokens per frame. `frame_ids`
    index into the sampled frames (0..num_sampled_frames-1); `patch_ids` are positions in the frame's
    native token grid after the backbone's own pooling, or -1 where a token summarises a region (pooled).
    """

    embeds: torch.Tensor  # (N, D)
    frame_ids: torch.Tensor  # (N,) int64
    patch_ids: torch.Tensor  # (N,) int64
    timestamps: torch.Tensor  # (num_sampled_frames,) seconds of each sampled frame
    num_sampled_frames: int
    stats: dict[str, Any] = field(default_factory=dict)
    #: optional (N, 3) float (frame position, row, col) of each token in its frame's native grid, for backbones
    #: with 3-D rotary positions (Qwen-VL); None: derived from frame_ids/patch_ids (`qwen_vl.token_positions`).
    #: Pooled tokens sit at the centre of what they pool (fractional); LLaVA-OneVision ignores positions.
    positions: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.embeds.shape[0]
        if self.frame_ids.shape[0] != n or self.patch_ids.shape[0] != n:
            raise ValueError("embeds, frame_ids and patch_ids must have the same length")
        if self.positions is not None and tuple(self.positions.shape) != (n, 3):
            raise ValueError("positions must be (N, 3)")

    def select(self, keep: torch.Tensor) -> "VisualTokens":
        """The tokens at `keep` (a bool mask or indices), provenance and positions with them."""
        pos = None if self.positions is None else self.positions[keep]
        return VisualTokens(self.embeds[keep], self.frame_ids[keep], self.patch_ids[keep], self.timestamps,
                            self.num_sampled_frames, self.stats, pos)

    @property
    def num_tokens(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def kept_frames(self) -> list[int]:
        return sorted(set(self.frame_ids.tolist()))

    def without_text(self) -> "VisualTokens":
        """The same tokens minus embedded text (timestamps): for readers that want pictures only."""
        keep = self.patch_ids != TEXT_PATCH_ID
        if bool(keep.all()):
            return self
        return self.select(keep)

    @property
    def tokens_per_frame(self) -> dict[int, int]:
        ids, counts = torch.unique(self.frame_ids, return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, counts)}


@dataclass
class OptionSupport:
    """Which multiple-choice options the kept frames show, from a backbone that can tell
    (`SupportsOptionSupport`): per option, shown or not, when (its best frame), and what was seen there."""

    supported: list[bool]
    when: list[float | None]
    seen_as: list[list[str]]  # what was seen in the option's best frame, in common words

    @property
    def decisive(self) -> int | None:
        """The one supported option when exactly one is, else None."""
        hits = [i for i, s in enumerate(self.supported) if s]
        return hits[0] if len(hits) == 1 else None


@dataclass
class Answer:
    """What a user gets back from `pipe(video, question)`."""

    text: str
    choice: str | None = None
    question: str = ""
    options: list[str] | None = None
    kept_frames: list[int] = field(default_factory=list)
    kept_timestamps: list[float] = field(default_factory=list)
    visual_tokens: int = 0
    sampled_frames: int = 0
    tokens_per_frame: dict[int, int] = field(default_factory=dict)
    generated_tokens: int = 0
    reasoning: str = "direct"
    thought: str | None = None
    initial_answer: str | None = None
    initial_choice: str | None = None
    confidence: float | None = None
    thinking_fired: bool = False
    finish_reason: str = ""
    compressor_stats: dict[str, Any] = field(default_factory=dict)
    #: seconds: each stage, `stages_total` (their sum) and `wall` (the whole call, model already loaded)
    timings: dict[str, float] = field(default_factory=dict)
    model: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the dataclass's own field names (what `--json` prints and eval records)."""
        d = asdict(self)
        d["tokens_per_frame"] = {str(k): v for k, v in self.tokens_per_frame.items()}
        d["timings_unit"] = "seconds"
        return d
