"""lmms-eval's `--model_args key=value,...` as a checked `PipelineConfig`, through `videollm ask`'s own options.

Every option of `videollm ask` is a key: `pretrained=` (lmms-eval's name for the model) or `model=`, and
`compressor=`, `budget=`, `reasoning=`, `quant=`, `vision_quant=`, `frames=`, `fps=`, `max_frames=`,
`answer_format=`, `max_new_tokens=`, ... (dashes or underscores). A flag is `key=True`. `compressor_option=`
takes `name=value` pairs separated by `;` (lmms-eval splits the argument string on commas). Names and values
are checked by the same code as the CLI's, before any model loads.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

from videollm.config import PipelineConfig
from videollm.errors import InvalidRequestError

#: lmms-eval's names for videollm's options
ALIASES = {"pretrained": "model"}
#: what lmms-eval itself adds to every model's arguments; not videollm options
LMMS_EVAL_KEYS = ("batch_size", "max_batch_size")


@dataclass(frozen=True)
class ModelSettings:
    config: PipelineConfig
    #: the generation budget the user fixed; None: the task's (lmms-eval's `max_new_tokens`) for direct
    #: answers, `REASONING_MAX_NEW_TOKENS` for think/auto, exactly as `videollm eval` chooses it
    max_new_tokens: int | None


def _parser() -> argparse.ArgumentParser:
    from videollm.cli import add_model_args

    p = argparse.ArgumentParser(prog="--model_args", add_help=False, exit_on_error=False)
    add_model_args(p)
    p.set_defaults(max_new_tokens=None)
    return p


def to_argv(model_args: Mapping[str, object]) -> list[str]:
    """`{"pretrained": "x", "budget": 512, "choice": True}` → `["--model", "x", "--budget", "512", "--choice"]`."""
    argv: list[str] = []
    for key, value in model_args.items():
        name = ALIASES.get(key, key).replace("_", "-")
        if key in LMMS_EVAL_KEYS or value is None:
            continue
        if value is True:
            argv.append(f"--{name}")
        elif value is False:
            continue
        elif name == "compressor-option":
            for pair in str(value).split(";"):
                argv += [f"--{name}", pair.strip()]
        elif isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            argv += [f"--{name}", str(int(value))]  # lmms-eval parses "-5" as -5.0: give back what was typed
        else:
            argv += [f"--{name}", str(value)]
    return argv


def settings_from_model_args(model_args: Mapping[str, object]) -> ModelSettings:
    """Parse and check lmms-eval's model arguments; raises `InvalidRequestError` naming the bad key."""
    from videollm.cli import pipeline_config

    p = _parser()
    try:
        args, extra = p.parse_known_args(to_argv(model_args))
    except argparse.ArgumentError as err:
        raise InvalidRequestError(f"--model_args: {err}") from None
    if extra:
        known = sorted({a.dest for a in p._actions if a.option_strings} | set(ALIASES) - {"help"})
        raise InvalidRequestError(f"--model_args: unknown key(s) {' '.join(x for x in extra if x.startswith('--'))}"
                                  f" for videollm; known: {', '.join(known)}")
    fixed = args.max_new_tokens
    if fixed is None:
        args.max_new_tokens = 16  # a placeholder that validates; each request sets its own budget
    return ModelSettings(pipeline_config(args), fixed)
