"""Model backends behind small interfaces, so no model is hard-wired into the pipeline.

* :class:`ChatBackend` – one prompt plus images in, text out. :class:`OpenAIChatBackend` speaks to any
  OpenAI-compatible endpoint (GPT-4V/4o, or a local vLLM serving an open VLM), images as data URLs.
* :class:`Grounder` – names in, detections out. :class:`GroundingDinoGrounder` runs GroundingDINO
  through transformers' zero-shot object detection, from a Hub id or a local folder.
* :class:`CachedModels` – wraps both with the on-disk cache and counts calls, cache hits and retries.

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

from tinygroundinggpt.boxes import cxcywh_to_xyxy, norm_to_pixel, round_box, validate_pixel_box
from tinygroundinggpt.synthesis.cache import DiskCache, hash_inputs


class ModelCallError(RuntimeError):
    """A call that still failed after every retry (rate limit, timeout, server error)."""


class ChatBackend(Protocol):
    #: Identifies the model in cache keys: two backends with the same ``name`` give the same replies.
    name: str

    def chat(self, prompt: str, images: Sequence[Image.Image]) -> str: ...


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


class OpenAIChatBackend:
    """Any OpenAI-compatible chat endpoint; retries rate limits, timeouts and 5xx with exponential back-off
    (never shorter than a 429's ``Retry-After``).

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
        self.name = f"openai-compatible:{model}:t={temperature}:max_tokens={max_tokens}"
        self.client = openai.OpenAI(
            base_url=base_url, api_key=os.environ.get(api_key_env) or "EMPTY", timeout=timeout, max_retries=0
        )
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.temperature, self.max_tokens = temperature, max_tokens
        self.counter = counter or RetryCounter()

    def chat(self, prompt: str, images: Sequence[Image.Image]) -> str:
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
                return resp.choices[0].message.content or ""
            except transient as exc:
                if attempt == self.max_retries:
                    self.counter.add("errors")
                    raise ModelCallError(f"{type(exc).__name__} after {attempt + 1} attempts: {exc}") from exc
                self.counter.add("retries")
                delay = self.backoff * 2**attempt
                time.sleep(min(self.max_backoff, max(delay, _retry_after(exc) or 0.0)))
            except self._openai.APIError as exc:
                # Not worth retrying now (a 400 for one image, a bad key): leave the image for a rerun.
                self.counter.add("errors")
                raise ModelCallError(f"{type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")


class GroundingDinoGrounder:
    """GroundingDINO via ``AutoModelForZeroShotObjectDetection``; one forward pass per image for all names.

    Each name gets the predicted box that scores highest for it (a box's score for a name is the max
    sigmoid over that name's tokens), which gives the paper's name → box dictionary S1. Scoring names
    here rather than through the processor's ``text_labels`` ties every detection to one listed name.
    """

    def __init__(self, model: str, *, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self._torch = torch
        self.name = f"grounding-dino:{model}"
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(model).to(device).eval()
        self.device = device
        self._lock = threading.Lock()  # one forward at a time: threads share the model

    def ground(self, image: Image.Image, names: Sequence[str]) -> list[Detection]:
        if not names:
            return []
        text = "".join(f"{n.lower()}. " for n in names).strip()
        spans, pos = [], 0
        for n in names:
            spans.append((pos, pos + len(n)))
            pos += len(n) + 2
        enc = self.processor.tokenizer(text, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        token_sets = [[i for i, (s, e) in enumerate(offsets) if e > s and s >= a and e <= b] for a, b in spans]
        inputs = self.processor(images=image, text=text, return_tensors="pt").to(self.device)
        with self._lock, self._torch.no_grad():
            out = self.model(**inputs)
        probs = out.logits[0].sigmoid()  # (queries, text tokens)
        pred = out.pred_boxes[0]  # (queries, 4) centre-size, normalised to the image
        dets = []
        for name, toks in zip(names, token_sets, strict=True):
            if not toks:
                continue  # the name was truncated away (max_text_len)
            per_query = probs[:, toks].max(dim=1).values
            q = int(per_query.argmax())
            box = norm_to_pixel(cxcywh_to_xyxy(pred[q].tolist()), image.width, image.height)
            try:
                box = validate_pixel_box(box, image.width, image.height, repair=True)
            except ValueError:
                continue  # the best box lies wholly outside the image
            dets.append(Detection(name, round_box(box, 2), round(float(per_query[q]), 4)))
        return dets


class CachedModels:
    """The pipeline's single door to models: every call is looked up in, or stored to, the disk cache."""

    def __init__(
        self, cache: DiskCache, chat: ChatBackend | None, grounder: Grounder | None, counter: RetryCounter
    ) -> None:
        # Either may be None; the pipeline checks up front that the stages it will run have theirs.
        self.cache, self.chat_backend, self.grounder, self.counter = cache, chat, grounder, counter

    def chat(self, prompt: str, images: Sequence[Image.Image]) -> str:
        key = hash_inputs(
            {
                "kind": "chat",
                "model": self.chat_backend.name,
                "prompt": prompt,
                "images": [image_digest(i) for i in images],
            }
        )
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        self.counter.add("calls")
        reply = self.chat_backend.chat(prompt, images)
        self.cache.put(key, reply)
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
