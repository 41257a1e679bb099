"""`videollm serve`: flags → pipeline, engine and app, then uvicorn on loopback by default."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

logger = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def register(sub: Any) -> None:
    from ..cli import add_model_args

    p = sub.add_parser("serve", help="serve an OpenAI-compatible /v1/chat/completions API (docs/serve.md)")
    add_model_args(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--api-key", default=os.environ.get("VIDEOLLM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every route (default $VIDEOLLM_API_KEY; none: open)")
    g.add_argument("--served-model-name", default=None, help="the model id clients send (default: --model)")
    g.add_argument("--max-queue", type=int, default=16, help="requests allowed to wait; more get HTTP 429")
    g.add_argument("--max-batch", type=int, default=8, help="questions about one video answered on one opening")
    g.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take, queue included")
    g.add_argument("--max-video-mb", type=float, default=None, help="largest video accepted (default 512)")
    g.add_argument("--max-duration", type=float, default=4 * 3600.0, help="longest video accepted, seconds")
    g.add_argument("--max-body-mb", type=float, default=None, help="largest request body (default: fits the video)")
    g.add_argument("--max-tokens", type=int, default=1024, help="largest max_tokens a request may ask for")
    g.add_argument("--fetch-timeout", type=float, default=None, help="seconds to download a video URL (default 60)")
    g.add_argument("--allow-private-urls", action="store_true",
                   help="let video URLs reach private, loopback and link-local addresses (refused by default)")
    g.add_argument("--allow-file-dir", action="append", default=[], metavar="DIR",
                   help="allow file:// video URLs under DIR (repeatable; default: file:// refused)")
    g.add_argument("--cache-idle", type=float, default=300.0,
                   help="seconds without requests after which cached features and prompt prefixes are dropped")
    p.set_defaults(func=cmd_serve)


def settings_from_args(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(FetchLimits, EngineLimits, ServeSettings) from the flags, every value checked."""
    from ..errors import InvalidRequestError
    from ..video.remote import FetchLimits
    from .app import ServeSettings
    from .engine import EngineLimits
    from .schema import ServeLimits

    def positive(flag: str, value: float | None) -> None:
        if value is not None and not value > 0:
            raise InvalidRequestError(f"{flag} must be > 0, got {value}")

    for flag in ("max_queue", "max_batch", "timeout", "max_video_mb", "max_duration", "max_body_mb", "max_tokens",
                 "fetch_timeout", "cache_idle"):
        positive("--" + flag.replace("_", "-"), getattr(args, flag))
    if not 0 < args.port < 65536:
        raise InvalidRequestError(f"--port must be in 1..65535, got {args.port}")
    for d in args.allow_file_dir:
        if not os.path.isdir(d):
            raise InvalidRequestError(f"--allow-file-dir {d}: not a directory")
    base = FetchLimits()
    fetch = FetchLimits(max_bytes=int(args.max_video_mb * 2**20) if args.max_video_mb else base.max_bytes,
                        timeout_s=args.fetch_timeout or base.timeout_s,
                        allow_private=bool(args.allow_private_urls) or base.allow_private,
                        file_dirs=tuple(os.path.realpath(d) for d in args.allow_file_dir))
    engine = EngineLimits(max_queue=args.max_queue, timeout_s=args.timeout, max_duration_s=args.max_duration,
                          max_batch=args.max_batch, cache_idle_s=args.cache_idle, fetch=fetch)
    body = int(args.max_body_mb * 2**20) if args.max_body_mb else fetch.max_bytes * 4 // 3 + 2**20
    serve = ServeSettings(model_name=args.served_model_name or args.model, api_key=args.api_key or None,
                          max_body_bytes=body, limits=ServeLimits(max_tokens=args.max_tokens,
                                                                  max_frames=args.max_frames))
    return fetch, engine, serve


def cmd_serve(args: argparse.Namespace) -> int:
    from ..cli import build_pipeline, pipeline_config

    cfg = pipeline_config(args)  # every name and value checked before the model loads
    _, engine_limits, settings = settings_from_args(args)
    if args.host not in LOOPBACK:
        print(f"warning: binding {args.host}: the API is reachable from other machines"
              + ("" if settings.api_key else " and has no --api-key"), file=sys.stderr)
    import uvicorn

    from .app import create_app
    from .engine import Engine
    from .memory import cap_arenas

    cap_arenas()  # before the model loads and any worker thread allocates (videollm/serve/memory.py)
    pipe = build_pipeline(args, cfg)
    engine = Engine(pipe, engine_limits)
    access = logging.getLogger("videollm.serve.access")
    if not args.quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    print(f"serving {settings.model_name} on http://{args.host}:{args.port}/v1 (Ctrl-C stops)", file=sys.stderr)
    try:
        uvicorn.run(create_app(engine, settings), host=args.host, port=args.port, access_log=False,
                    log_level="warning")
    finally:
        engine.close()
    return 0
