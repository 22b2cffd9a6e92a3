"""What every converter shares: streaming a JSON array, progress by bytes, and a count of what was skipped."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from tinygroundinggpt.data.format import Sample, SampleError, write_jsonl

_CHUNK = 1 << 20
_WS = " \t\r\n"


@dataclass
class ConvertReport:
    """Samples written and records skipped, by reason (a converter never stops at one bad record)."""

    written: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        text = f"{self.written} samples written"
        if self.skipped:
            text += "; skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
        return text


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
        pos, expect_value = 1, True
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
            except json.JSONDecodeError:
                if eof:
                    raise
                buf, eof = _fill(fh, buf[pos:], bar)  # the element continues in the next chunk
                pos = 0
                continue
            yield value
            pos, expect_value = end, False


def write_samples(out: str | Path, samples: Iterator[Sample], report: ConvertReport) -> ConvertReport:
    """Validate each sample (references, boxes against width/height) and write them atomically."""

    def valid() -> Iterator[Sample]:
        for s in samples:
            try:
                s.check_references()
                if s.width is not None and s.height is not None:
                    s.check_boxes(s.width, s.height)
            except SampleError as exc:
                report.skipped[f"invalid sample ({str(exc).split(':')[0]})"] += 1
                continue
            yield s

    report.written = write_jsonl(out, valid())
    return report
