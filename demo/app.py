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
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from videollm.budget import check_budget
from videollm.config import DEFAULT_MODEL, PipelineConfig
from videollm.errors import InvalidRequestError, VideoLLMError
from videollm.runtime.generation import GenerationConfig
from videollm.types import Answer
from videollm.video import SamplingConfig

from . import render
from .uploads import DEFAULT_MAX_UPLOAD, OWNER_FILE, UploadArea, UploadConfig, human_size, user_message

if TYPE_CHECKING:
    from videollm.pipeline import VideoQAPipeline

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
    gallery: list[tuple[np.ndarray, str]]  # the kept frames and their captions
    details: dict[str, Any]
    answer: Answer | None = None

    def outputs(self) -> tuple[str, str, str, str, dict[str, Any]]:
        """What the page gets: the kept frames inline (no file, so no server path), captions whole."""
        return self.answer_html, self.summary, self.timeline_html, render.kept_frames(self.gallery), self.details


def error_view(message: str) -> View:
    return View(render.error_card(message), "", "", [], {})


#: models the demo keeps loaded, newest last: (model, quant, vision quant, device). Every request builds its own
#: pipeline around the model cache's backbone (nothing shared is mutated, so two requests with different
#: compressors never see each other's); two models at most, so comparing models does not hold every model.
_LOADED: OrderedDict[tuple[str, str, str, str], None] = OrderedDict()
_LOADED_LOCK = threading.Lock()
MAX_LOADED = 2


def _config(model: str, quant: str, vision_quant: str, device: str, compressor: str = "uniform") -> PipelineConfig:
    return PipelineConfig(model=model, quant=quant, vision_quant=vision_quant, device=device, compressor=compressor)


def _pipeline(model: str, quant: str, vision_quant: str, device: str, compressor: str) -> VideoQAPipeline:
    """This request's pipeline: the cached backbone (loaded on first use) with its own compressor."""
    from videollm.models import release_model
    from videollm.pipeline import VideoQAPipeline

    pipe = VideoQAPipeline.from_config(_config(model, quant, vision_quant, device, compressor))
    key = (model, quant, vision_quant, device)
    with _LOADED_LOCK:
        _LOADED[key] = None
        _LOADED.move_to_end(key)
        while len(_LOADED) > MAX_LOADED:
            old = _config(*_LOADED.popitem(last=False)[0])
            release_model(old.model, **VideoQAPipeline.model_settings(old))  # requests holding it keep it
    return pipe


def _is_loaded(model: str, quant: str, vision_quant: str, device: str) -> bool:
    from videollm.models import is_cached
    from videollm.pipeline import VideoQAPipeline

    cfg = _config(model, quant, vision_quant, device)
    return is_cached(cfg.model, **VideoQAPipeline.model_settings(cfg))


