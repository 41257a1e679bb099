"""Gradio demo: upload a video, ask a question, see the answer and which frames the compressor kept.

UI only: every answer comes from `VideoQAPipeline`. Run with `videollm demo` (or `python -m videollm.demo.app`);
it serves on 127.0.0.1 and never creates a public share link. Uploads are bounded and cleaned up (`uploads.py`);
a failure inside a request is a message on the page and one log line, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import signal
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from videollm.config import PipelineConfig
from videollm.errors import InvalidRequestError, VideoLLMError
from videollm.generation import GenerationConfig
from videollm.video import SamplingConfig

from .uploads import DEFAULT_MAX_UPLOAD, UploadArea, UploadConfig, human_size, user_message

logger = logging.getLogger(__name__)

QUANT = ["none", "int8", "int4", "int2", "ternary"]
REASONING = ["direct", "think", "auto"]


@lru_cache(maxsize=2)
def _pipeline(model: str, quant: str, vision_quant: str, device: str) -> Any:
    """One loaded backbone per (model, quantization): switching compressor or budget reuses it."""
    from videollm.pipeline import VideoQAPipeline

    return VideoQAPipeline.from_config(PipelineConfig(model=model, quant=quant, vision_quant=vision_quant,
                                                      device=device))


def answer(video: str | None, question: str, options_text: str, model: str, compressor: str, budget: float | None,
           frames: float, reasoning: str, quant: str, vision_quant: str, max_new_tokens: float = 256,
           device: str = "auto", upload_dir: Path | None = None
           ) -> tuple[str, list[tuple[np.ndarray, str]], dict[str, Any]]:
    """The demo's one action; returns (answer markdown, kept frames with captions, details).

    Errors name the file the user uploaded, never the server's copy of it (`upload_dir` is where those live).
    """
    if not video:
        return "**error:** upload a video first", [], {}
    try:
        return _answer(video, question, options_text, model, compressor, budget, frames, reasoning, quant,
                       vision_quant, max_new_tokens, device)
    except VideoLLMError as err:  # the user's input or setup: say what to change
        msg = user_message(err, video, upload_dir)
        logger.warning("demo request on %s: %s", Path(video).name, msg)
        return f"**error:** {msg}", [], {}
    except Exception as err:  # noqa: BLE001 - anything else: a message on the page, one log line, no traceback
        logger.error("demo request on %s failed: %s: %s", Path(video).name, type(err).__name__,
                     user_message(err, video, upload_dir))
        return (f"**error:** could not answer about `{Path(video).name}` ({type(err).__name__}); the server log "
                "has a one-line note. Another video, or fewer frames, may work."), [], {}


def _answer(video: str, question: str, options_text: str, model: str, compressor: str, budget: float | None,
            frames: float, reasoning: str, quant: str, vision_quant: str, max_new_tokens: float, device: str
            ) -> tuple[str, list[tuple[np.ndarray, str]], dict[str, Any]]:
    from videollm.compressors import create_compressor

    options = [line.strip() for line in (options_text or "").splitlines() if line.strip()] or None
    pipe = _pipeline(model, quant, vision_quant, device)
    if pipe.config.compressor != compressor:
        pipe.config = replace(pipe.config, compressor=compressor)
        pipe.compressor = create_compressor(compressor, pipe.backbone)
    sampling = SamplingConfig(num_frames=int(frames))
    ans = pipe(video, question, options, budget=int(budget) if budget else None, reasoning=reasoning,
               sampling=sampling, generation=GenerationConfig(max_new_tokens=int(max_new_tokens)))
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


def build_demo(default_model: str = "videollm-mini", device: str = "auto", uploads: UploadConfig | None = None) -> Any:
    """The Blocks app; `demo.videollm_uploads` is its private upload folder (close it when the server stops)."""
    from videollm._compat import offline_env_defaults, require

    offline_env_defaults()
    gr = require("gradio", extra="demo", purpose="the demo")
    from videollm.backbones import list_models
    from videollm.compressors import list_compressors

    area = UploadArea(uploads)
    area.activate()  # before any component or the app exists: they read the folder when created
    with gr.Blocks(title="videollm") as demo:
        gr.Markdown("# videollm\nAsk a question about a video. Frames → vision tower → token compressor → "
                    "small LLM → answer.")
        with gr.Row():
            with gr.Column():
                video = gr.Video(label=f"video (up to {human_size(area.max_bytes)})", sources=["upload"])
                question = gr.Textbox(label="question", value="What objects appear in this video?")
                options = gr.Textbox(label="options (one per line, optional)", lines=3)
                with gr.Accordion("settings", open=False):
                    model = gr.Dropdown(list_models(), value=default_model, label="model")
                    compressor = gr.Dropdown(list_compressors(), value="uniform", label="compressor")
                    budget = gr.Number(value=None, label="visual token budget (empty = none)", precision=0)
                    frames = gr.Slider(1, 256, value=16, step=1, label="frames sampled")
                    reasoning = gr.Radio(REASONING, value="direct", label="reasoning")
                    quant = gr.Dropdown(QUANT, value="none", label="LLM quantization")
                    vision_quant = gr.Dropdown(QUANT, value="none", label="vision quantization")
                    max_new = gr.Slider(8, 2048, value=256, step=8, label="max new tokens")
                ask = gr.Button("Answer", variant="primary")
            with gr.Column():
                out = gr.Markdown()
                gallery = gr.Gallery(label="frames the LLM saw", columns=4, height="auto")
                details = gr.JSON(label="details")
        ask.click(_ask_handler(gr, area, device),
                  [video, question, options, model, compressor, budget, frames, reasoning, quant, vision_quant,
                   max_new], [out, gallery, details])
        demo.unload(_unload_handler(gr, area))
    demo.videollm_uploads = area
    return demo


def _ask_handler(gr: Any, area: UploadArea, device: str) -> Any:
    """The click handler: marks the session's upload as in use (a replaced one is removed), then answers."""

    def ask(video: str | None, question: str, options_text: str, model: str, compressor: str, budget: float | None,
            frames: float, reasoning: str, quant: str, vision_quant: str, max_new_tokens: float,
            request: Any = None) -> Any:  # gradio injects only positional parameters
        if video:
            area.use(getattr(request, "session_hash", None), video)
        return answer(video, question, options_text, model, compressor, budget, frames, reasoning, quant,
                      vision_quant, max_new_tokens, device=device, upload_dir=area.path)

    ask.__annotations__ = {"request": gr.Request}  # real class, not a string: gradio injects the request
    return ask


