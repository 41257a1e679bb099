"""What an lmms-eval request tells videollm: the video, the question, the options, the generation budget.

Pure functions on plain values (no lmms-eval import), so they are tested without the extra installed.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from videollm.errors import InvalidRequestError
from videollm.runtime.generation import GenerationConfig

#: the option letters `videollm eval` passes when a task's text carries its own options (all three tasks)
DEFAULT_CHOICES = ("A", "B", "C", "D")
#: lmms-eval adds its few-shot delimiter as a stop string to every generate_until task; its own chat models drop
#: it too (an answer may hold a blank line), and `videollm eval` stops only at end of sequence
FEWSHOT_DELIMITER = "\n\n"
#: an option line of a prompt: "A. text" (VideoMME) or "(A) text" (MLVU, LVBench)
_OPTION_LINE = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.)])\s*(\S.*)$")


@dataclass(frozen=True)
class VideoRequest:
    index: int  # position in lmms-eval's request list (answers go back in that order)
    video: str
    prompt: str  # lmms-eval's full user text (its doc_to_text), given to the pipeline verbatim
    question: str  # the bare question, for query-aware compressors (the doc's `question` when it has one)
    options: list[str]  # "A. text" each, or the letters when the prompt lists none


def video_path(visuals: object, task: str) -> str:
    """The one video path of a doc (lmms-eval's `doc_to_visual` returns a list)."""
    items = list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]
    if len(items) != 1 or not isinstance(items[0], str):
        kinds = ", ".join(type(v).__name__ for v in items) or "nothing"
        raise InvalidRequestError(f"task {task}: videollm answers about one video file per question; this task "
                                  f"gives {len(items)} visual(s) ({kinds})")
    return items[0]


def options_in(prompt: str) -> list[str]:
    """The lettered options a prompt lists (A, B, C ... in order), as "A. text"; the letters A-D if none."""
    found: list[str] = []
    for line in prompt.splitlines():
        m = _OPTION_LINE.match(line)
        if m and (m.group(1) or m.group(2)) == chr(ord("A") + len(found)):
            found.append(f"{m.group(1) or m.group(2)}. {m.group(3).strip()}")
    return found if len(found) >= 2 else list(DEFAULT_CHOICES)


def question_of(doc: Mapping[str, object] | None, prompt: str) -> str:
    q = doc.get("question") if isinstance(doc, Mapping) else None
    return q if isinstance(q, str) and q.strip() else prompt


def generation_for(base: GenerationConfig, gen_kwargs: Mapping[str, object], fixed_max_new_tokens: int | None,
                   reasoning: str, reasoning_max_new_tokens: int) -> GenerationConfig:
    """The generation settings of one request: the task's token budget (unless the user fixed one; think/auto
    get `reasoning_max_new_tokens`, as in `videollm eval`) and its stop strings. Decoding stays greedy, as
    every video task's YAML asks (`temperature: 0`, `do_sample: false`)."""
    if fixed_max_new_tokens is not None:
        budget = fixed_max_new_tokens
    elif reasoning != "direct":
        budget = reasoning_max_new_tokens
    else:
        raw = gen_kwargs.get("max_new_tokens", base.max_new_tokens)
        budget = int(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else base.max_new_tokens
    until = gen_kwargs.get("until") or ()
    stops = [until] if isinstance(until, str) else [s for s in until if isinstance(s, str)]
    stops = tuple(s for s in stops if s and s != FEWSHOT_DELIMITER)
    return replace(base, max_new_tokens=max(1, budget), stop_strings=stops or base.stop_strings)


def by_video(requests: Sequence[VideoRequest]) -> list[list[VideoRequest]]:
    """Requests grouped by video, in order of first appearance: each video is decoded and encoded once and
    its questions share the cached frame tokens and prompt prefix."""
    groups: dict[str, list[VideoRequest]] = {}
    for r in requests:
        groups.setdefault(r.video, []).append(r)
    return list(groups.values())
