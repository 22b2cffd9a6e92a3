"""Model backends behind small interfaces, so no model is hard-wired into the pipeline.

* :class:`ChatBackend` – one prompt plus images in, text (or a :class:`ChatReply` saying whether the
  token limit cut it) out. :class:`OpenAIChatBackend` speaks to any OpenAI-compatible endpoint (GPT-4V/4o,
  or a local vLLM serving an open VLM), images as data URLs.
* :class:`Grounder` – names in, detections out. :class:`GroundingDinoGrounder` runs GroundingDINO
  through transformers' zero-shot object detection, from a Hub id or a local folder.
* :class:`CachedModels` – wraps both with the on-disk cache and counts calls, cache hits and retries.

A :class:`RequestRejected` (the server refused this request, e.g. a content-policy 400) marks the image
unusable; a :class:`ModelCallError` leaves it unfinished for a rerun.

Object *recognition* from an existing annotation needs no backend: see ``stages.recognise``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from tinygroundinggpt.boxes import BoxError, cxcywh_to_xyxy, iou, norm_to_pixel, round_box, validate_pixel_box
from tinygroundinggpt.synthesis.cache import DiskCache, hash_inputs


class ModelCallError(RuntimeError):
    """A call that still failed after every retry (rate limit, timeout, server error), or one refused for
    a reason a rerun may fix (bad key, unknown model): the image is left for a rerun."""


class RequestRejected(RuntimeError):
    """The server refused this request for what it holds (a 4xx whose error code is a content-policy refusal
    or an invalid image): retrying cannot help, so the image is marked unusable and the run goes on."""


@dataclass(frozen=True)
class ChatReply:
    text: str
    truncated: bool = False  # the token limit cut the reply (finish_reason "length")


class ChatBackend(Protocol):
    #: Identifies the model in cache keys: two backends with the same ``name`` give the same replies.
    name: str

    def chat(self, prompt: str, images: Sequence[Image.Image]) -> str | ChatReply: ...


@dataclass
class Detection:
    name: str
    box: tuple[float, float, float, float]  # original-image pixels
    score: float


class Grounder(Protocol):
    name: str

    def ground(self, image: Image.Image, names: Sequence[str]) -> list[Detection]: ...


def image_png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def image_digest(image: Image.Image) -> str:
    """Content hash of the pixels (not of a file), so the same image keys the same cache entry."""
    h = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(image_png_bytes(image)).decode("ascii")


class RetryCounter:
    """Thread-safe counters shared by the backends and the report."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.retries = 0
        self.calls = 0
        self.errors = 0

    def add(self, field: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + n)


def _retry_after(exc: Exception) -> float | None:
    """Seconds a rate-limited server asked us to wait (``Retry-After``), when it said so in seconds."""
    response = getattr(exc, "response", None)
    try:
        return float(response.headers["retry-after"]) if response is not None else None
    except (KeyError, ValueError):
        return None


# 4xx answers about the key, its permissions or the model/endpoint rather than about one request. Other
# 4xx (but 408 and 429, retried) reject the request itself.
# Error codes that refuse this request for what it holds, so that no rerun can help (OpenAI's, Azure's).
_REFUSAL_CODES = frozenset(
    {
        "content_policy_violation",
        "content_filter",
        "invalid_image",
        "invalid_image_format",
        "image_parse_error",
        "context_length_exceeded",  # this prompt (an image with many objects) is too long, not every request
    }
)


def _refuses_this_request(exc: Exception) -> bool:
    """A 4xx about this request rather than the server's setup: refused content or image, or a prompt past the
    context (OpenAI's code; vLLM sends none but says "maximum context length")."""
    return getattr(exc, "code", None) in _REFUSAL_CODES or "maximum context length" in str(exc).lower()


