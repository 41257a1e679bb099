"""Gradio demo: ask about a video, see the answer, which frames the compressor kept and what it cost.

UI only: every answer comes from `VideoQAPipeline`; what is shown about an answer is rendered by
`demo/render.py`. Run with `videollm demo` (or `python -m videollm.demo.app`); it serves on 127.0.0.1 and
never creates a public share link. Defaults match the CLI's (`videollm ask`). Uploads are bounded and cleaned
up (`uploads.py`); a failure inside a request is a message on the page and one log line, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import signal
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from videollm.config import DEFAULT_MODEL, PipelineConfig
from videollm.errors import InvalidRequestError, VideoLLMError
from videollm.answer.generation import GenerationConfig
from videollm.types import Answer
from videollm.video import SamplingConfig

from . import render
from .uploads import DEFAULT_MAX_UPLOAD, UploadArea, UploadConfig, human_size, user_message

logger = logging.getLogger(__name__)

#: the CLI's defaults (`videollm ask --help`), so the demo and the command line answer alike
DEFAULT_FRAMES = 32
DEFAULT_MAX_NEW_TOKENS = 64
EXAMPLES = [("bikes", "What objects appear in this video?"),
            ("carphone", "What is the person wearing?"),
            ("bigbuckbunny", "What animal is in this video?")]


@dataclass
class View:
    """Everything one answer puts on the page."""

    answer_html: str
    summary: str
    timeline_html: str
    gallery: list[tuple[np.ndarray, str]]
    details: dict[str, Any]

    def outputs(self) -> tuple[str, str, str, list[tuple[np.ndarray, str]], dict[str, Any]]:
        return self.answer_html, self.summary, self.timeline_html, self.gallery, self.details


def error_view(message: str) -> View:
    return View(render.error_card(message), "", "", [], {})


@lru_cache(maxsize=2)
def _pipeline(model: str, quant: str, vision_quant: str, device: str) -> Any:
    """One loaded backbone per (model, quantization): switching compressor or budget reuses it."""
    from videollm.pipeline import VideoQAPipeline

    return VideoQAPipeline.from_config(PipelineConfig(model=model, quant=quant, vision_quant=vision_quant,
                                                      device=device))


def answer(video: str | None, question: str, options_text: str, model: str, compressor: str, budget: float | None,
           frames: float, reasoning: str, quant: str, vision_quant: str,
           max_new_tokens: float = DEFAULT_MAX_NEW_TOKENS, device: str = "auto", upload_dir: Path | None = None
           ) -> View:
    """The demo's one action: answer with `compressor`, and describe what it did.

    Errors name the file the user uploaded, never the server's copy of it (`upload_dir` is where those live).
    """
    if not video:
        return error_view("upload a video first (or click one of the examples)")
    try:
        return _answer(video, question, options_text, model, compressor, budget, frames, reasoning, quant,
                       vision_quant, max_new_tokens, device)
    except VideoLLMError as err:  # the user's input or setup: say what to change
        msg = user_message(err, video, upload_dir)
        logger.warning("demo request on %s: %s", Path(video).name, msg)
        return error_view(msg)
    except Exception as err:  # noqa: BLE001 - anything else: a message on the page, one log line, no traceback
        logger.error("demo request on %s failed: %s: %s", Path(video).name, type(err).__name__,
                     user_message(err, video, upload_dir))
        return error_view(f"could not answer about {Path(video).name} ({type(err).__name__}); the server log has "
                          "a one-line note. Another video, or fewer frames, may work.")


def _answer(video: str, question: str, options_text: str, model: str, compressor: str, budget: float | None,
            frames: float, reasoning: str, quant: str, vision_quant: str, max_new_tokens: float, device: str) -> View:
    from videollm.compressors import create_compressor

    options = [line.strip() for line in (options_text or "").splitlines() if line.strip()] or None
    pipe = _pipeline(model, quant, vision_quant, device)
    if pipe.config.compressor != compressor:
        pipe.config = replace(pipe.config, compressor=compressor)
        pipe.compressor = create_compressor(compressor, pipe.backbone)
    sampling = SamplingConfig(num_frames=int(frames))
    ans = pipe(video, question, options, budget=int(budget) if budget else None, reasoning=reasoning,
               sampling=sampling, generation=GenerationConfig(max_new_tokens=int(max_new_tokens)))
    gallery, times = _kept_frames(pipe, video, sampling, ans)
    return View(render.answer_card(ans), render.summary(ans), render.timeline(ans, times), gallery,
                {k: v for k, v in ans.to_dict().items() if k not in ("question", "options")})


def _kept_frames(pipe: Any, video: str, sampling: SamplingConfig, ans: Answer, limit: int = 32
                 ) -> tuple[list[tuple[np.ndarray, str]], list[float]]:
    """Decode the kept frames again (few and small) so the gallery shows what the LLM saw; also every sampled
    frame's time, for the timeline."""
    v = pipe.load(video, sampling)
    try:
        times = [float(t) for t in v.timestamps.tolist()]
        if not ans.kept_frames:
            return [], times
        positions = np.array(ans.kept_frames[:limit])
        batch = v.read(positions)
    finally:
        v.close()
    gallery = [(f.numpy(), f"{t:.1f}s · {ans.tokens_per_frame.get(int(p), 0)} tokens")
               for f, t, p in zip(batch.frames, batch.timestamps.tolist(), positions)]
    return gallery, times


