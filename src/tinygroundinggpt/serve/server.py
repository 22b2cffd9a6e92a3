"""An OpenAI-compatible HTTP server (Chat Completions) around a :class:`TinyGroundingGPTPipeline`.

``create_app(pipeline, model_name=...)`` returns a FastAPI app with

* ``GET /v1/models`` and ``GET /v1/models/{id}``: the one served model;
* ``POST /v1/chat/completions``: OpenAI's request and response formats. The answer's message carries
  two extra fields, ``boxes`` (every box the model wrote, in the input image's pixels, ``[x1, y1, x2,
  y2]`` with exclusive right/bottom edges) and ``boxes_norm`` (the same boxes divided by the image's
  width and height).

What a request may contain: ``messages`` whose content is a string or a list of ``text`` and
``image_url`` parts. The model answers single questions, so only the **last user message's text** is
sent to it, with the conversation's image: at most one image per request, in a user message, wherever
in the conversation it was sent (a client that sends the image once and then asks follow-up questions
keeps working). System and assistant messages are not shown to the model. An image is a
``data:image/...;base64,`` URL or a local file path / ``file://`` URL that resolves (symlinks and
``..`` followed) inside one of ``image_roots``; nothing else is read, and no URL is ever fetched.
``max_tokens`` / ``max_completion_tokens`` (capped at ``max_new_tokens_cap``, which is also the
default), ``temperature`` (0, below ``MIN_TEMPERATURE`` or absent: greedy), ``top_p`` (with sampling), ``stop`` (up to
``MAX_STOP`` strings of up to ``MAX_STOP_CHARS`` characters, left out of the answer), ``seed`` (repeatable sampling),
``n`` (1 only), ``stream`` (the text as it is generated, then a delta with the boxes) and
``stream_options.include_usage`` are honoured; ``logprobs`` is refused (400); other parameters are accepted and
ignored. A prompt that leaves less than ``max_tokens`` of the model's context is refused (400
``context_length_exceeded``; without ``max_tokens`` the answer gets what the context leaves, up to the cap), and a
client that goes away stops its generation.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a malformed
request or image (or one with more than ``MAX_JSON_CONTAINERS`` objects and arrays), 404 for another model
name, 413 for a body, image file or image pixel count over its limit, 415 for a body not sent as
``application/json`` (a web page can make a browser post plain text to a local server without asking), 503
when ``max_pending`` requests are already being received, answered or waiting. Generation runs in a worker
thread, one request at a time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import re
import stat
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tinygroundinggpt.api import SEED_RANGE, AnswerStream, Prediction, TinyGroundingGPTPipeline
from tinygroundinggpt.data.format import BOX_REF_RE, CONTROL_TOKEN_RE, IMAGE_TOKEN, OBJECT_REF_RE, OBJECT_TOKEN
from tinygroundinggpt.images import DEFAULT_MAX_PIXELS, ImageLoadError, ImageTooLargeError, load_image
from tinygroundinggpt.model.processing_tinygroundinggpt import TruncationError
from tinygroundinggpt.serve import (
    DEFAULT_BODY_SECONDS,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_NEW_TOKENS_CAP,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_REQUEST_BYTES,
)

# Placeholders the processor expands: a user's text containing one would address inputs a request cannot give;
# ChatML's control tokens (<|im_end|>, <|im_start|>, ...) would let it fabricate turns.
_PLACEHOLDER_RE = re.compile(
    "|".join(
        [
            re.escape(IMAGE_TOKEN),
            re.escape(OBJECT_TOKEN),
            BOX_REF_RE.pattern,
            OBJECT_REF_RE.pattern,
            CONTROL_TOKEN_RE.pattern,
        ]
    )
)
# JSON objects and arrays a request body may hold. Parsed, each costs hundreds of bytes for its few in the body (a
# 20 MiB body of "{}," would take ~1 GB); a chat request needs a few per message, and base64 holds neither bracket.
MAX_JSON_CONTAINERS = 10_000
# Below this a temperature is greedy decoding: dividing logits by ~0 overflows them into NaN probabilities.
MIN_TEMPERATURE = 1e-5
# Raster formats a request's image may be in; Pillow would otherwise also try e.g. EPS (through Ghostscript).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
# OpenAI's own limit on stop sequences.
MAX_STOP = 4
# generate() builds a table of vocabulary size x string length per stop string, under the one generation lock
MAX_STOP_CHARS = 64
_C0_OR_SPACE = "".join(map(chr, range(33)))
# How often a request without a stream checks that its client is still there.
DISCONNECT_POLL_SECONDS = 0.25


def text_problem(text: str) -> str | None:
    """Why a user's ``text`` may not reach the model, if it may not: text that is not valid Unicode (JSON allows
    lone surrogates, which no tokenizer takes), or a placeholder or control token in it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"the text is not valid Unicode ({exc.reason} at character {exc.start})"
    found = _PLACEHOLDER_RE.search(text)
    return f"the text may not contain the model's placeholder {found.group(0)!r}" if found else None


