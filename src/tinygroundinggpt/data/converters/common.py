"""What every converter shares: reading JSON (a whole file, or a JSON array streamed), progress by bytes, a count
of what was skipped and where, and keeping the RefCOCO/+/g evaluation images out of training data."""

from __future__ import annotations

import json
import pickle
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from tinygroundinggpt.data.format import Sample, SampleError, write_jsonl

_CHUNK = 1 << 20
_WS = " \t\r\n"
REFER_EVAL_REASON = "on a RefCOCO/+/g val/test image"
REFER_EVAL_FILES = ("refs(unc).p", "refs(umd).p")
# COCO file names: COCO_train2014_000000123456.jpg, or 000000123456.jpg under a COCO folder (train2017/...).
_COCO_FILE_RE = re.compile(r"(?:^|/)COCO_[a-z]+\d{4}_(\d{12})\.\w+$")
_COCO_BARE_RE = re.compile(r"(?:^|/)(?:[^/]*coco[^/]*|(?:train|val)20(?:14|17))/(?:[^/]+/)*(\d{12})\.\w+$", re.I)
# Visual Genome file names as LLaVA-v1.5-mix665K stores them (GQA's images are VG's): gqa/images/2354786.jpg,
# vg/VG_100K/2.jpg, vg/VG_100K_2/1.jpg; the id is VG's, which image_data.json maps to a COCO id (about half)
_VG_FILE_RE = re.compile(r"(?:^|/)(?:gqa/images|VG_100K(?:_2)?)/(\d+)\.\w+$", re.I)
_EXAMPLES = 3  # where the first records skipped for each reason are, so that one can look them up


class RecordError(ValueError):
    """A record that lacks a field, or holds one of the wrong type: the record is skipped, not the file."""


@dataclass
class ConvertReport:
    """Samples written and records skipped, by reason (a converter never stops at one bad record)."""

    written: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    excluded_images: set[int] = field(default_factory=set)  # COCO ids
    unchecked_vg: int = 0  # records on Visual Genome images that no VG → COCO map could check
    where: dict[str, list[str]] = field(default_factory=dict)  # reason → the first records skipped for it

    def skip(self, reason: str, where: str, n: int = 1) -> None:
        """Count ``n`` records skipped for ``reason``; ``where`` locates them (``file[3].regions[0]``, from 0)."""
        if not n:
            return
        self.skipped[reason] += n
        seen = self.where.setdefault(reason, [])
        if len(seen) < _EXAMPLES:
            seen.append(where)

    def summary(self) -> str:
        text = f"{self.written} sample{'' if self.written == 1 else 's'} written"
        if self.skipped:
            text += "; skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
        if self.excluded_images:
            text += f" ({len(self.excluded_images)} RefCOCO/+/g val/test images excluded)"
        if self.unchecked_vg:
            text += (
                f"\n  warning: {self.unchecked_vg} records on Visual Genome images (gqa/, VG_100K/) were not checked "
                "against the RefCOCO/+/g val/test images (half of VG's are COCO's): give --vg-image-data"
            )
        for reason, seen in sorted(self.where.items()):
            more = self.skipped[reason] - len(seen)
            text += f"\n  {reason}: {', '.join(seen)}" + (f" and {more} more" if more else "")
        return text


def number(rec: Any, key: str, what: str) -> float:
    """``rec[key]`` if it is a number, else :class:`RecordError` (``what`` names the kind of record)."""
    value = rec.get(key) if isinstance(rec, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"{what} without a number {key!r}")
    return value


def load_json(path: str | Path) -> Any:
    """A whole JSON file; a malformed one is a ValueError naming the file (json's own message names none)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


class _PlainDataUnpickler(pickle.Unpickler):
    """refs files hold only lists, dicts, strings and numbers: refuse anything that would run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing {module}.{name}: a refs file holds plain data only")