class OpenAIChatBackend:
    """Any OpenAI-compatible chat endpoint; retries rate limits, timeouts (408 too) and 5xx with exponential
    back-off (never shorter than a 429's ``Retry-After``). Another 4xx raises :class:`RequestRejected`
    (but 401/403/404, about the key or model, raise :class:`ModelCallError`). A reply cut by ``max_tokens``
    comes back with ``truncated`` set: at temperature 0 a retry would be cut the same way.

    The key is read from the environment variable ``api_key_env`` (a local vLLM accepts any key). The
    client's own retries are off so that every retry is counted here and the back-off is ours.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 2.0,
        max_backoff: float = 60.0,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        counter: RetryCounter | None = None,
    ) -> None:
        import openai

        self._openai = openai
        self.model = model
        self.client = openai.OpenAI(
            base_url=base_url, api_key=os.environ.get(api_key_env) or "EMPTY", timeout=timeout, max_retries=0
        )
        # The endpoint is part of the identity: two servers may serve different models under one name.
        self.name = f"openai-compatible:{self.client.base_url}:{model}:t={temperature}:max_tokens={max_tokens}"
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.temperature, self.max_tokens = temperature, max_tokens
        self.counter = counter or RetryCounter()

    def chat(self, prompt: str, images: Sequence[Image.Image]) -> ChatReply:
        content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in images]
        content.append({"type": "text", "text": prompt})
        transient = (
            self._openai.RateLimitError,
            self._openai.APITimeoutError,
            self._openai.APIConnectionError,
            self._openai.InternalServerError,
        )
        for attempt in range(self.max_retries + 1):
            try:
                resp = self.client.chat.completions.create(
                    model=self.model,
                    messages=[{"role": "user", "content": content}],
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                )
                if not resp.choices:  # a broken or overloaded server; a rerun asks again
                    self.counter.add("errors")
                    raise ModelCallError(f"the reply from {self.client.base_url} has no choices")
                choice = resp.choices[0]
                return ChatReply(choice.message.content or "", truncated=choice.finish_reason == "length")
            except self._openai.APIError as exc:
                status = getattr(exc, "status_code", None)
                if not isinstance(exc, transient) and status != 408:
                    self.counter.add("errors")
                    if status is not None and 400 <= status < 500 and _refuses_this_request(exc):
                        raise RequestRejected(f"HTTP {status} {type(exc).__name__}: {exc}") from exc
                    # Any other 4xx (a bad key, an unknown model, a server limit such as images per request) would
                    # fail every image alike and is fixed on the server: leave the images for a rerun.
                    raise ModelCallError(f"{type(exc).__name__}: {exc}") from exc
                if attempt == self.max_retries:
                    self.counter.add("errors")
                    raise ModelCallError(f"{type(exc).__name__} after {attempt + 1} attempts: {exc}") from exc
                self.counter.add("retries")
                delay = self.backoff * 2**attempt
                time.sleep(min(self.max_backoff, max(delay, _retry_after(exc) or 0.0)))
        raise AssertionError("unreachable")


class GroundingDinoGrounder:
    """GroundingDINO via ``AutoModelForZeroShotObjectDetection``; one forward pass per image for all names,
    or one per chunk of names when their text would pass the model's ``max_text_len`` tokens (the model
    silently truncates longer text).

    Each name gets the predicted box that scores highest for it (a box's score for a name is the max
    sigmoid over that name's tokens), which gives the paper's name → box dictionary S1. A name listed k
    times gets its k best boxes that overlap each other by at most ``nms_iou``, so that several persons get
    several boxes. Scoring names here rather than through the processor's ``text_labels`` ties every
    detection to one listed name.
    """

    def __init__(self, model: str, *, device: str = "cpu", nms_iou: float = 0.5) -> None:
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self._torch = torch
        self.name = f"grounding-dino:{model}" + ("" if nms_iou == 0.5 else f":nms={nms_iou}")
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(model).to(device).eval()
        self.max_text_len = int(self.model.config.max_text_len)
        self.device, self.nms_iou = device, nms_iou
        self._lock = threading.Lock()  # one forward at a time: threads share the model

    def _chunks(self, names: list[str]) -> list[list[str]]:
        """``names`` in order, split so that each chunk's text ("a. b. c.") fits ``max_text_len`` tokens; a
        name that alone would not fit is left out (the model cannot read it whole)."""
        chunks: list[list[str]] = []
        used = self.max_text_len  # forces a first chunk
        for n in names:
            cost = len(self.processor.tokenizer(f"{n.lower()}.", add_special_tokens=False)["input_ids"])
            if cost + 2 > self.max_text_len:
                continue
            if used + cost > self.max_text_len:
                chunks.append([])
                used = 2  # [CLS] and [SEP]
            chunks[-1].append(n)
            used += cost
        return chunks

    def _ground_chunk(self, image: Image.Image, names: list[str], want: dict[str, int]) -> dict[str, list[Detection]]:
        text = "".join(f"{n.lower()}. " for n in names).strip()
        spans, pos = [], 0
        for n in names:
            spans.append((pos, pos + len(n.lower())))
            pos += len(n.lower()) + 2
        offsets = self.processor.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        inputs = self.processor(images=image, text=text, return_tensors="pt").to(self.device)
        with self._lock, self._torch.no_grad():
            out = self.model(**inputs)
        probs = out.logits[0].sigmoid()  # (queries, max_text_len): tokens past it were never seen
        pred = out.pred_boxes[0]  # (queries, 4) centre-size, normalised to the image
        found: dict[str, list[Detection]] = {}
        for name, (a, b) in zip(names, spans, strict=True):
            # Chunks fit the text limit; the bound is a guard should a tokenizer count otherwise.
            toks = [i for i, (s, e) in enumerate(offsets) if e > s and s >= a and e <= b and i < probs.shape[1]]
            if not toks:
                continue
            per_query = probs[:, toks].max(dim=1).values
            picked: list[Detection] = []
            for q in per_query.argsort(descending=True, stable=True).tolist():
                box = norm_to_pixel(cxcywh_to_xyxy(pred[q].tolist()), image.width, image.height)
                try:
                    box = round_box(validate_pixel_box(box, image.width, image.height, repair=True), 2)
                except BoxError:
                    continue  # this box lies wholly outside the image
                if any(iou(box, d.box) > self.nms_iou for d in picked):
                    continue  # another instance must be another box
                picked.append(Detection(name, box, round(float(per_query[q]), 4)))
                if len(picked) == want[name]:
                    break
            found[name] = picked
        return found

    def ground(self, image: Image.Image, names: Sequence[str]) -> list[Detection]:
        """Detections in the order of ``names``; a repeated name's i-th listing gets its i-th best box."""
        want: dict[str, int] = {}
        for n in names:
            want[n] = want.get(n, 0) + 1
        found: dict[str, list[Detection]] = {}
        for chunk in self._chunks(list(want)):
            found.update(self._ground_chunk(image, chunk, want))
        dets, used = [], dict.fromkeys(want, 0)
        for n in names:
            if used[n] < len(found.get(n, [])):
                dets.append(found[n][used[n]])
                used[n] += 1
        return dets


class CachedModels:
    """The pipeline's single door to models: every call is looked up in, or stored to, the disk cache."""

    def __init__(
        self, cache: DiskCache, chat: ChatBackend | None, grounder: Grounder | None, counter: RetryCounter
    ) -> None:
        # Either may be None; the pipeline checks up front that the stages it will run have theirs.
        self.cache, self.chat_backend, self.grounder, self.counter = cache, chat, grounder, counter

    def chat(self, prompt: str, images: Sequence[Image.Image]) -> ChatReply:
        """The backend's reply, from the cache when stored. A truncated reply is stored as such (a retry at
        the same ``max_tokens`` gives the same cut; a larger limit is another backend name, another key)."""
        key = hash_inputs(
            {
                "kind": "chat",
                "model": self.chat_backend.name,
                "prompt": prompt,
                "images": [image_digest(i) for i in images],
            }
        )
        hit = self.cache.get(key)
        if isinstance(hit, str):
            return ChatReply(hit)
        if hit is not None:
            return ChatReply(hit["text"], truncated=hit["truncated"])
        self.counter.add("calls")
        reply = self.chat_backend.chat(prompt, images)
        reply = reply if isinstance(reply, ChatReply) else ChatReply(reply)
        # A complete reply is stored as its bare text, a cut-off one with its flag.
        self.cache.put(key, {"text": reply.text, "truncated": True} if reply.truncated else reply.text)
        return reply

    def ground(self, image: Image.Image, names: Sequence[str]) -> list[Detection]:
        key = hash_inputs(
            {"kind": "ground", "model": self.grounder.name, "names": list(names), "image": image_digest(image)}
        )
        hit = self.cache.get(key)
        if hit is not None:
            return [Detection(d["name"], tuple(d["box"]), d["score"]) for d in hit]
        self.counter.add("calls")
        dets = self.grounder.ground(image, names)
        self.cache.put(key, [{"name": d.name, "box": list(d.box), "score": d.score} for d in dets])
        return dets
