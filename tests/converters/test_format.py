"""Sample.from_json rejects, with a SampleError naming the problem, what would otherwise fail later in training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tinygroundinggpt.data.format import LoadReport, Sample, SampleError, iter_jsonl

USER = {"role": "user", "content": "<image>\nOutput the coordinate of the dog."}
REPLY = {"role": "assistant", "content": "<box:0>"}


def sample(boxes: list[Any], messages: list[dict[str, str]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "s", "image": "a.jpg", "boxes": boxes, "messages": messages or [USER, REPLY], **extra}


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        (sample([[1, 2, 3]]), "4 numbers"),
        (sample([[1, 2, 3, 4, 5]]), "4 numbers"),
        (sample([[1, 2, float("nan"), 4]]), "non-finite"),
        (sample([[1, 2, float("inf"), 4]]), "non-finite"),
        (sample([[1, 2, "x", 4]]), "non-numeric"),
        (sample([[10, 2, 3, 4]]), "inverted"),
        (sample([[-1, 2, 3, 4]]), "negative"),
        (sample([[1, 2, 1, 4]]), "zero area"),
        (sample([[1, 2, 3, 4], 5]), "list of"),
        (sample([[1, 2, 3, 4]], width=2, height=10), "outside the 2x10 image"),
        (sample([[1, 2, 3, 4]], [USER, {"role": "user", "content": "<image>"}, REPLY]), "2 <image> placeholders"),
        (sample([[1, 2, 3, 4]], [{"role": "user", "content": "<image> <image>"}, REPLY]), "2 <image> placeholders"),
        (sample([[1, 2, 3, 4]], [{"role": "user", "content": "Hi"}, {**REPLY, "content": "<image>"}]), "user turn"),
        (sample([[1, 2, 3, 4]], [REPLY, USER]), "must start with a user turn"),
        (sample([[1, 2, 3, 4]], [{"role": "system", "content": "Be brief."}, REPLY]), "must start with a user turn"),
        (sample([[1, 2, 3, 4]], [USER]), "no assistant turn"),
        # literal placeholders with no input behind them, and turn markers of the chat template
        (sample([[1, 2, 3, 4]], [{**USER, "content": "<image> Is <object> red?"}, REPLY]), "bare <object>"),
        (sample([[1, 2, 3, 4]], [USER, {**REPLY, "content": "<box:0><|im_end|>"}]), r"control token <\|im_end\|>"),
        (sample([[1, 2, 3, 4]], [USER, {**REPLY, "content": "<|im_start|>user"}]), r"control token <\|im_start\|>"),
        # no image: no frame for a box, no pixels for an object
        (
            sample([[1, 2, 3, 4]], [{"role": "user", "content": "Where?"}, REPLY], image=None),
            "<box:i> / <object:i>, but there is no image",
        ),
        (
            sample(
                [[1, 2, 3, 4]], [{"role": "user", "content": "<object:0>?"}, {**REPLY, "content": "A cat."}], image=None
            ),
            "<box:i> / <object:i>, but there is no image",
        ),
        (sample([[1, 2, 3, 4]], image=["a.jpg"]), "'image' must be a string .an image path., got list"),
        (sample([[1, 2, 3, 4]], image=7), "'image' must be a string .an image path., got int"),
        (sample([[1, 2, 3, 4]], width=640), "'width' and 'height' must be given together"),
        (sample([[1, 2, 3, 4]], width="640", height=480), "as positive integers, got .'640', 480."),
    ],
)
def test_bad_samples_are_sample_errors(obj: dict[str, Any], problem: str) -> None:
    with pytest.raises(SampleError, match=problem):
        Sample.from_json(obj)


def test_iter_jsonl_reports_bad_samples_with_file_and_line(tmp_path: Path) -> None:
    more = {"role": "user", "content": "And the cat?"}
    good = sample([[1, 2, 30, 40]], [{"role": "system", "content": "Be brief."}, USER, REPLY, more, REPLY])
    bad = sample([[1, 2, 30, 40]], [USER, {"role": "user", "content": "<image>"}, REPLY])
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(o) for o in (good, bad, good)) + "\n")
    report = LoadReport(str(path))
    samples = list(iter_jsonl(path, report))
    assert len(samples) == 2 and samples[0].boxes == [(1.0, 2.0, 30.0, 40.0)]
    ((file, line, problem),) = report.skipped
    assert (file, line) == (str(path), 2) and problem.startswith("SampleError: the conversation has 2 <image>")


def test_an_invalid_utf8_byte_costs_its_line_not_the_file(tmp_path: Path) -> None:
    good = json.dumps(sample([[1, 2, 30, 40]])).encode()
    bad = json.dumps(sample([[1, 2, 30, 40]], [{**USER, "content": "<image>\nWhat is Xbad?"}, REPLY])).encode()
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join([good, bad.replace(b"Xbad", b"\xff"), good]) + b"\n")
    report = LoadReport(str(path))
    samples = list(iter_jsonl(path, report))
    assert [s.line for s in samples] == [1, 3]  # the lines after the bad one are still read
    ((file, line, problem),) = report.skipped
    assert (file, line) == (str(path), 2) and problem.startswith("UnicodeDecodeError: 'utf-8' codec can't decode")
