"""What the demo shows about an answer, as pure functions of an `Answer` (no Gradio here, so they are tested
directly): the answer card, the timeline strip, the kept frames, a plain-words account of the time spent, the
stage a running request is in, and why two compressors kept the same frames.

Model output is escaped before it reaches the page: a small model happily writes `<think>` or `<video>`, and
an HTML renderer would swallow everything after such a tag, the answer included.
"""
from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence

import numpy as np

from videollm.types import Answer

STAGE_WORDS = {"decode": "decoding", "vision": "vision tower", "dino": "DINOv2", "relevance": "relevance",
               "compress": "compressing", "prefill": "reading the prompt", "generate": "answering",
               "think": "thinking", "load": "loading the model"}
#: the order stages are shown in while a request runs (decoding and the vision tower interleave: frames stream)
STAGE_ORDER = ("load", "decode", "vision", "dino", "relevance", "compress", "prefill", "generate", "think")


def text_block(text: str) -> str:
    """Model text as inert HTML: escaped, line breaks kept."""
    return html.escape(text).replace("\n", "<br>")


def answer_card(ans: Answer) -> str:
    """The answer, and (when it thought) the thought folded away, safe to render whatever the model wrote."""
    main = ans.choice if ans.choice else (ans.text.strip() or "(empty answer)")
    parts = [f'<div class="vl-answer"><div class="vl-answer-main">{text_block(main)}</div>']
    if ans.choice and ans.text.strip() and ans.text.strip() != ans.choice:
        parts.append(f'<div class="vl-answer-text">{text_block(ans.text.strip())}</div>')
    if ans.thought:
        parts.append(f'<details class="vl-thought"><summary>thought ({ans.reasoning} mode)</summary>'
                     f"<div>{text_block(ans.thought)}</div></details>")
    for warning in ans.warnings:
        parts.append(f'<div class="vl-warning">{text_block(warning)}</div>')
    parts.append("</div>")
    return "".join(parts)


def error_card(message: str) -> str:
    return f'<div class="vl-error" role="alert"><b>error:</b> {text_block(message)}</div>'


def summary(ans: Answer) -> str:
    """'took 3.2 s (decoding 0.4 s, vision tower 1.1 s, …); 96 visual tokens, 3.0 per kept frame; …'."""
    t = ans.timings
    stages = [(STAGE_WORDS.get(k, k), v) for k, v in t.items() if k not in ("wall", "stages_total") and v >= 0.005]
    took = f"took {t.get('wall', t.get('stages_total', 0.0)):.1f} s"
    if stages:
        took += " (" + ", ".join(f"{name} {v:.1f} s" for name, v in stages) + ")"
    kept = len(ans.kept_frames)
    per = ans.visual_tokens / kept if kept else 0.0
    words = [took, f"{ans.visual_tokens} visual tokens from {kept} of {ans.sampled_frames} sampled frames "
             f"({per:.1f} per kept frame)"]
    if ans.compressor_stats.get("all_stages_skipped"):
        words.append("LongVU skipped every stage (the tokens already fit)")
    if ans.reasoning == "auto" and ans.confidence is None and ans.thinking_fired:
        words.append("the first answer had no confidence, so it thought (see the note)")
    elif ans.reasoning == "auto":
        conf = "unknown" if ans.confidence is None else f"{ans.confidence:.2f}"
        words.append(f"first answer's confidence {conf}: " + ("it thought, then reviewed its answer"
                                                              if ans.thinking_fired else "answered without thinking"))
    elif ans.reasoning == "think":
        words.append("it thought before answering")
    words.append(f"{ans.generated_tokens} tokens generated")
    return "; ".join(words) + "."


def timeline(ans: Answer, timestamps: Sequence[float] | None = None) -> str:
    """One bar per sampled frame across the whole video: height = tokens the frame got, grey = dropped.

    Segment relevance (Tempo) is drawn as a band under the bars when the compressor reports it.
    """
    n = max(ans.sampled_frames, 1)
    tpf: Mapping[int, int] = ans.tokens_per_frame
    most = max(tpf.values(), default=1)
    times = list(timestamps) if timestamps is not None else _times(ans)
    bars = []
    for i in range(n):
        tokens = int(tpf.get(i, 0))
        height = 8 + int(52 * tokens / most) if tokens else 4
        when = f"{times[i]:.1f} s" if i < len(times) else f"frame {i}"
        cls = "vl-kept" if tokens else "vl-dropped"
        bars.append(f'<div class="vl-bar {cls}" style="height:{height}px" '
                    f'title="{when}: {tokens} tokens"></div>')
    band = _relevance_band(ans.compressor_stats, times)
    legend = (f'<div class="vl-legend">{len(tpf)} of {n} sampled frames kept · bar height = visual tokens · '
              f"grey = dropped</div>")
    return (f'<div class="vl-timeline" data-kept="{len(tpf)}" data-sampled="{n}">'
            f'<div class="vl-bars">{"".join(bars)}</div>{band}{legend}</div>')


def _times(ans: Answer) -> list[float]:
    """Timestamps of all sampled frames when only the kept ones are known: spread between them."""
    known = dict(zip(ans.kept_frames, ans.kept_timestamps))
    return [known.get(i, float("nan")) for i in range(ans.sampled_frames)]