def model_choices() -> list[tuple[str, str]]:
    """(label, name) for the model menu; hub models that cannot be had offline say so."""
    from videollm.backbones import PRESETS
    from videollm.hub import availability

    out = []
    for name in PRESETS.names():
        model_id, label = PRESETS.get(name).model_id, name
        if model_id and not availability(model_id).loadable:
            label = f"{name} (not available offline)"
        out.append((label, name))
    return out


def default_model() -> str:
    """The CLI's default model: the hub model when it can be had, else the offline one."""
    from videollm.backbones import default_model_id
    from videollm.hub import resolve_default_model

    return resolve_default_model(DEFAULT_MODEL, default_model_id(DEFAULT_MODEL))[0]


def build_demo(model: str | None = None, device: str = "auto", uploads: UploadConfig | None = None) -> Any:
    """The Blocks app; `demo.videollm_uploads` is its private upload folder (close it when the server stops)."""
    from videollm._compat import offline_env_defaults, require

    offline_env_defaults()
    gr = require("gradio", extra="demo", purpose="the demo")
    from videollm.compressors import list_compressors
    from videollm.samples import sample_path
    from videollm.quant.config import SCHEME_NAMES as QUANT
    from videollm.answer.reasoning import MODES

    compressors = list_compressors()
    area = UploadArea(uploads)
    area.activate()  # before any component or the app exists: they read the folder when created
    with gr.Blocks(title="videollm") as demo:
        gr.Markdown("# videollm\nAsk a question about a video: frames → vision tower → token compressor → "
                    "small LLM → answer. Click an example or upload a clip.")
        with gr.Row():
            with gr.Column(scale=1):
                video = gr.Video(label=f"video (up to {human_size(area.max_bytes)})", sources=["upload"])
                question = gr.Textbox(label="question", value=EXAMPLES[0][1])
                options = gr.Textbox(label="options (one per line, optional)", lines=3)
                compressor = gr.Dropdown(compressors, value="uniform", label="compressor")
                compare = gr.Dropdown(["(none)", *compressors], value="(none)",
                                      label="compare side by side with")
                with gr.Accordion("settings", open=False):
                    model_dd = gr.Dropdown(model_choices(), value=model or default_model(), label="model")
                    budget = gr.Number(value=None, label="visual token budget (empty = fit the model's context)",
                                       precision=0)
                    frames = gr.Slider(1, 256, value=DEFAULT_FRAMES, step=1, label="frames sampled")
                    reasoning = gr.Radio(MODES.names(), value="direct", label="reasoning")
                    quant = gr.Dropdown(QUANT, value="none", label="LLM quantization")
                    vision_quant = gr.Dropdown(QUANT, value="none", label="vision quantization")
                    max_new = gr.Slider(8, 2048, value=DEFAULT_MAX_NEW_TOKENS, step=8, label="max new tokens")
                ask = gr.Button("Answer", variant="primary")
                examples = [[str(sample_path(clip)), q] for clip, q in _available_examples()]
                if examples:
                    gr.Examples(examples, [video, question], label="examples (shipped clips)")
            results = []
            for title in ("", "comparison"):
                with gr.Column(scale=1, visible=not title) as col:
                    if title:
                        gr.Markdown("### comparison")
                    out = gr.HTML(elem_classes=["vl-out"])
                    took = gr.Markdown(elem_classes=["vl-took"])
                    strip = gr.HTML(label="timeline", elem_classes=["vl-strip"])
                    gallery = gr.Gallery(label="frames the LLM saw", columns=4, height="auto")
                    with gr.Accordion("full details (JSON)", open=False):
                        details = gr.JSON(label="details")
                results.append((col, [out, took, strip, gallery, details]))

        inputs = [video, question, options, model_dd, compressor, budget, frames, reasoning, quant, vision_quant,
                  max_new]
        main_outputs, (cmp_col, cmp_outputs) = results[0][1], results[1]
        ask.click(_ask_handler(gr, area, device), inputs, main_outputs, api_name="ask").then(
            _compare_handler(gr, area, device), [*inputs, compare], [cmp_col, *cmp_outputs], api_name="compare")
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
                      vision_quant, max_new_tokens, device=device, upload_dir=area.path).outputs()

    ask.__annotations__ = {"request": gr.Request}  # real class, not a string: gradio injects the request
    return ask