def parse_budget(value: str | float | int | None) -> int | None:
    """The budget box: empty means fit the model's context; otherwise a whole number of visual tokens >= 1."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value).strip().replace(",", "").replace("_", "")
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    # a whole number goes to the one budget check as an int; anything else as the text typed, same message
    return check_budget(int(number) if number.is_integer() else str(value).strip()[:40])


def answer(video: str | None, question: str, options_text: str, model: str, compressor: str,
           budget: str | float | None, frames: float, reasoning: str, quant: str, vision_quant: str,
           max_new_tokens: float = DEFAULT_MAX_NEW_TOKENS, device: str = "auto", upload_dir: Path | None = None
           ) -> View:
    """The demo's one action: answer with `compressor`, and describe what it did.

    Errors name the file the user uploaded, never the server's copy of it (`upload_dir` is where those live).
    """
    if not video:
        return error_view("upload a video first (or click one of the examples)")
    try:
        return _answer(video, question, options_text, model, compressor, parse_budget(budget), frames, reasoning,
                       quant, vision_quant, max_new_tokens, device)
    except VideoLLMError as err:  # the user's input or setup: say what to change
        msg = user_message(err, video, upload_dir)
        logger.warning("demo request on %s: %s", Path(video).name, msg)
        return error_view(msg)
    except Exception as err:  # noqa: BLE001 - anything else: a message on the page, one log line, no traceback
        logger.error("demo request on %s failed: %s: %s", Path(video).name, type(err).__name__,
                     user_message(err, video, upload_dir))
        return error_view(f"could not answer about {Path(video).name} ({type(err).__name__}); the server log has "
                          "a one-line note. Another video, or fewer frames, may work.")


def _answer(video: str, question: str, options_text: str, model: str, compressor: str, budget: int | None,
            frames: float, reasoning: str, quant: str, vision_quant: str, max_new_tokens: float, device: str) -> View:
    options = [line.strip() for line in (options_text or "").splitlines() if line.strip()] or None
    pipe = _pipeline(model, quant, vision_quant, device, compressor)
    sampling = SamplingConfig(num_frames=int(frames))
    ans = pipe(video, question, options, budget=budget, reasoning=reasoning,
               sampling=sampling, generation=GenerationConfig(max_new_tokens=int(max_new_tokens)))
    gallery, times = _kept_frames(pipe, video, sampling, ans)
    return View(render.answer_card(ans), render.summary(ans), render.timeline(ans, times), gallery,
                {k: v for k, v in ans.to_dict().items() if k not in ("question", "options")}, ans)


def answer_with_stages(on_stage: Callable[[str], None], *args: Any, **kwargs: Any) -> View:
    """`answer`, calling `on_stage(name)` as each stage starts (loading the model first when it is not loaded)."""
    from videollm.timing import stage_listener

    model, quant, vision_quant = args[3], args[8], args[9]
    if not _is_loaded(model, quant, vision_quant, kwargs.get("device", "auto")):
        on_stage("load")
    with stage_listener(on_stage):
        return answer(*args, **kwargs)


def _kept_frames(pipe: VideoQAPipeline, video: str, sampling: SamplingConfig, ans: Answer, limit: int = 32
                 ) -> tuple[list[tuple[np.ndarray, str]], list[float]]:
    """Decode the kept frames again (few and small) so the page shows what the LLM saw; also every sampled
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
    gallery = [(f.numpy(), f"{t:.1f} s · {ans.tokens_per_frame.get(int(p), 0)} tokens")
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
    """The Blocks app; `demo.videollm_uploads` is its private upload folder (close it when the server stops).

    One click runs one handler (`/ask`): the answer, then the comparison, streaming the stage each is in. It
    returns, in order: status, conversation, same-frames note, then per column (main, comparison) its title,
    answer card, summary, timeline, kept frames (inline images) and details; the comparison column's visibility
    comes before its title.
    """
    from videollm._compat import offline_env_defaults, require

    offline_env_defaults()
    gr = require("gradio", extra="demo", purpose="the demo")
    from videollm.answer.reasoning import MODES
    from videollm.compressors import list_compressors
    from videollm.quant.config import SCHEME_NAMES as QUANT
    from videollm.samples import sample_path

    compressors = list_compressors()
    area = UploadArea(uploads)
    area.activate()  # before any component or the app exists: they read the folder when created
    with gr.Blocks(title="videollm") as demo:
        gr.Markdown("# videollm\nAsk a question about a video: frames → vision tower → token compressor → "
                    "small LLM → answer. Click an example or upload a clip; ask follow-ups about the same clip.")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                video = gr.Video(label=f"video (up to {human_size(area.max_bytes)})", sources=["upload"],
                                 elem_id="vl-video")
                # the browser refuses a file that is not a video before it is sent (a toast that fades); the
                # page script (`REJECT_JS`) puts its name here, so the refusal stays on the page with the name
                rejected = gr.Textbox(visible="hidden", elem_id="vl-rejected", label="rejected upload")
                question = gr.Textbox(label="question", value=EXAMPLES[0][1])
                options = gr.Textbox(label="options (one per line, optional)", lines=3)
                compressor = gr.Dropdown(compressors, value="uniform", label="compressor")
                compare = gr.Dropdown(["(none)", *compressors], value="(none)",
                                      label="compare side by side with")
                with gr.Accordion("settings", open=False):
                    model_dd = gr.Dropdown(model_choices(), value=model or default_model(), label="model")
                    budget = gr.Textbox(value="", label="visual token budget (empty = fit the model's context)",
                                        placeholder="empty = fit the model's context")
                    frames = gr.Slider(1, 256, value=DEFAULT_FRAMES, step=1, label="frames sampled")
                    reasoning = gr.Radio(MODES.names(), value="direct", label="reasoning")
                    quant = gr.Dropdown(QUANT, value="none", label="LLM quantization")
                    vision_quant = gr.Dropdown(QUANT, value="none", label="vision quantization")
                    max_new = gr.Slider(8, 2048, value=DEFAULT_MAX_NEW_TOKENS, step=8, label="max new tokens")
                with gr.Row():
                    ask = gr.Button("Answer", variant="primary")
                    clear = gr.Button("New conversation", variant="secondary")
                available = _available_examples()
                if available:
                    gr.Examples([[str(sample_path(clip)), q] for clip, q in available], [video, question],
                                label="examples (shipped clips)",
                                example_labels=[f"{clip}: {q}" for clip, q in available])
            with gr.Column(scale=2):
                status = gr.HTML(elem_classes=["vl-status-box"])
                chat = gr.Chatbot(label="conversation", height=260, elem_classes=["vl-chat"],
                                  placeholder="Your questions and the answers appear here; a follow-up keeps them.")
                same = gr.Markdown(elem_classes=["vl-same"])
                results = []
                with gr.Row():
                    for main in (True, False):
                        with gr.Column(scale=1, visible=main) as col:
                            title = gr.Markdown("### answer", elem_classes=["vl-col-title"])
                            out = gr.HTML(elem_classes=["vl-out"])
                            took = gr.Markdown(elem_classes=["vl-took"])
                            strip = gr.HTML(label="timeline", elem_classes=["vl-strip"])
                            kept = gr.HTML(elem_classes=["vl-kept-frames"])
                            with gr.Accordion("full details (JSON)", open=False):
                                details = gr.JSON(label="details")
                        results.append((col, [title, out, took, strip, kept, details]))

        inputs = [video, question, options, model_dd, compressor, budget, frames, reasoning, quant, vision_quant,
                  max_new, compare, chat, rejected]
        (_, main_outputs), (cmp_col, cmp_outputs) = results
        outputs = [status, chat, same, *main_outputs, cmp_col, *cmp_outputs]
        ask.click(_ask_handler(gr, area, device), inputs, outputs, api_name="ask", show_progress="hidden")
        question.submit(_ask_handler(gr, area, device), inputs, outputs, api_name=False, show_progress="hidden")
        clear.click(lambda: ([], "", ""), None, [chat, status, same], api_name=False, show_progress="hidden")
        video.change(lambda: ([], "", ""), None, [chat, status, same], api_name=False, show_progress="hidden")
        rejected.change(lambda name: render.error_card(not_a_video_message(name)) if name else "", rejected, status,
                        api_name=False, show_progress="hidden")
        demo.unload(_unload_handler(gr, area))
    demo.videollm_uploads = area
    return demo


#: the page script: a file the video box refuses (not video/*) is named in the hidden `#vl-rejected` box
REJECT_JS = r"""
() => {
  const VIDEO = /\.(mp4|m4v|mkv|webm|mov|avi|mpe?g|ts|m2ts|flv|wmv|ogv|3gp|y4m)$/i;
  const report = (file) => {
    const box = document.querySelector('#vl-rejected textarea, #vl-rejected input');
    if (!box || !file) return;
    const isVideo = (file.type || '').startsWith('video/') || VIDEO.test(file.name);
    box.value = isVideo ? '' : file.name;
    box.dispatchEvent(new Event('input', {bubbles: true}));
  };
  document.addEventListener('change', (e) => {
    const t = e.target;
    if (t instanceof HTMLInputElement && t.type === 'file' && t.closest('#vl-video') && t.files && t.files[0]) {
      report(t.files[0]);
    }
  }, true);
  document.addEventListener('drop', (e) => {
    if (e.target instanceof Element && e.target.closest('#vl-video') && e.dataTransfer && e.dataTransfer.files[0]) {
      report(e.dataTransfer.files[0]);
    }
  }, true);
}
"""


def not_a_video_message(name: str) -> str:
    """A file the page refused: its whole name, and what would work."""
    return (f"{Path(name).name} is not a video file. Upload a video (mp4, webm, mkv, mov, avi …) or click an "
            "example.")


def _is_none(name: str | None) -> bool:
    return name in (None, "", "(none)")


def _ask_handler(gr: Any, area: UploadArea, device: str) -> Any:
    """The click handler: marks the session's upload as in use (a replaced one is removed), then answers with
    the compressor and, when one is chosen, the comparison, yielding the stage each is in as it runs."""

    def ask(video: str | None, question: str, options_text: str, model: str, compressor: str, budget: Any,
            frames: float, reasoning: str, quant: str, vision_quant: str, max_new_tokens: float, other: str | None,
            history: list[dict[str, Any]] | None, rejected: str | None = None, request: Any = None
            ) -> Iterator[tuple[Any, ...]]:
        if video:
            area.use(getattr(request, "session_hash", None), video)
        elif rejected:  # the browser refused the file: say which, not "upload a video first"
            card = render.error_card(not_a_video_message(rejected))
            yield (card, *([gr.update()] * (N_OUTPUTS - 1)))
            return
        history = list(history or [])
        history.append({"role": "user", "content": render.text_block(_turn_text(question, options_text))})
        skip = gr.update()
        comparing = not _is_none(other) and other != compressor
        cmp_col = gr.update(visible=comparing)
        main_title, cmp_title = f"### {compressor}", f"### {other}" if comparing else ""
        blank = ("", "", "", "", {})
        yield (render.status(compressor, [], 0.0), history, "", main_title, *blank, cmp_col, cmp_title, *blank)
        args = (video, question, options_text, model, compressor, budget, frames, reasoning, quant, vision_quant,
                max_new_tokens)
        views: list[tuple[str, View]] = []
        for name in [compressor, *([other] if comparing else [])]:
            run_args = (*args[:4], name, *args[5:])
            view = None
            for update in _run_with_stages(run_args, device, area):
                if isinstance(update, View):
                    view = update
                else:
                    yield (render.status(name, *update), *([skip] * (N_OUTPUTS - 1)))
            assert view is not None
            views.append((name, view))
            if name == compressor:
                if view.answer is None:  # an error: the comparison would only repeat it
                    break
                yield (render.status(other, [], 0.0) if comparing else "", skip, skip, main_title,
                       *view.outputs(), cmp_col, cmp_title, *([skip] * 5))
        history.append({"role": "assistant", "content": _reply(views)})
        note = ""
        if len(views) == 2 and all(v.answer is not None for _, v in views):
            note = render.same_frames_note((views[0][0], views[0][1].answer), (views[1][0], views[1][1].answer))
        cmp_view = views[1][1].outputs() if len(views) == 2 else blank
        if len(views) < 2:
            cmp_col, cmp_title = gr.update(visible=False), ""
        yield ("", history, note, main_title, *views[0][1].outputs(), cmp_col, cmp_title, *cmp_view)

    ask.__annotations__ = {"request": gr.Request}  # real class, not a string: gradio injects the request
    return ask


def _unload_handler(gr: Any, area: UploadArea) -> Any:
    def unload(request: Any = None) -> None:
        area.end_session(getattr(request, "session_hash", None))

    unload.__annotations__ = {"request": gr.Request}
    return unload


#: outputs of `/ask`: status, conversation, note, then title + 5 for the main column, visibility + title + 5
N_OUTPUTS = 16
POLL_S = 0.25


def _run_with_stages(args: tuple[Any, ...], device: str, area: UploadArea
                     ) -> Iterator[View | tuple[list[str], float]]:
    """Answer in a worker thread; meanwhile yield (stages seen so far, seconds) every POLL_S, then the View."""
    seen: list[str] = []
    result: list[View] = []

    def on_stage(name: str) -> None:
        if not seen or seen[-1] != name:
            seen.append(name)

    def work() -> None:
        result.append(answer_with_stages(on_stage, *args, device=device, upload_dir=area.path))

    start = time.perf_counter()
    worker = threading.Thread(target=work, name="videollm-demo-answer", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(POLL_S)
        # at least once, after the last poll too: an answer faster than POLL_S still shows the stages it ran
        yield list(seen), time.perf_counter() - start
    yield result[0] if result else error_view("the answer stopped unexpectedly; the server log may say why")


def _turn_text(question: str, options_text: str) -> str:
    options = [line.strip() for line in (options_text or "").splitlines() if line.strip()]
    if not options:
        return question
    return question + "\n" + "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options))


def _reply(views: list[tuple[str, View]]) -> str:
    """The conversation's answer turn: each compressor's answer (or error) under its name, escaped."""
    lines = []
    for name, view in views:
        ans = view.answer
        if ans is None:
            text = "error: " + _plain_error(view.answer_html)
        else:
            text = ans.choice if ans.choice else (ans.text.strip() or "(empty answer)")
        lines.append(f"**{render.text_block(name)}**: {render.text_block(text)}")
    return "<br>".join(lines)


def _plain_error(card: str) -> str:
    import html
    import re

    return html.unescape(re.sub(r"<[^>]+>", "", card)).removeprefix("error:").strip()


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
    """Serve on loopback only, with the demo's styles and upload limit; never a public share link.

    Gradio's own start-up lines are silenced (`quiet`): they suggest `share=True`, which this demo never
    makes; the URL is printed here instead. The upload folder's `.owner` record is blocked by name (it is
    outside Gradio's folder too), so only uploads, derived files and the app's assets are served.
    """
    area: UploadArea | None = getattr(demo, "videollm_uploads", None)
    if area is not None:
        kwargs.setdefault("max_file_size", area.max_bytes)
        kwargs["blocked_paths"] = [*kwargs.get("blocked_paths", []), str(area.path / OWNER_FILE)]
    announce = not kwargs.pop("quiet", False)
    block = not kwargs.pop("prevent_thread_lock", False)
    out = demo.launch(server_name="127.0.0.1", server_port=port, share=False, css=render.CSS, js=REJECT_JS,
                      quiet=True, prevent_thread_lock=True, **kwargs)
    if announce:
        print(f"videollm demo on http://127.0.0.1:{port}/ (Ctrl-C stops it)", file=sys.stderr, flush=True)
    while block and demo.is_running:  # Ctrl-C / SIGTERM reach the caller, which closes the demo
        time.sleep(0.1)
    return out


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