def load_refs(path: str | Path) -> list[dict[str, Any]]:
    """A ``refer`` API ``refs(*).p`` file (RefCOCO/+/g) as plain data."""
    with Path(path).open("rb") as fh:
        try:
            # The published files were pickled by Python 2; latin1 maps its byte strings one to one.
            return _PlainDataUnpickler(fh, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:  # cut short, or not plain data
            raise ValueError(f"{path}: not a refer API refs file ({type(exc).__name__}: {exc})") from exc


def coco_id_of_file(path: str) -> int | None:
    """The COCO image id in a COCO image's file name, else ``None`` (train2014 and train2017 share ids)."""
    m = _COCO_FILE_RE.search(path) or _COCO_BARE_RE.search(path)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class ReferEvalImages:
    """The COCO image ids that any RefCOCO/RefCOCO+/RefCOCOg val or test split uses.

    Every RefCOCO image is a COCO train2014 image, so COCO, Visual Genome (``coco_id``) and LLaVA data hold
    them too; training on them leaks the REC benchmarks (Shikra, MiniGPT-v2, Ferret and GroundingGPT remove
    them). An empty instance excludes nothing.
    """

    coco_ids: frozenset[int] = frozenset()

    files: tuple[str, ...] = ()  # the refs files the ids come from

    vg_to_coco: dict[int, int] | None = field(default=None, compare=False)  # Visual Genome id → COCO id

    @classmethod
    def load(cls, root: str | Path) -> ReferEvalImages:
        """The ``refs(unc).p`` / ``refs(umd).p`` files in ``root`` or one folder down (the refer API's
        ``data/<dataset>/``): the splits of the REC benchmarks (RefCOCO and RefCOCO+ by UNC, RefCOCOg by UMD).
        RefCOCOg's Google split divides objects, not images, and is no benchmark here: its files are not read."""
        root = Path(root)
        files = sorted(f for pattern in REFER_EVAL_FILES for f in [*root.glob(pattern), *root.glob(f"*/{pattern}")])
        if not files:
            raise FileNotFoundError(
                f"no refs(unc).p or refs(umd).p in {root} or its subfolders (refcoco/, refcoco+/, refcocog/)"
            )
        ids = frozenset(int(r["image_id"]) for f in files for r in load_refs(f) if r.get("split") != "train")
        return cls(ids, tuple(str(f) for f in files))

    def drops(self, coco_id: int | None, report: ConvertReport, n: int = 1) -> bool:
        """Whether the image ``coco_id`` is an evaluation image; if so its ``n`` records count as skipped."""
        if coco_id is None or coco_id not in self.coco_ids:
            return False
        report.skipped[REFER_EVAL_REASON] += n
        report.excluded_images.add(coco_id)
        return True

    def with_visual_genome(self, image_data: str | Path) -> ReferEvalImages:
        """This exclusion, also matching Visual Genome file names (``gqa/images/<vg id>.jpg``, ``VG_100K/...``) through
        the ``coco_id`` of VG's ``image_data.json``."""
        records = load_json(image_data)
        if not isinstance(records, list):
            raise ValueError(f"{image_data}: not Visual Genome's image_data.json (a JSON array of images)")
        ids = {}
        for i, rec in enumerate(records):
            vg = rec.get("image_id", rec.get("id")) if isinstance(rec, dict) else None
            if not isinstance(vg, int):
                raise ValueError(f"{image_data}[{i}]: an image without an integer image_id")
            if rec.get("coco_id") is not None:
                ids[vg] = int(rec["coco_id"])
        return ReferEvalImages(self.coco_ids, self.files, ids)

    def drops_file(self, path: str | None, report: ConvertReport, n: int = 1) -> bool:
        """:meth:`drops` for an image named by its COCO file name, or by its Visual Genome one when the VG → COCO map
        is given (without it such records are counted as unchecked); other names never match."""
        if not path:
            return False
        coco = coco_id_of_file(path)
        if coco is None and self.coco_ids and (vg := _VG_FILE_RE.search(path)):
            if self.vg_to_coco is None:
                report.unchecked_vg += n
                return False
            coco = self.vg_to_coco.get(int(vg.group(1)))
        return self.drops(coco, report, n)


NO_EXCLUSION = ReferEvalImages()


def _fill(fh: IO[str], buf: str, bar: tqdm | None) -> tuple[str, bool]:
    chunk = fh.read(_CHUNK)
    if bar is not None:
        bar.update(len(chunk.encode("utf-8")))
    return buf + chunk, not chunk


def iter_json_array(path: str | Path, *, progress: bool = False, desc: str | None = None) -> Iterator[Any]:
    """The elements of a file holding one top-level JSON array, decoded one at a time.

    Visual Genome's and LLaVA's files are single arrays of up to several GB; this holds one chunk
    (1 MB, or one element when larger) at a time; consumed text is dropped at each refill.
    """
    path = Path(path)
    decoder = json.JSONDecoder()
    bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=desc or path.name, disable=not progress)
    with path.open(encoding="utf-8") as fh, bar:
        buf, eof = _fill(fh, "", bar)
        buf = buf.lstrip(_WS + "\ufeff")
        if not buf.startswith("["):
            raise ValueError(f"{path}: expected a JSON array")
        pos, expect_value, index = 1, True, 0
        while True:
            while pos < len(buf) and buf[pos] in _WS:
                pos += 1
            if pos == len(buf):
                if eof:
                    raise ValueError(f"{path}: the JSON array is not closed")
                buf, eof = _fill(fh, buf[pos:], bar)
                pos = 0
                continue
            if buf[pos] == "]":
                return
            if not expect_value:
                if buf[pos] != ",":
                    raise ValueError(f"{path}: expected ',' between array elements")
                pos, expect_value = pos + 1, True
                continue
            try:
                value, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                if eof:
                    # exc's line and column count from the start of the buffer, not of the file
                    raise ValueError(f"{path}[{index}] (from 0) is not valid JSON: {exc.msg}") from exc
                buf, eof = _fill(fh, buf[pos:], bar)  # the element continues in the next chunk
                pos = 0
                continue
            yield value
            pos, expect_value, index = end, False, index + 1


def write_samples(out: str | Path, samples: Iterator[Sample], report: ConvertReport) -> ConvertReport:
    """Validate each sample (:meth:`Sample.validate`) and write them atomically."""

    def valid() -> Iterator[Sample]:
        for s in samples:
            try:
                s.validate()
            except SampleError as exc:
                report.skip(f"invalid sample ({str(exc).split(':')[0]})", f"sample {s.id}")
                continue
            yield s

    report.written = write_jsonl(out, valid())
    return report
