"""`python -m videollm.eval.lmms --model videollm --model_args ... --tasks videomme ...`: lmms-eval's own CLI.

Same arguments as `lmms-eval`; this launcher first makes torchvision importable on CPU-only installs
(lmms-eval imports it through `evaluate` → transformers), registers the `videollm` model (for a source tree
whose package metadata is not installed), and checks `--model_args` for `--model videollm` so a typo is one
`error:` line before lmms-eval loads anything. Works under `accelerate launch -m videollm.eval.lmms ...`.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from videollm.errors import VideoLLMError

from . import MODEL_ID, register


def check_model_args(argv: Sequence[str]) -> None:
    """Validate `--model_args` when `--model videollm` is asked for (no model is loaded)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", default=None)
    p.add_argument("--model_args", default="")
    p.add_argument("--device", default=None)
    known, _ = p.parse_known_args(list(argv))
    if known.model != MODEL_ID:
        return
    from lmms_eval.utils import simple_parse_args_string

    from videollm.errors import InvalidRequestError

    from .settings import LMMS_EVAL_KEYS, settings_from_model_args

    try:
        args = simple_parse_args_string(known.model_args or "")
    except ValueError:
        raise InvalidRequestError(f"--model_args {known.model_args!r} is not key=value,key=value,...") from None
    # lmms-eval passes its own --batch_size/--max_batch_size (and --device when given) next to --model_args:
    # the same key in both is a duplicate keyword argument (a TypeError traceback) inside lmms-eval
    own = [k for k in args if k in LMMS_EVAL_KEYS or (k == "device" and known.device is not None)]
    if own:
        raise InvalidRequestError(f"--model_args: {', '.join(own)} is lmms-eval's own option; give it once, as "
                                  f"{', '.join('--' + k for k in own)}")
    settings_from_model_args(args)


def _filelock_problem() -> str | None:
    """Why lmms-eval cannot run with the installed filelock, or None. lmms-eval 0.7.3 patches `filelock._api`,
    which filelock 4 removed; it would fail inside its evaluator with a traceback (and exit 0)."""
    import importlib.util

    if importlib.util.find_spec("filelock") is not None and importlib.util.find_spec("filelock._api") is None:
        import filelock

        return (f"lmms-eval 0.7.3 needs filelock<4 (it patches filelock._api), found filelock "
                f"{getattr(filelock, '__version__', '?')}; install it with: pip install 'filelock<4'")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from videollm._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    try:
        import lmms_eval  # noqa: F401
    except ImportError:
        print("error: lmms-eval is not installed; install it with: pip install 'videollm[lmms-eval]'",
              file=sys.stderr)
        return 2
    try:
        check_model_args(argv)
    except VideoLLMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problem = _filelock_problem()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    register()
    from lmms_eval.cli.dispatch import main as lmms_eval_main

    sys.argv = ["lmms-eval", *argv]
    lmms_eval_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
