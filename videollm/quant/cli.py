"""`videollm quantize`: quantize a model once, save it, print the report."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..errors import InvalidRequestError
from ..protocols import quant_preference
from .config import BACKENDS, HEAD_CHOICES, SCHEME_NAMES

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="quantize a model's weights, save it, print bytes and error vs float",
                       description="Quantize the LLM and/or vision encoder of a backbone (or a plain causal "
                       "LM such as a GGUF file), save the result as safetensors and report memory and the "
                       "output error against the float model on a fixed prompt set.")
    p.add_argument("--model", default="tiny-random", help="backbone preset, hub id or local path; with --gguf, "
                   "the directory holding the GGUF file")
    p.add_argument("--gguf", default=None, metavar="FILE", help="quantize this GGUF causal LM (inside --model's "
                   "directory) instead of a video backbone; transformers dequantizes it to float first")
    p.add_argument("--quant", default="int4", choices=SCHEME_NAMES, help="LLM weights (default int4)")
    p.add_argument("--quant-head", default="auto", choices=HEAD_CHOICES, help="LM head + embeddings (tied: one "
                   "packed table); auto = int8 for int8, int4 for int4 and below, none when --quant none")
    p.add_argument("--vision-quant", default="none", choices=SCHEME_NAMES, help="vision encoder weights")
    p.add_argument("--quant-group-size", type=int, default=None, help="columns per scale; 0 = per row; default: "
                   "the model's own (videollm-mini: 32), else 128")
    p.add_argument("--int4-symmetric", action="store_true", help="int4 without zero points (symmetric absmax); "
                   "default is asymmetric int4 (per-group scale + zero point)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16")
    p.add_argument("--output", "-o", default=None, help="save the quantized model to this directory")
    p.add_argument("--no-eval", action="store_true", help="skip the error measurement on the prompt set")
    p.add_argument("--layers", action="store_true", help="also print the per-layer table")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    from . import io
    from .report import PROMPTS, quantize_backbone_with_report, quantize_causal_lm_with_report

    if args.output and not args.gguf:
        from ..backbones import require_capability

        require_capability(args.model, "save_quantized")  # before any weights load
    prompts = () if args.no_eval else PROMPTS
    if args.quant_group_size is not None and args.quant_group_size < 0:
        raise InvalidRequestError(f"--quant-group-size must be >= 0 (0 = one scale per row), "
                                  f"got {args.quant_group_size}")
    symmetric = True if args.int4_symmetric else None
    if args.gguf:
        from .._compat import require
        from ..device import resolve_dtype

        transformers = require("transformers")
        require("gguf", "mini", "reading GGUF files")
        dtype = resolve_dtype(args.dtype, __import__("torch").device(args.device))
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, gguf_file=args.gguf, dtype=dtype)
        tok = transformers.AutoTokenizer.from_pretrained(args.model, gguf_file=args.gguf)
        model.to(args.device).eval()
        group = 128 if args.quant_group_size is None else args.quant_group_size or None
        report = quantize_causal_lm_with_report(model, tok, args.quant, group, args.backend, prompts or PROMPTS[:1],
                                                name=str(Path(args.model) / args.gguf), symmetric=symmetric,
                                                head=args.quant_head)
        if args.output:
            io.save_quantized_causal_lm(model, tok, args.output)
    else:
        from ..backbones import load_backbone

        backbone = load_backbone(args.model, device=args.device, dtype=args.dtype)
        given = args.quant_group_size
        group = quant_preference(backbone, args.quant).group_size if given is None else given or None
        report = quantize_backbone_with_report(backbone, args.quant, args.vision_quant, group, args.backend, prompts,
                                               symmetric=symmetric, head=args.quant_head)
        if args.output:
            from ..backbones.quantized import save_quantized

            save_quantized(backbone, args.output, report.quantization)
    if args.json:
        print(json.dumps({**report.to_dict(layers=args.layers), "output": args.output}))
    else:
        print(report.summary())
        if args.layers:
            for row in report.layers:
                print(f"  {row['name']:60s} {row['scheme']:8s} {row['engine']:22s} {row['shape']!s:14s} "
                      f"{row['bytes']}")
        if args.output:
            where = ("videollm.quant.io.load_quantized_causal_lm" if args.gguf
                     else "videollm.backbones.quantized.load_quantized")
            print(f"saved to {args.output} (load with {where})")
    return 0
