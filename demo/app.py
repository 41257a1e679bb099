"""Gradio demo: upload a video, ask a question, see the answer and which frames the compressor kept.

UI only: every answer comes from `VideoQAPipeline`. Run with `videollm demo` (or `python -m videollm.demo.app`);
it serves on 127.0.0.1 and never creates a public share link.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from functools import lru_cache
from typing import Any

import numpy as np

from videollm.config import PipelineConfig
from videollm.errors import VideoLLMError
from videollm.answer.generation import GenerationConfig
from videollm.video import SamplingConfig

logger = logging.getLogger(__name__)



@lru_cache(maxsize=2)
def _pipeline(model: str, quant: str, vision_quant: str, device: str) -> Any:
    """One loaded backbone per (model, quantization): switching compressor or budget reuses it."""
    from videollm.pipeline import VideoQAPipeline

    return VideoQAPipeline.from_config(PipelineConfig(model=model, quant=quant, vision_quant=vision_quant,
                                                      device=device))


def answer(video: str | None, question: str, options_text: str, model: str, compressor: str, budget: float | None,
           frames: float, reasoning: str, quant: str, vision_quant: str, max_new_tokens: float = 256,
           device: str = "auto") -> tuple[str, list[tuple[np.ndarray, str]], dict[str, Any]]:
    """The demo's one action; returns (answer markdown, kept frames with captions, details)."""
    from videollm.compressors import create_compressor

    if not video:
        return "**error:** upload a video first", [], {}
    options = [line.strip() for line in (options_text or "").splitlines() if line.strip()] or None
    try:
        pipe = _pipeline(model, quant, vision_quant, device)
        if pipe.config.compressor != compressor:
            pipe.config = replace(pipe.config, compressor=compressor)
            pipe.compressor = create_compressor(compressor, pipe.backbone)
        sampling = SamplingConfig(num_frames=int(frames))
        ans = pipe(video, question, options, budget=int(budget) if budget else None, reasoning=reasoning,
                   sampling=sampling, generation=GenerationConfig(max_new_tokens=int(max_new_tokens)))
    except VideoLLMError as err:
        return f"**error:** {err}", [], {}
    gallery = _kept_frames(pipe, video, sampling, ans)
    head = f"### {ans.choice}\n\n{ans.text}" if ans.choice else f"### {ans.text or '(empty answer)'}"
    if ans.thinking_fired and ans.thought:
        head += f"\n\n<details><summary>thought</summary>\n\n{ans.thought}\n\n</details>"
    if ans.warnings:
        head += "\n\n" + "\n".join(f"> {w}" for w in ans.warnings)
    details = {k: v for k, v in ans.to_dict().items() if k not in ("question", "options")}
    return head, gallery, details


def _kept_frames(pipe: Any, video: str, sampling: SamplingConfig, ans: Any, limit: int = 32
                 ) -> list[tuple[np.ndarray, str]]:
    """Decode only the kept frames again (small) so the gallery shows what the LLM saw."""
    if not ans.kept_frames:
        return []
    v = pipe.load(video, sampling)
    try:
        positions = np.array(ans.kept_frames[:limit])
        batch = v.read(positions)
    finally:
        v.close()
    return [(f.numpy(), f"{t:.1f}s · {ans.tokens_per_frame.get(int(p), 0)} tokens")
            for f, t, p in zip(batch.frames, batch.timestamps.tolist(), positions)]


def build_demo(default_model: str = "videollm-mini", device: str = "auto") -> Any:
    from videollm._compat import offline_env_defaults, require

    offline_env_defaults()
    gr = require("gradio", extra="demo", purpose="the demo")
    from videollm.backbones import list_models
    from videollm.compressors import list_compressors
    from videollm.quant.config import SCHEME_NAMES as QUANT
    from videollm.answer.reasoning import MODES

    with gr.Blocks(title="videollm") as demo:
        gr.Markdown("# videollm\nAsk a question about a video. Frames → vision tower → token compressor → "
                    "small LLM → answer.")
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="video", sources=["upload"])
                question = gr.Textbox(label="question", value="What objects appear in this video?")
                options = gr.Textbox(label="options (one per line, optional)", lines=3)
                with gr.Accordion("settings", open=False):
                    model = gr.Dropdown(list_models(), value=default_model, label="model")
                    compressor = gr.Dropdown(list_compressors(), value="uniform", label="compressor")
                    budget = gr.Number(value=None, label="visual token budget (empty = none)", precision=0)
                    frames = gr.Slider(1, 256, value=16, step=1, label="frames sampled")
                    reasoning = gr.Radio(MODES.names(), value="direct", label="reasoning")
                    quant = gr.Dropdown(QUANT, value="none", label="LLM quantization")
                    vision_quant = gr.Dropdown(QUANT, value="none", label="vision quantization")
                    max_new = gr.Slider(8, 2048, value=256, step=8, label="max new tokens")
                ask = gr.Button("Answer", variant="primary")
            with gr.Column():
                out = gr.Markdown()
                gallery = gr.Gallery(label="frames the LLM saw", columns=4, height="auto")
                details = gr.JSON(label="details")
        ask.click(lambda *a: answer(*a, device=device),
                  [video, question, options, model, compressor, budget, frames, reasoning, quant, vision_quant,
                   max_new], [out, gallery, details])
    return demo


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="serve the Gradio demo on 127.0.0.1")
    p.add_argument("--model", default="videollm-mini")
    p.add_argument("--device", default="auto")
    p.add_argument("--port", type=int, default=7860)
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    build_demo(args.model, args.device).launch(server_name="127.0.0.1", server_port=args.port, share=False)
    return 0


if __name__ == "__main__":
    import sys

    from videollm.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