def _unload_handler(gr: Any, area: UploadArea) -> Any:
    def unload(request: Any = None) -> None:
        area.end_session(getattr(request, "session_hash", None))

    unload.__annotations__ = {"request": gr.Request}
    return unload


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="serve the Gradio demo on 127.0.0.1")
    p.add_argument("--model", default="videollm-mini")
    p.add_argument("--device", default="auto")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-upload-size", default=DEFAULT_MAX_UPLOAD,
                   help=f"largest video accepted, e.g. 500mb, 4gb (default {DEFAULT_MAX_UPLOAD}: a long 720p video)")
    p.add_argument("--temp-dir", default=None,
                   help="where the private upload folder is made (default: the system temp folder)")
    p.add_argument("--max-idle", type=float, default=3600.0,
                   help="seconds after which an unused upload or derived file is swept (default 3600)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    cfg = UploadConfig(max_size=args.max_upload_size, root=args.temp_dir, max_idle_s=args.max_idle,
                       sweep_every_s=min(600.0, max(1.0, args.max_idle / 4)))
    demo = build_demo(args.model, args.device, cfg)
    area: UploadArea = demo.videollm_uploads
    area.start_sweeper()
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C, so the cleanup below runs
    try:
        demo.launch(server_name="127.0.0.1", server_port=args.port, share=False, max_file_size=area.max_bytes)
    except KeyboardInterrupt:
        pass
    except OSError as err:  # the port is taken, say
        raise InvalidRequestError(f"could not serve the demo on 127.0.0.1:{args.port}: {err}") from None
    finally:
        demo.close()
        area.close()
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    import sys

    from videollm.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
