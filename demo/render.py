"""What the demo shows about an answer, as pure functions of an `Answer` (no Gradio here, so they are tested
directly): the answer card, the timeline strip of kept frames, and a plain-words account of the time spent.

Model output is escaped before it reaches the page: a small model happily writes `<think>` or `<video>`, and
an HTML renderer would swallow everything after such a tag, the answer included.
"""
from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

from videollm.types import Answer

STAGE_WORDS = {"decode": "decoding", "vision": "vision tower", "dino": "DINOv2", "relevance": "relevance",
               "prefill": "reading the prompt", "generate": "answering", "think": "thinking"}


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
    if ans.reasoning == "auto":
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
    return f'<div class="vl-segments">{"".join(cells)}</div><div class="vl-legend">segment relevance (darker = more)</div>'


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
"""
