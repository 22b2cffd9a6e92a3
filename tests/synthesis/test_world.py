"""The built-in synthetic world through the CLI (``tgg synth-world`` then ``tgg synth`` with the
annotation recogniser and a scripted endpoint): stage-2 and stage-3 files named as the training
recipes read them, whose samples load, check out against their images and encode with the model's
processor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

from tinygroundinggpt.cli import main
from tinygroundinggpt.data.format import LoadReport, iter_jsonl
from tinygroundinggpt.images import load_image
from tinygroundinggpt.synthesis.postprocess import OUTPUT_FILES


def test_world_scenes_give_stage2_and_stage3_training_data(tmp_path: Path, tiny_model) -> None:
    _, processor = tiny_model
    assert main(["synth-world", "--out", str(tmp_path / "world"), "-n", "4"]) == 0
    manifest = tmp_path / "world" / "manifest.jsonl"
    with FakeOpenAI() as srv:
        args = ["synth", str(manifest), "--out", str(tmp_path / "out"), "--model", "fake", "--base-url", srv.url]
        assert main([*args, "--no-progress"]) == 0
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["complete"] and rep["images"] == 4 and rep["failures"] == {}
    for stem, n in rep["samples"].items():
        report = LoadReport(stem)
        samples = list(iter_jsonl(tmp_path / "out" / f"{stem}.jsonl", report))
        assert not report.skipped and len(samples) == n > 0
        for s in samples:
            image = load_image(tmp_path / "out" / s.image)
            assert image.size == (s.width, s.height)
            s.check_boxes(*image.size)
            # What the training data loader does with every sample: crop, render boxes, tokenise.
            processor.encode_sample(s, str(tmp_path / "out"))


def test_outputs_are_the_files_the_training_recipes_read() -> None:
    recipe = pytest.importorskip("tinygroundinggpt.training.recipe")
    wanted = {d.path for stage in ("stage2", "stage3") for d in recipe.load_recipe(stage).data}
    assert {f"{stem}.jsonl" for stem in OUTPUT_FILES.values()} <= wanted