def stop_strings(stop: str | list[str] | None) -> list[str] | None:
    """OpenAI's ``stop``: one string or up to ``MAX_STOP``, none empty and none over ``MAX_STOP_CHARS`` characters;
    :class:`APIError` otherwise."""
    stops = [stop] if isinstance(stop, str) else stop
    if stops is not None and (len(stops) > MAX_STOP or not all(stops)):
        raise APIError(400, f"stop must be up to {MAX_STOP} non-empty strings, got {repr(stop)[:200]}", param="stop")
    for i, s in enumerate(stops or ()):
        if len(s) > MAX_STOP_CHARS:
            raise APIError(
                400, f"stop strings may have up to {MAX_STOP_CHARS} characters; stop[{i}] has {len(s)}", param="stop"
            )
    return stops or None


class APIError(Exception):
    """A request the server refuses; rendered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ChatMessage(BaseModel):
    """One OpenAI message; content parts are checked by :func:`conversation_input` for clearer errors."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send parameters this model has no use for

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    logprobs: bool | None = None
    top_logprobs: int | None = None
    n: int | None = None
    stream: bool | None = False  # the openai client may send null
    stream_options: StreamOptions | None = None


@dataclass
class ChatInput:
    """What the model is shown: the last user message's text and the request's image, if any."""

    text: str
    image_url: str | None = None
    image_param: str | None = None  # where the image is in the request, e.g. "messages[0].content[1]"


def _is_data_url(url: str) -> bool:
    # urlsplit drops leading C0 controls and spaces (WHATWG): so does this test, so both read the same scheme
    return url.lstrip(_C0_OR_SPACE)[:5].lower() == "data:"


def _describe(url: str) -> str:
    """A URL as error messages name it: data URLs by size, not by their (possibly megabytes of) payload."""
    if _is_data_url(url):
        return f"data URL {url.split(',', 1)[0][:60]!r} ({len(url)} characters)"
    return repr(url if len(url) <= 200 else url[:200] + "...")