def _relevance_band(stats: Mapping[str, object], times: Sequence[float]) -> str:
    segments = stats.get("segments")
    if not isinstance(segments, list) or not segments:
        return ""
    cells = []
    for seg in segments:
        if not isinstance(seg, Mapping):
            continue
        rel = float(seg.get("relevance", 0.0) or 0.0)
        tokens = seg.get("tokens", "?")
        start, end = seg.get("start", ""), seg.get("end", "")
        cells.append(f'<div class="vl-seg" style="flex:1;opacity:{0.15 + 0.85 * max(0.0, min(rel, 1.0)):.2f}" '
                     f'title="{start}–{end} s: relevance {rel:.2f}, {tokens} tokens"></div>')
    return (
        f'<div class="vl-segments">{"".join(cells)}</div><div class="vl-legend">segment relevance (darker = more)</div>'
    )


def status(label: str, seen: Sequence[str], elapsed: float) -> str:
    """The running request: its stages so far, the current one last and marked, and the time spent."""
    order = {k: i for i, k in enumerate(STAGE_ORDER)}
    current = seen[-1] if seen else None
    done = sorted({k for k in seen if k != current}, key=lambda k: order.get(k, 99))
    steps = [f'<span class="vl-step-done">{html.escape(STAGE_WORDS.get(k, k))} ✓</span>' for k in done]
    if current is not None:
        steps.append(f'<span class="vl-step-now">{html.escape(STAGE_WORDS.get(current, current))}…</span>')
    else:
        steps.append('<span class="vl-step-now">starting…</span>')
    return (f'<div class="vl-status" role="status" aria-live="polite"><b>{html.escape(label)}</b> · '
            f'{" · ".join(steps)} · {elapsed:.1f} s</div>')


def kept_frames(frames: Sequence[tuple[np.ndarray, str]], width: int = 240) -> str:
    """The kept frames inline (JPEG data URLs) with their full captions: no file is written, so no server path
    reaches the page, and a caption wraps instead of being cut."""
    if not frames:
        return ""
    from PIL import Image

    cells = []
    for array, caption in frames:
        img = Image.fromarray(np.ascontiguousarray(array).astype(np.uint8))
        if img.width > width:
            img = img.resize((width, max(1, round(img.height * width / img.width))))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=85)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        text = html.escape(caption)
        cells.append(f'<figure class="vl-frame"><img src="data:image/jpeg;base64,{data}" alt="{text}">'
                     f"<figcaption>{text}</figcaption></figure>")
    return (f'<div class="vl-frames-title">frames the LLM saw ({len(frames)})</div>'
            f'<div class="vl-frames">{"".join(cells)}</div>')


def same_frames_note(first: tuple[str, Answer], second: tuple[str, Answer]) -> str:
    """Why two compressors' answers may look alike: they kept the very same frames (empty when they did not)."""
    (name_a, a), (name_b, b) = first, second
    if a.kept_frames != b.kept_frames or not a.kept_frames:
        return ""
    n, sampled = len(a.kept_frames), a.sampled_frames
    if n == sampled:
        why = (f"both kept all {sampled} sampled frames: their tokens fit the budget, so no frame had to go; "
               f"{name_a} gave the LLM {a.visual_tokens} visual tokens and {name_b} {b.visual_tokens}")
        if a.visual_tokens == b.visual_tokens:
            why += " (the same tokens per frame, too: nothing told them apart here)"
        why += ". Sample more frames or lower the budget to see them choose."
    else:
        why = (f"both kept the same {n} of {sampled} sampled frames ({a.visual_tokens} and {b.visual_tokens} "
               "visual tokens): here they chose alike.")
    return f"**{name_a}** and **{name_b}** kept the same frames: {why}"


CSS = """
.vl-timeline {padding: 6px 0;}
.vl-bars {display: flex; align-items: flex-end; gap: 1px; height: 64px; border-bottom: 1px solid #999;}
.vl-bar {flex: 1; min-width: 1px; border-radius: 1px 1px 0 0;}
.vl-kept {background: #2b6cb0;}
.vl-dropped {background: #cbd5e0;}
.vl-segments {display: flex; gap: 1px; height: 12px; margin-top: 3px;}
.vl-seg {background: #dd6b20;}
.vl-legend {font-size: 12px; color: #666; margin-top: 2px;}
.vl-answer-main {font-size: 1.4em; font-weight: 600;}
.vl-answer-text {margin-top: 4px;}
.vl-thought {margin-top: 8px; color: #444;}
.vl-warning {margin-top: 6px; padding: 4px 8px; border-left: 3px solid #d69e2e; background: #fffbea; color: #744210;}
.vl-error {padding: 8px 12px; border-left: 4px solid #c53030; background: #fff5f5; color: #9b2c2c;}
.vl-status {padding: 6px 10px; border-radius: 6px; background: #ebf4ff; color: #2a4365; min-height: 1.5em;}
.vl-status:empty {display: none;}
.vl-step-done {color: #4a5568;}
.vl-step-now {font-weight: 600;}
.vl-frames-title {font-size: 13px; color: #4a5568; margin: 6px 0 4px;}
.vl-frames {display: flex; flex-wrap: wrap; gap: 6px;}
.vl-frame {margin: 0; width: 116px;}
.vl-frame img {width: 116px; height: auto; display: block; border-radius: 3px;}
.vl-frame figcaption {font-size: 12px; color: #4a5568; white-space: normal; overflow-wrap: anywhere;}
"""
