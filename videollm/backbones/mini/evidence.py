"""How `videollm-mini` weighs what the frames show: the strongest moment or the whole video, by question shape.

Long-video questions are mostly about short moments ("does a cup appear?", "which of these is shown?", "what
is shown when ..."): averaging an option's match over every frame lets a 4-second moment of a 3-minute video
weigh 2% and vanish. Questions about the whole ("what is the video mostly about?") need the opposite:
coverage, where a glimpse must not win. Each option therefore gets both a *moment* score (a soft maximum over
frames, with the time of that moment) and a *coverage* score (the mean over frames), mixed by the question's
shape so neither swamps the other. The same reasoning shapes the text the LLM reads: what was seen in any
moment, with its time ranges, not only what was seen most often. Pure tensor/text code, tested without models.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...types import OptionSupport

#: weight of the moment score per question shape (the rest goes to coverage)
MOMENT_MIX = {"moment": 0.8, "coverage": 0.2, "mixed": 0.5}
#: temperature of the soft maximum over frames, in cosine units: near-max, but two frames that match beat one
MOMENT_SHARPNESS = 0.05

_COVERAGE = re.compile(
    r"\b(mostly|mainly|main(?:ly)?\s+(?:subject|topic|object|theme|content)|overall|throughout|primarily|"
    r"predominant(?:ly)?|majority|most of the (?:video|time|clip|footage)|(?:whole|entire) (?:video|clip)|"
    r"in general|summar(?:y|ise|ize)|what is (?:this|the) (?:video|clip) about|what is it about|"
    r"most (?:often|frequent(?:ly)?|common(?:ly)?))\b", re.IGNORECASE)
_MOMENT = re.compile(
    r"\b(appears?|appeared|appearing|shown|shows?|seen|see|visible|is there|are there|any|ever|at any|"
    r"moment|briefly|glimpse|when|at \d|which of these|present|contain|does|did)\b", re.IGNORECASE)


def question_shape(question: str) -> str:
    """"coverage" for questions about the whole video, "moment" for questions about something shown at some
    point, "mixed" when the wording says neither (both scores then count equally)."""
    if _COVERAGE.search(question):
        return "coverage"
    if _MOMENT.search(question):
        return "moment"
    return "mixed"


@dataclass
class Evidence:
    """Per option: how well its words match the strongest moment and the video as a whole."""

    moment: torch.Tensor  # (n_options,) soft maximum over frames of the per-frame best cosine
    coverage: torch.Tensor  # (n_options,) mean over frames of the per-frame best cosine
    when: list[float]  # time (s) of each option's best-matching frame
    shape: str  # the question's shape
    mix: float  # weight of `moment`

    @property
    def combined(self) -> torch.Tensor:
        return self.mix * self.moment + (1.0 - self.mix) * self.coverage


def evidence(per_frame: torch.Tensor, times: Sequence[float], shape: str = "mixed",
             sharpness: float = MOMENT_SHARPNESS) -> Evidence:
    """`per_frame` (n_options, n_frames): each option's best cosine against each kept frame's tokens."""
    if per_frame.ndim != 2 or per_frame.shape[1] != len(times) or per_frame.shape[1] == 0:
        raise ValueError("per_frame must be (n_options, n_frames) with one time per frame")
    x = per_frame.float()
    weights = torch.softmax(x / sharpness, dim=1)
    moment = (weights * x).sum(dim=1)
    best = x.argmax(dim=1).tolist()
    return Evidence(moment, x.mean(dim=1), [float(times[i]) for i in best], shape, MOMENT_MIX[shape])


#: a frame's match at or above this says the option is shown there (a covered class among the frame's top
#: classes scores 0.8-1.0; name similarity alone reaches it only for the class's own name)
SUPPORTED = 0.75


Support = OptionSupport  # kept under the name the mini code uses


def support(per_frame: torch.Tensor, times: Sequence[float], seen_as: list[list[str]],
            threshold: float = SUPPORTED) -> Support:
    """`per_frame` (n_options, n_frames) matches in [0, 1] → which options the frames show."""
    best, idx = per_frame.max(dim=1)
    ok = [bool(b >= threshold) for b in best]
    return Support(ok, [float(times[int(i)]) if s else None for s, i in zip(ok, idx)],
                   [names if s else [] for s, names in zip(ok, seen_as)])


# ---- what the LLM reads: every class seen, with when ---------------------------------------------------------
@dataclass
class Sighting:
    """A class read from the kept frames: in which time ranges, how strongly at best, in how many frames."""

    cls: int
    ranges: list[tuple[float, float]]
    strength: float  # best 1/(rank+1) over frames: 1.0 when it was a frame's first class
    frames: int


def sightings(readings: Sequence[tuple[float, Sequence[int]]]) -> list[Sighting]:
    """Classes from per-frame readings (time, classes best first), each with its time ranges: consecutive kept
    frames that show it merge into one range. Ordered by salience: strongest first, then the briefest (a short
    moment before the background it interrupts), then the earliest."""
    found: dict[int, Sighting] = {}
    last_pos: dict[int, int] = {}
    for pos, (t, classes) in enumerate(readings):
        for rank, c in enumerate(classes):
            s = found.get(c)
            if s is None:
                found[c] = Sighting(c, [(t, t)], 1.0 / (rank + 1), 1)
            else:
                if last_pos[c] == pos - 1:
                    s.ranges[-1] = (s.ranges[-1][0], t)
                else:
                    s.ranges.append((t, t))
                s.strength = max(s.strength, 1.0 / (rank + 1))
                s.frames += 1
            last_pos[c] = pos
    return sorted(found.values(), key=lambda s: (-s.strength, s.frames, s.ranges[0][0]))


def format_ranges(ranges: Sequence[tuple[float, float]], max_ranges: int = 3) -> str:
    """"12.0-16.0s, 40.0s" (and "+N more" past `max_ranges`)."""
    parts = [f"{a:.1f}s" if a == b else f"{a:.1f}-{b:.1f}s" for a, b in ranges[:max_ranges]]
    if len(ranges) > max_ranges:
        parts.append(f"+{len(ranges) - max_ranges} more")
    return ", ".join(parts)