def conversation_input(messages: Sequence[ChatMessage]) -> ChatInput:
    """The model's input from OpenAI messages (see the module docstring); :class:`APIError` when unusable."""
    text_by_message: list[str | None] = []
    images: list[tuple[str, str]] = []  # (url, param)
    for i, m in enumerate(messages):
        if not isinstance(m.content, list):
            text_by_message.append(m.content)
            continue
        texts = []
        for j, part in enumerate(m.content):
            param = f"messages[{i}].content[{j}]"
            kind = part.get("type")
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise APIError(400, f'{param}: a text part needs {{"text": "..."}} (a string)', param=param)
                texts.append(part["text"])
            elif kind == "image_url":
                if m.role != "user":
                    raise APIError(400, f"{param}: images are accepted in user messages only", param=param)
                spec = part.get("image_url")
                url = spec.get("url") if isinstance(spec, dict) else None
                if not isinstance(url, str) or not url:
                    raise APIError(
                        400, f'{param}: an image_url part needs {{"image_url": {{"url": ...}}}}', param=param
                    )
                images.append((url, param))
            else:
                raise APIError(
                    400, f"{param}: unsupported content part {kind!r} (use 'text' or 'image_url')", param=param
                )
        text_by_message.append("\n".join(texts))
    if len(images) > 1:
        raise APIError(400, f"one image per request is supported; this request has {len(images)}", param=images[1][1])
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    if not users:
        raise APIError(400, "messages has no user message", param="messages")
    text = text_by_message[users[-1]] or ""
    if not text.strip():
        raise APIError(400, f"the last user message (messages[{users[-1]}]) has no text", param="messages")
    problem = text_problem(text)
    if problem:
        raise APIError(400, f"messages[{users[-1]}]: {problem}", param="messages")
    return ChatInput(text, *images[0]) if images else ChatInput(text)


