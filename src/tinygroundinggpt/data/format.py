"""The project's sample format: one JSON object per line (JSONL).

```json
{"id": "refcoco-1",
 "image": "images/0001.png",            # relative to the data file's folder (or an image root)
 "width": 640, "height": 480,           # optional; checked against the image when present
 "boxes": [[12, 30, 200, 310], ...],    # ORIGINAL-IMAGE PIXELS, x1 y1 x2 y2 (storage frame)
 "messages": [
   {"role": "user", "content": "<image>\\nWhere is the red circle?"},
   {"role": "assistant", "content": "It is at <box:0>."}]}
```

Text never holds coordinates: ``<box:i>`` stands for ``boxes[i]`` and is rendered in the model frame
at processing time; ``<object:i>`` stands for the object image cropped from ``boxes[i]``; ``<image>``
for the global image. So the model frame can change without rewriting data (Shikra's pattern).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinygroundinggpt.boxes import Box, BoxError, validate_box_shape, validate_pixel_box

IMAGE_TOKEN = "<image>"
OBJECT_TOKEN = "<object>"
BOX_REF_RE = re.compile(r"<box:(\d+)>")
OBJECT_REF_RE = re.compile(r"<object:(\d+)>")
ROLES = ("system", "user", "assistant")
# LLaVA-1.5's short-answer instruction: its training mixture appends it to VQA-style questions whose answer is
# one word, and the evaluation protocols (POPE, VQAv2, GQA) to every question, so a model must have seen it.
SHORT_ANSWER_PROMPT = "\nAnswer the question using a single word or phrase."


# Qwen's ChatML control tokens are all ``<|name|>``; one written in text would open or close turns of its own.
CONTROL_TOKEN_RE = re.compile(r"<\|[^|<>]*\|>")


def reserved_token_problem(text: str) -> str | None:
    """A token that ``text`` must not hold literally, if it does: a bare ``<object>`` (which would become object
    feature tokens with no object image behind them; ``<object:i>`` names one) or a ChatML control token."""
    if OBJECT_TOKEN in text:
        return f"text holds a bare {OBJECT_TOKEN}, which no object image backs (write <object:i>)"
    control = CONTROL_TOKEN_RE.search(text)
    if control:
        return f"text holds the chat control token {control.group()}"
    return None


def reference_problem(text: str, n_boxes: int, has_image: bool) -> str | None:
    """What is wrong with ``text``'s ``<box:i>`` / ``<object:i>`` / ``<image>`` given ``n_boxes`` boxes and
    an image or none, if anything; also a reserved token written literally (:func:`reserved_token_problem`)."""
    problem = reserved_token_problem(text)
    if problem:
        return problem
    for ref in BOX_REF_RE.findall(text) + OBJECT_REF_RE.findall(text):
        if int(ref) >= n_boxes:
            return f"<box:{ref}> / <object:{ref}> refers to box {ref}, but there are {n_boxes} boxes"
    n_images = text.count(IMAGE_TOKEN)
    if n_images > has_image:
        return f"uses {n_images} <image> placeholders, but there is {'one image' if has_image else 'no image'}"
    # Boxes are stored in the image's pixels: without an image a <box:i> has no frame to be rendered in.
    if (BOX_REF_RE.search(text) or OBJECT_REF_RE.search(text)) and not has_image:
        return "uses <box:i> / <object:i>, but there is no image"
    return None


class SampleError(ValueError):
    """A sample that cannot be used, with the reason."""


@dataclass
class Sample:
    id: str
    messages: list[dict[str, str]]
    image: str | None = None
    boxes: list[Box] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    line: int | None = field(default=None, compare=False)  # its line in the file it was read from (for reports)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.image is not None:
            out["image"] = self.image
        if self.width is not None:
            out["width"], out["height"] = self.width, self.height
        out["boxes"] = [list(b) for b in self.boxes]
        out["messages"] = self.messages
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Sample:
        if not isinstance(obj, dict):
            raise SampleError(f"expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in ("id", "messages") if k not in obj]
        if missing:
            raise SampleError(f"missing key(s) {missing}")
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise SampleError("'messages' must be a non-empty list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise SampleError(f"messages[{i}] must be {{'role': one of {ROLES}, 'content': str}}, got {m!r}")
        boxes = obj.get("boxes") or []
        if not isinstance(boxes, list) or not all(isinstance(b, list) for b in boxes):
            raise SampleError("'boxes' must be a list of [x1, y1, x2, y2]")
        image = obj.get("image")
        if image is not None and not isinstance(image, str):
            raise SampleError(f"'image' must be a string (an image path), got {type(image).__name__}: {image!r}")
        size = (obj.get("width"), obj.get("height"))
        if size != (None, None) and not all(type(v) is int and v > 0 for v in size):
            raise SampleError(f"'width' and 'height' must be given together as positive integers, got {size}")
        sample = cls(
            id=str(obj["id"]),
            messages=messages,
            image=image,
            boxes=[tuple(b) for b in boxes],  # type: ignore[misc]
            width=obj.get("width"),
            height=obj.get("height"),
            meta=obj.get("meta") or {},
        )
        sample.validate()
        sample.boxes = [tuple(float(v) for v in b) for b in sample.boxes]  # type: ignore[misc]
        return sample

    def validate(self) -> None:
        """Everything checkable without opening the image; raises :class:`SampleError`."""
        self.check_messages()
        self.check_references()
        self.check_boxes(self.width, self.height)

    def check_messages(self) -> None:
        """The turn order the chat template needs and one global image at most.

        Labels come from rendering each conversation prefix before an assistant turn, which needs a turn
        before the first reply; ChatML renders any order after that, so alternation is not required.
        """
        roles = [m["role"] for m in self.messages]
        turns = [r for r in roles if r != "system"]
        if not turns or turns[0] != "user":
            raise SampleError(f"the conversation must start with a user turn (after any system turn): {roles}")
        if "assistant" not in turns:
            raise SampleError(f"the conversation has no assistant turn to learn from: {roles}")
        n_images = sum(m["content"].count(IMAGE_TOKEN) for m in self.messages)
        if n_images > 1:
            raise SampleError(f"the conversation has {n_images} <image> placeholders; a sample has one image")
        if any(IMAGE_TOKEN in m["content"] for m in self.messages if m["role"] != "user"):
            raise SampleError("<image> must be in a user turn")

    def check_references(self) -> None:
        """Every ``<box:i>``/``<object:i>`` names an existing box; image tokens need an image."""
        for m in self.messages:
            problem = reference_problem(m["content"], len(self.boxes), self.image is not None)
            if problem:
                raise SampleError(problem)

    def check_boxes(self, width: int | None = None, height: int | None = None) -> None:
        """Boxes against the image size, or, without one, what can be checked of them alone."""
        for i, b in enumerate(self.boxes):
            what = f"boxes[{i}]"
            try:
                if width is None or height is None:
                    validate_box_shape(b, what=what)
                else:
                    validate_pixel_box(b, width, height, what=what)
            except BoxError as exc:
                raise SampleError(str(exc)) from exc


@dataclass
class LoadReport:
    """What a data file held: samples read and samples skipped with (file, line, problem)."""

    path: str
    read: int = 0
    skipped: list[tuple[str, int, str]] = field(default_factory=list)

    def summary(self) -> str:
        s = f"{self.path}: {self.read} samples"
        if self.skipped:
            s += f", {len(self.skipped)} skipped"
        return s


def iter_jsonl(path: str | Path, report: LoadReport | None = None) -> Iterator[Sample]:
    """Samples of a JSONL file; bad lines are recorded in ``report`` (file, line, problem) and skipped."""
    path = Path(path)
    report = report if report is not None else LoadReport(str(path))
    with path.open("rb") as fh:  # decoded line by line, so that a bad byte costs its line, not the file
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                sample = Sample.from_json(json.loads(raw.decode("utf-8")))
            except (SampleError, TypeError, ValueError) as exc:  # ValueError: bad JSON, bad UTF-8
                report.skipped.append((str(path), lineno, f"{type(exc).__name__}: {exc}"))
                continue
            sample.line = lineno
            report.read += 1
            yield sample


def write_jsonl(path: str | Path, samples: list[Sample] | Iterator[Sample]) -> int:
    """Write samples atomically (temp file + rename); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for s in samples:
            fh.write(json.dumps(s.to_json(), ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n