def _compare_handler(gr: Any, area: UploadArea, device: str) -> Any:
    """After the main answer: the same video and question with a second compressor, shown beside it."""

    def compare(*args: Any) -> Any:
        *inputs, other = args
        if other in (None, "", "(none)"):
            return (gr.update(visible=False), *View("", "", "", [], {}).outputs())
        inputs[4] = other
        view = answer(*inputs, device=device, upload_dir=area.path)
        return (gr.update(visible=True), *view.outputs())

    return compare


def _unload_handler(gr: Any, area: UploadArea) -> Any:
    def unload(request: Any = None) -> None:
        area.end_session(getattr(request, "session_hash", None))

    unload.__annotations__ = {"request": gr.Request}
    return unload


def _available_examples() -> list[tuple[str, str]]:
    from videollm.errors import VideoNotFoundError
    from videollm.samples import sample_path

    out = []
    for clip, q in EXAMPLES:
        try:
            sample_path(clip)
        except VideoNotFoundError:
            continue
        out.append((clip, q))
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="serve the Gradio demo on 127.0.0.1")
    p.add_argument("--model", default=None, help="model selected at start (default: as `videollm ask`)")
    p.add_argument("--device", default="auto")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-upload-size", default=DEFAULT_MAX_UPLOAD,
                   help=f"largest video accepted, e.g. 500mb, 4gb (default {DEFAULT_MAX_UPLOAD}: a long 720p video)")
    p.add_argument("--temp-dir", default=None,
                   help="where the private upload folder is made (default: the system temp folder)")
    p.add_argument("--max-idle", type=float, default=3600.0,
                   help="seconds after which an unused upload or derived file is swept (default 3600)")
    p.set_defaults(func=_serve)


def launch(demo: Any, port: int = 7860, **kwargs: Any) -> Any:
    """Serve on loopback only, with the demo's styles and upload limit; never a public share link."""
    area: UploadArea | None = getattr(demo, "videollm_uploads", None)
    if area is not None:
        kwargs.setdefault("max_file_size", area.max_bytes)
    return demo.launch(server_name="127.0.0.1", server_port=port, share=False, css=render.CSS, **kwargs)


def _serve(args: argparse.Namespace) -> int:
    cfg = UploadConfig(max_size=args.max_upload_size, root=args.temp_dir, max_idle_s=args.max_idle,
                       sweep_every_s=min(600.0, max(1.0, args.max_idle / 4)))
    demo = build_demo(args.model, args.device, cfg)
    area: UploadArea = demo.videollm_uploads
    area.start_sweeper()
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C, so the cleanup below runs
    try:
        launch(demo, args.port)
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
