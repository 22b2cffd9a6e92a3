"""Serving commands: ``tgg serve`` (OpenAI-compatible HTTP server) and ``tgg web`` (Gradio demo)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from tinygroundinggpt.cli import add_command, positive
from tinygroundinggpt.images import DEFAULT_MAX_PIXELS
from tinygroundinggpt.serve import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_NEW_TOKENS_CAP,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_REQUEST_BYTES,
    MIB,
)

if TYPE_CHECKING:
    from fastapi import FastAPI


def _common_args(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("--model", help="checkpoint folder (default: the shipped tiny model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=port)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "serve")
    _common_args(p, 8000)
    p.add_argument("--model-name", help="the model id clients send (default: the checkpoint folder's name)")
    p.add_argument(
        "--image-root",
        action="append",
        default=[],
        metavar="DIR",
        help="folder whose files requests may name as image paths (repeatable; default: none, data URLs only)",
    )
    p.add_argument(
        "--max-request-mb",
        type=positive(float),
        default=DEFAULT_MAX_REQUEST_BYTES / MIB,
        help="request body limit, MiB (default: %(default)s)",
    )
    p.add_argument(
        "--max-image-mb",
        type=positive(float),
        default=DEFAULT_MAX_IMAGE_BYTES / MIB,
        help="image file limit, MiB (default: %(default)s)",
    )
    p.add_argument(
        "--max-image-pixels",
        type=positive(int, most=DEFAULT_MAX_PIXELS),
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help=f"decoded image limit, at most the pipeline's own {DEFAULT_MAX_PIXELS} (default: %(default)s)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=positive(int),
        default=DEFAULT_MAX_NEW_TOKENS_CAP,
        help="cap (and default) of max_tokens (default: %(default)s)",
    )
    p.add_argument(
        "--max-pending",
        type=positive(int),
        default=DEFAULT_MAX_PENDING,
        help="requests answered or waiting at once; more get 503 (default: %(default)s)",
    )
    p.set_defaults(func=_serve)

    p = add_command(sub, "web")
    _common_args(p, 7860)
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    p.set_defaults(func=_web)


def _checkpoint(model: str | None) -> Path:
    from tinygroundinggpt.assets import SHIPPED

    return Path(model) if model else SHIPPED


def build_server(args: argparse.Namespace) -> FastAPI:
    """The app ``tgg serve`` runs, from its parsed arguments."""
    from tinygroundinggpt.api import TinyGroundingGPTPipeline
    from tinygroundinggpt.serve.server import create_app

    model = _checkpoint(args.model)
    return create_app(
        TinyGroundingGPTPipeline.from_pretrained(model),
        model_name=args.model_name or model.resolve().name,
        image_roots=args.image_root,
        max_request_bytes=int(args.max_request_mb * MIB),
        max_image_bytes=int(args.max_image_mb * MIB),
        max_image_pixels=args.max_image_pixels,
        max_new_tokens_cap=args.max_new_tokens,
        max_pending=args.max_pending,
    )


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(build_server(args), host=args.host, port=args.port)
    return 0


def _web(args: argparse.Namespace) -> int:
    from tinygroundinggpt.api import TinyGroundingGPTPipeline
    from tinygroundinggpt.serve.web import WEB_MAX_FILE_SIZE, build_demo

    demo = build_demo(TinyGroundingGPTPipeline.from_pretrained(_checkpoint(args.model)))
    # show_error: an upload that is no image fails in Gradio's own decoding, before the demo's messages can say so
    demo.launch(
        server_name=args.host, server_port=args.port, share=args.share, max_file_size=WEB_MAX_FILE_SIZE, show_error=True
    )
    return 0
