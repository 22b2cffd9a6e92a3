"""Flickr30K Entities from its published ``Sentences/<id>.txt`` and ``Annotations/<id>.xml``.

A sentence line marks each phrase as ``[/EN#<entity>/<type>[/<type>...] words]``. An xml file is PASCAL
VOC-like: ``size/width, height``; each ``object`` has one or more ``name`` (entity ids) and either a
``bndbox`` with 1-based inclusive corners, or ``nobndbox`` / ``scene`` flags. An entity may have
several boxes (one phrase, several people).

Two outputs: grounded-caption samples (each boxed phrase followed by its ``<box:i>``), or a
synthesis manifest (objects = phrase + the union of its entity's boxes, captions = the five sentences) that feeds
``tgg synth`` — the paper builds its stage-3 data from Flickr30K Entities this way.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tinygroundinggpt.boxes import (
    ANNOTATION_OVERSHOOT,
    Box,
    BoxError,
    inclusive_to_pixel,
    union_box,
    validate_pixel_box,
)
from tinygroundinggpt.data.converters.common import ConvertReport, write_samples
from tinygroundinggpt.data.format import Sample

CAPTION_PROMPT = "Briefly describe this image, giving the coordinates of the objects you mention."
_PHRASE_RE = re.compile(r"\[/EN#(\d+)((?:/[^\s/\]]+)*)\s+([^\]]*)\]")


def parse_sentence(line: str) -> tuple[str, list[tuple[str, str, int, int]]]:
    """A sentence line → (plain text, [(entity id, phrase, start, end) with offsets into the text])."""
    line = line.strip()
    text, phrases, last, pos = [], [], 0, 0
    for m in _PHRASE_RE.finditer(line):
        text.append(line[last : m.start()])
        pos += m.start() - last
        phrase = " ".join(m.group(3).split())
        phrases.append((m.group(1), phrase, pos, pos + len(phrase)))
        text.append(phrase)
        pos += len(phrase)
        last = m.end()
    text.append(line[last:])
    return "".join(text), phrases


def parse_annotation(path: str | Path, skipped: Counter[str] | None = None) -> tuple[int, int, dict[str, list[Box]]]:
    """An xml file → (width, height, entity id → boxes in the pixel frame). A box that is wrong for the image is
    left out (its phrase stays text, as for an entity without a box) and counted in ``skipped`` by kind."""
    root = ET.parse(path).getroot()
    width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
    boxes: dict[str, list[Box]] = {}
    for obj in root.iter("object"):
        bnd = obj.find("bndbox")
        if bnd is None:
            continue  # nobndbox / scene: the phrase stays text
        corners = [float(bnd.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        try:
            box = validate_pixel_box(
                inclusive_to_pixel(corners), width, height, repair=True, max_overshoot=ANNOTATION_OVERSHOOT
            )
        except BoxError as exc:
            if skipped is not None:
                skipped[f"box {exc.kind}"] += 1
            continue
        for name in obj.findall("name"):
            boxes.setdefault(name.text.strip(), []).append(box)
    return width, height, boxes


def _ids(sentences_dir: Path, ids: Sequence[str] | None) -> list[str]:
    return list(ids) if ids is not None else sorted(p.stem for p in sentences_dir.glob("*.txt"))


def _load(image_id: str, sentences_dir: Path, annotations_dir: Path, report: ConvertReport) -> Any:
    try:
        w, h, boxes = parse_annotation(annotations_dir / f"{image_id}.xml", report.skipped)
        lines = (sentences_dir / f"{image_id}.txt").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        report.skip("sentences or annotation file missing", str(exc.filename or image_id))
        return None
    except (ET.ParseError, TypeError, ValueError) as exc:
        report.skip("unreadable annotation xml", f"{image_id}.xml ({exc})")
        return None
    return w, h, boxes, [ln for ln in lines if ln.strip()]


def iter_flickr30k(
    sentences_dir: str | Path,
    annotations_dir: str | Path,
    report: ConvertReport,
    *,
    ids: Sequence[str] | None = None,
    image_prefix: str = "",
    progress: bool = False,
) -> Iterator[Sample]:
    """One grounded-caption sample per sentence that has at least one boxed phrase."""
    sentences_dir, annotations_dir = Path(sentences_dir), Path(annotations_dir)
    for image_id in tqdm(_ids(sentences_dir, ids), desc="flickr30k", unit="img", disable=not progress):
        loaded = _load(image_id, sentences_dir, annotations_dir, report)
        if loaded is None:
            continue
        w, h, entity_boxes, lines = loaded
        for k, line in enumerate(lines):
            text, phrases = parse_sentence(line)
            boxes: list[Box] = []
            out, last = [], 0
            for entity, _phrase, _start, end in phrases:
                refs = []
                for box in entity_boxes.get(entity, []):
                    if box not in boxes:
                        boxes.append(box)
                    refs.append(f"<box:{boxes.index(box)}>")
                out.append(text[last:end] + ("" if not refs else " " + " ".join(refs)))
                last = end
            out.append(text[last:])
            if not boxes:
                report.skip("sentence without a boxed phrase", f"{image_id}.txt sentence {k}")
                continue
            yield Sample(
                id=f"flickr30k-{image_id}-{k}",
                image=f"{image_prefix}{image_id}.jpg", width=w, height=h, boxes=boxes,
                messages=[
                    {"role": "user", "content": "<image>\n" + CAPTION_PROMPT},
                    {"role": "assistant", "content": "".join(out)},
                ],
                meta={"source": "flickr30k_entities"},
            )  # fmt: skip


def iter_flickr30k_manifest(
    sentences_dir: str | Path,
    annotations_dir: str | Path,
    report: ConvertReport,
    *,
    ids: Sequence[str] | None = None,
    image_prefix: str = "",
    progress: bool = False,
) -> Iterator[dict[str, Any]]:
    """One synthesis-manifest record per image: each boxed entity, named by its first phrase, is one object."""
    sentences_dir, annotations_dir = Path(sentences_dir), Path(annotations_dir)
    for image_id in tqdm(_ids(sentences_dir, ids), desc="flickr30k", unit="img", disable=not progress):
        loaded = _load(image_id, sentences_dir, annotations_dir, report)
        if loaded is None:
            continue
        w, h, entity_boxes, lines = loaded
        parsed = [parse_sentence(line) for line in lines]
        names: dict[str, str] = {}
        for _, phrases in parsed:
            for entity, phrase, _, _ in phrases:
                names.setdefault(entity, phrase.lower())
        # One object per entity, its boxes' union: an entity's phrase names all its boxes together ("two young
        # guys"), so on one of them it would teach the model a wrong description of that region.
        objects = [
            {"name": names[e], "box": list(union_box(boxes))}
            for e, boxes in sorted(entity_boxes.items(), key=lambda kv: int(kv[0])) if e in names
        ]  # fmt: skip
        yield {
            "id": f"flickr30k-{image_id}", "image": f"{image_prefix}{image_id}.jpg", "width": w, "height": h,
            "objects": objects, "captions": [text for text, _ in parsed],
        }  # fmt: skip


def convert_flickr30k(
    sentences_dir: str | Path,
    annotations_dir: str | Path,
    out: str | Path,
    *,
    manifest: bool = False,
    ids_file: str | Path | None = None,
    **kwargs: Any,
) -> ConvertReport:
    """Samples (or, with ``manifest``, a synthesis manifest) for the ids in ``ids_file`` (train.txt,
    val.txt, test.txt as published) or for every sentence file."""
    report = ConvertReport()
    ids = Path(ids_file).read_text().split() if ids_file else None
    if not manifest:
        return write_samples(out, iter_flickr30k(sentences_dir, annotations_dir, report, ids=ids, **kwargs), report)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in iter_flickr30k_manifest(sentences_dir, annotations_dir, report, ids=ids, **kwargs):
            fh.write(json.dumps(rec) + "\n")
            report.written += 1
    tmp.replace(out)
    return report
