"""LLaVA-format JSON: LLaVA-Pretrain-595K (``chat.json``/``blip_laion_cc_sbu_558k.json``),
LLaVA-v1.5-mix665K (``llava_v1_5_mix665k.json``) and ShareGPT4V (``sharegpt4v_*.json``).

Each file is one JSON array of ``{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}]}``;
``<image>`` marks the image in a human turn; text-only records have no ``image``. Records whose text holds
boxes as ``[0.12, 0.3, ...]`` (mix665K's RefCOCO and Visual Genome parts) are skipped and counted unless
``keep_box_text``: the files do not say which frame those are in (LLaVA's issues dispute it), and as targets they
would teach the model a second box format, two decimals in an unknown frame, beside its own; kept, they stay text.
Their COCO images (``coco/train2017/000000123456.jpg``) include the RefCOCO/+/g val/test images, and
LLaVA-v1.5-mix665K holds RefCOCO REC data itself: ``exclude`` drops the records on those images.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tinygroundinggpt.boxes import model_frame_boxes
from tinygroundinggpt.data.converters.common import (
    NO_EXCLUSION,
    ConvertReport,
    ReferEvalImages,
    iter_json_array,
    write_samples,
)
from tinygroundinggpt.data.format import BOX_REF_RE, IMAGE_TOKEN, OBJECT_REF_RE, Sample, reserved_token_problem

ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def llava_sample(
    rec: dict[str, Any], index: int, *, prefix: str = "", image_prefix: str = "", keep_box_text: bool = False
) -> Sample | str:
    """One record → a sample, or the reason it cannot be one."""
    turns = rec.get("conversations")
    if not isinstance(turns, list) or not turns:
        return "no conversations"
    messages = []
    for t in turns:
        role = ROLES.get(t.get("from")) if isinstance(t, dict) and isinstance(t.get("from"), str) else None
        if role is None or not isinstance(t.get("value"), str):
            return "turn with an unknown speaker or no text"
        messages.append({"role": role, "content": t["value"]})
    text = "".join(m["content"] for m in messages)
    if BOX_REF_RE.search(text) or OBJECT_REF_RE.search(text):
        return "text holds a <box:i>/<object:i> placeholder"
    problem = reserved_token_problem(text)
    if problem:
        return problem
    if not keep_box_text and any(model_frame_boxes(m["content"]) for m in messages):
        return "text holds [x1, y1, x2, y2] boxes in an unknown frame (--keep-box-text keeps them)"
    n_images = text.count(IMAGE_TOKEN)
    image = rec.get("image")
    if image is not None and not isinstance(image, str):
        return "'image' is not a string"
    if image is None and n_images:
        return "<image> without an image"
    if image is not None:
        if n_images > 1:
            return "more than one <image>"
        if n_images == 0:
            # LLaVA's loader puts the image first when the text does not place it.
            first = next((m for m in messages if m["role"] == "user"), None)
            if first is None:
                return "an image but no human turn to put it in"
            first["content"] = IMAGE_TOKEN + "\n" + first["content"]
    rid = rec.get("id", index)
    return Sample(
        id=f"{prefix}{rid}",
        image=None if image is None else image_prefix + image,
        messages=messages,
        meta={"source": prefix.rstrip("-") or "llava"},
    )


def iter_llava(
    path: str | Path,
    report: ConvertReport,
    *,
    prefix: str = "",
    image_prefix: str = "",
    exclude: ReferEvalImages = NO_EXCLUSION,
    progress: bool = False,
    keep_box_text: bool = False,
) -> Iterator[Sample]:
    name = Path(path).name
    for i, rec in enumerate(iter_json_array(path, progress=progress)):
        image = rec.get("image") if isinstance(rec, dict) else None
        # matched on the path the sample will carry: bare LLaVA-Instruct names are COCO names only with the prefix
        if isinstance(image, str) and exclude.drops_file(image_prefix + image, report):
            continue
        out = (
            llava_sample(rec, i, prefix=prefix, image_prefix=image_prefix, keep_box_text=keep_box_text)
            if isinstance(rec, dict)
            else "not an object"
        )
        if isinstance(out, str):
            report.skip(out, f"{name}[{i}]")
            continue
        yield out


def convert_llava(path: str | Path, out: str | Path, **kwargs: Any) -> ConvertReport:
    report = ConvertReport()
    return write_samples(out, iter_llava(path, report, **kwargs), report)