def decode_data_url(url: str, max_bytes: int) -> bytes:
    """The bytes of a ``data:image/...;base64,`` URL; :class:`APIError` (400 malformed, 413 too large)."""
    header, sep, payload = url.partition(",")
    media_type, *params = header[len("data:") :].split(";")
    if not sep or not media_type.lower().startswith("image/") or "base64" not in (p.lower() for p in params):
        raise APIError(
            400,
            f"image_url {_describe(url)} is not a data:image/...;base64,... URL",
            code="invalid_image_url",
        )
    payload = "".join(payload.split())  # some clients wrap base64 lines
    if len(payload) // 4 * 3 > max_bytes + 2:  # checked before decoding: the limit bounds memory too
        raise APIError(
            413, f"image_url {_describe(url)}: the image is larger than {max_bytes} bytes", code="image_too_large"
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(
            400,
            f"image_url {_describe(url)}: the data is not valid base64 ({exc})",
            code="invalid_image_url",
        ) from exc
    if len(data) > max_bytes:
        raise APIError(
            413,
            f"image_url {_describe(url)}: the image has {len(data)} bytes, more than {max_bytes}",
            code="image_too_large",
        )
    return data


def resolve_local_image(url: str, roots: Sequence[Path]) -> Path:
    """The file a path or ``file://`` URL names, if it resolves inside one of ``roots`` (already resolved).

    A relative path is looked up under each root in turn. Symlinks and ``..`` are resolved *before*
    the containment check, so neither can lead outside the roots; nothing is opened here.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # a malformed host ("file://[::1/x.png")
        raise APIError(400, f"image_url {_describe(url)}: not a URL or path ({exc})", code="invalid_image_url") from exc
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise APIError(
                400,
                f"image_url {_describe(url)}: only local file:// URLs are read",
                code="invalid_image_url",
            )
        path = Path(unquote(parts.path))
    elif scheme:
        raise APIError(
            400,
            f"image_url {_describe(url)}: {scheme}: URLs are not fetched; send the image as a "
            "data:image/...;base64,... URL or as a file under the server's image roots",
            code="invalid_image_url",
        )
    else:
        path = Path(url)
    if not roots:
        raise APIError(
            400,
            f"image_url {_describe(url)}: this server reads no local files (start it with --image-root DIR)",
            code="invalid_image_url",
        )
    inside = False
    for candidate in [path] if path.is_absolute() else [root / path for root in roots]:
        try:
            resolved = candidate.resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # symlink loops, NUL bytes
            raise APIError(
                400,
                f"image_url {_describe(url)}: cannot resolve the path ({exc})",
                code="invalid_image_url",
            ) from exc
        if any(resolved.is_relative_to(root) for root in roots):
            inside = True
            try:
                if resolved.is_file():
                    return resolved
            except OSError as exc:  # a name too long, a folder without search permission
                raise APIError(
                    400, f"image_url {_describe(url)}: cannot read the path ({exc.strerror})", code="invalid_image_url"
                ) from exc
    why = "no such file under the image roots" if inside else "the path resolves outside the server's image roots"
    raise APIError(400, f"image_url {_describe(url)}: {why}", code="invalid_image_url")


def read_limited(path: Path, max_bytes: int, url: str, roots: Sequence[Path] = ()) -> bytes:
    """A file's bytes, refusing (413) one over ``max_bytes`` without reading more than that.

    ``path`` was checked to lie inside ``roots``, but a directory on it may be swapped for a link before the open:
    the open follows no link at the last step, the opened file must be a regular one (a FIFO would block a worker),
    and where the system tells (``/proc/self/fd``) what was opened must lie inside ``roots`` too."""
    too_large = APIError(
        413, f"image_url {_describe(url)}: the file is larger than {max_bytes} bytes", code="image_too_large"
    )
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise APIError(
            400, f"image_url {_describe(url)}: cannot read the file ({exc.strerror})", code="invalid_image_url"
        ) from exc
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise APIError(400, f"image_url {_describe(url)}: not a regular file", code="invalid_image_url")
        opened = Path(f"/proc/self/fd/{fd}")
        if roots and opened.is_symlink():
            real = Path(os.readlink(opened))
            if not any(real.is_relative_to(root) for root in roots):
                raise APIError(
                    400, f"image_url {_describe(url)}: the path resolves outside the server's image roots",
                    code="invalid_image_url",
                )  # fmt: skip
        if info.st_size > max_bytes:
            raise too_large
        try:
            data = f.read(max_bytes + 1)  # the file may have grown since fstat
        except OSError as exc:
            raise APIError(
                400, f"image_url {_describe(url)}: cannot read the file ({exc.strerror})", code="invalid_image_url"
            ) from exc
    if len(data) > max_bytes:
        raise too_large
    return data


def load_request_image(url: str, roots: Sequence[Path], max_bytes: int, max_pixels: int) -> Image.Image:
    """The image a request's ``image_url`` names, within the limits; :class:`APIError` otherwise."""
    if _is_data_url(url):
        data = decode_data_url(url.lstrip(_C0_OR_SPACE), max_bytes)
    else:
        data = read_limited(resolve_local_image(url, roots), max_bytes, url, roots)
    try:
        return load_image(data, max_pixels=max_pixels, name=f"image_url {_describe(url)}", formats=IMAGE_FORMATS)
    except ImageTooLargeError as exc:
        raise APIError(413, str(exc), code="image_too_large") from exc
    except ImageLoadError as exc:
        raise APIError(400, str(exc), code="invalid_image") from exc


async def read_body(request: Request, max_bytes: int) -> bytearray:
    """The request body, refused with 413 as soon as its declared or actual size passes ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError(400, f"invalid Content-Length header {declared!r}")
        if int(declared) > max_bytes:
            raise APIError(
                413,
                f"the request body has {declared} bytes, more than the limit of {max_bytes} bytes",
                code="request_too_large",
            )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:  # a chunked body or a lying Content-Length
            raise APIError(
                413, f"the request body is larger than the limit of {max_bytes} bytes", code="request_too_large"
            )
    return body  # json.loads takes it as it is: no second copy of up to max_bytes


def parse_request(body: bytes | bytearray) -> ChatCompletionRequest:
    """A request body → the validated request; :class:`APIError` (400) saying what is wrong."""
    containers = body.count(b"{") + body.count(b"[")  # an upper bound: brackets inside strings count too
    if containers > MAX_JSON_CONTAINERS:
        raise APIError(
            400,
            f"the request body has {containers} '{{' and '[' characters, more than the {MAX_JSON_CONTAINERS} a chat "
            "request may hold",
            code="invalid_json",
        )
    try:
        data = json.loads(body)
    # ValueError covers JSONDecodeError, UnicodeDecodeError and an integer too long to convert; deep nesting recurses
    except (ValueError, RecursionError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise APIError(400, f"invalid request: {problems}", param=where or None) from exc


def _grounding(result: Prediction) -> dict[str, Any]:
    """What the reply's message carries beside the text: boxes in the image's pixels and normalised, and their frame:
    the image upright, its EXIF orientation applied as a browser shows it (0 x 0: no image)."""
    return {
        "boxes": [list(b) for b in result.boxes],
        "boxes_norm": [list(b) for b in result.boxes_norm],
        "width": result.width,
        "height": result.height,
    }


def _finish(result: Prediction) -> str:
    return "stop" if result.finished else "length"


def _usage(result: Prediction) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


class _StreamThenRelease(StreamingResponse):
    """A streaming response that runs ``ended`` however it ends: sent in full, failed, or its client gone, also before
    the first chunk, when Starlette never starts the body iterator (whose own ``finally`` would then never run)."""

    def __init__(self, content: AsyncIterator[str], ended: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.ended = ended

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.ended()


def create_app(
    pipeline: TinyGroundingGPTPipeline,
    *,
    model_name: str,
    image_roots: Sequence[str | Path] = (),
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_new_tokens_cap: int = DEFAULT_MAX_NEW_TOKENS_CAP,
    max_pending: int = DEFAULT_MAX_PENDING,
    body_seconds: float = DEFAULT_BODY_SECONDS,
) -> FastAPI:
    """The server for ``pipeline`` under the name ``model_name`` (see the module docstring)."""
    if max_image_pixels > DEFAULT_MAX_PIXELS:  # the pipeline loads each image again under its own limit
        raise ValueError(f"max_image_pixels {max_image_pixels} is above the pipeline's limit {DEFAULT_MAX_PIXELS}")
    roots = [Path(r).resolve() for r in image_roots]
    for root in roots:
        if not root.is_dir():
            raise ValueError(f"image root {root} is not a directory")
    created = int(time.time())
    model_card = {"id": model_name, "object": "model", "created": created, "owned_by": "tinygroundinggpt"}
    pending = 0  # requests being received, answered or waiting for the model (event-loop state: no lock needed)
    app = FastAPI(title="TinyGroundingGPT", description="OpenAI-compatible Chat Completions with grounding boxes")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(_error_body(exc.status, exc.message, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(_error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(_error_body(500, f"internal error: {type(exc).__name__}"), status_code=500)

    def check_model(name: str) -> None:
        if name != model_name:
            message = f"the model {name!r} does not exist; this server serves {model_name!r}"
            raise APIError(404, message, param="model", code="model_not_found")

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        check_model(model_id)
        return model_card

    def answer(chat: ChatInput, max_new_tokens: int, sampling: dict[str, Any]) -> AnswerStream:
        """Runs in a worker thread: reading and decoding the image block too. The answer has read and checked its
        inputs when this returns, so their errors still get a status code; its tokens follow as generated (a request
        without a stream gathers them, so that it too can stop generating when its client goes away)."""
        image = None
        if chat.image_url is not None:
            try:
                image = load_request_image(chat.image_url, roots, max_image_bytes, max_image_pixels)
            except APIError as exc:
                exc.param = chat.image_param  # the loader knows the URL, not where the request put it
                raise
        try:  # the pipeline runs one generation at a time
            return pipeline.stream(image, chat.text, max_new_tokens=max_new_tokens, **sampling)
        except TruncationError as exc:
            raise APIError(400, str(exc), param="messages", code="context_length_exceeded") from exc

    async def admitted(request: Request) -> tuple[ChatCompletionRequest, AnswerStream]:
        """The request parsed and its answer started. A slot is taken before the body is read: each body may hold up
        to ``max_request_bytes`` (and its decoded image) in memory, so bodies being received count too; the caller
        gives it back when the answer ends."""
        nonlocal pending
        if pending >= max_pending:
            raise APIError(
                503,
                f"the server is busy: {pending} requests are being received, answered or waiting; retry later",
                code="busy",
            )
        pending += 1
        try:
            media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "application/json":
                raise APIError(
                    415,
                    f"the request body must be sent as Content-Type: application/json, not {media_type or 'none'!r}",
                    code="unsupported_media_type",
                )
            # Read and parsed here rather than by FastAPI so the body's size is checked before parsing.
            try:
                async with asyncio.timeout(body_seconds):
                    body = await read_body(request, max_request_bytes)
            except TimeoutError:
                raise APIError(
                    408, f"the request body did not arrive within {body_seconds:g} s", code="request_timeout"
                ) from None
            req = await run_in_threadpool(parse_request, body)  # a large body parses for a while: not on the loop
            check_model(req.model)
            if req.n not in (None, 1):
                raise APIError(400, f"n={req.n}: this server returns one choice per request (n=1)", param="n")
            if req.logprobs or req.top_logprobs:
                raise APIError(400, "logprobs are not returned by this server", param="logprobs")
            chat = conversation_input(req.messages)
            asked = req.max_completion_tokens or req.max_tokens
            max_new_tokens = min(asked or max_new_tokens_cap, max_new_tokens_cap)
            # the cap as a default is not the client's choice: it shrinks to what the prompt leaves of the context
            sampling: dict[str, Any] = {"stop": stop_strings(req.stop), "seed": req.seed, "fit_context": not asked}
            if req.temperature and req.temperature >= MIN_TEMPERATURE:
                sampling.update(do_sample=True, temperature=req.temperature)
                if req.top_p is not None:
                    sampling["top_p"] = req.top_p
            result = await run_in_threadpool(answer, chat, max_new_tokens, sampling)
        except BaseException:
            pending -= 1
            raise
        return req, result

    def release() -> None:
        nonlocal pending
        pending -= 1

    async def gathered(request: Request, result: AnswerStream) -> Prediction | None:
        """The whole answer, or None when the client went away first (its generation then stops)."""

        async def watch() -> None:
            while not await request.is_disconnected():
                await asyncio.sleep(DISCONNECT_POLL_SECONDS)
            await run_in_threadpool(result.close)  # waits for the generation to stop: not on the loop

        watcher = asyncio.create_task(watch())
        try:
            pieces = [piece async for piece in iterate_in_threadpool(result)]
        finally:
            watcher.cancel()
            await run_in_threadpool(result.close)
            release()
        gone = watcher.done() and not watcher.cancelled()
        return None if gone or not pieces or not isinstance(pieces[-1], Prediction) else pieces[-1]

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        req, result = await admitted(request)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_name}
        if not req.stream:
            answer = await gathered(request, result)
            if answer is None:  # no one to send it to; the status is for the log
                return JSONResponse(_error_body(499, "the client closed the request"), status_code=499)
            message = {"role": "assistant", "content": answer.text, **_grounding(answer)}
            choice = {"index": 0, "message": message, "finish_reason": _finish(answer), "logprobs": None}
            return JSONResponse({**head, "object": "chat.completion", "choices": [choice], "usage": _usage(answer)})

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            return f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', 'choices': choices, **extra})}\n\n"

        def delta(content: dict[str, Any], finish_reason: str | None = None) -> str:
            return chunk([{"index": 0, "delta": content, "finish_reason": finish_reason, "logprobs": None}])

        async def events() -> AsyncIterator[str]:
            # Inputs were checked before the first byte (their errors got a status code); the text follows as it is
            # generated, then a last delta with the boxes, which need the whole answer.
            yield delta({"role": "assistant", "content": ""})
            async for piece in iterate_in_threadpool(result):
                if isinstance(piece, str):
                    yield delta({"content": piece})
                    continue
                yield delta(_grounding(piece), _finish(piece))
                if req.stream_options is not None and req.stream_options.include_usage:
                    yield chunk([], usage=_usage(piece))
            yield "data: [DONE]\n\n"

        async def ended() -> None:
            await run_in_threadpool(result.close)  # a client gone midway stops the generation
            release()

        return _StreamThenRelease(
            events(), ended, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return app
