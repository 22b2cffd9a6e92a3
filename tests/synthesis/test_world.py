"""The built-in synthetic world through the pipeline (annotation recogniser, scripted endpoint):
stage-2 and stage-3 files named as the training recipes read them, whose samples load, check out
against their images and encode with the model's processor."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

from tinygroundinggpt.data.format import LoadReport, iter_jsonl
from tinygroundinggpt.images import load_image
from tinygroundinggpt.synthesis.backends import CachedModels, OpenAIChatBackend, RetryCounter
from tinygroundinggpt.synthesis.cache import DiskCache
from tinygroundinggpt.synthesis.pipeline import Pipeline, read_manifest
from tinygroundinggpt.synthesis.postprocess import OUTPUT_FILES
from tinygroundinggpt.world import caption, generate_scene
from tinygroundinggpt.world.language import descriptor_text


def write_world_manifest(root: Path, n: int) -> Path:
    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(n):
        rng = random.Random(i)
        image, scene = generate_scene(rng, image_size=96)
        image.save(root / "images" / f"{i}.png")
        objects = [{"name": descriptor_text(o.attributes(), o.shape), "box": list(o.box)} for o in scene.objects]
        lines.append({"id": f"w{i}", "image": f"images/{i}.png", "objects": objects, "captions": [caption(scene, rng)]})
    (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root / "manifest.jsonl"


def test_world_scenes_give_stage2_and_stage3_training_data(tmp_path: Path, tiny_model) -> None:
    _, processor = tiny_model
    manifest = write_world_manifest(tmp_path, 4)
    counter = RetryCounter()
    with FakeOpenAI() as srv:
        chat = OpenAIChatBackend("fake", base_url=srv.url, timeout=5, backoff=0.01, counter=counter)
        models = CachedModels(DiskCache(tmp_path / "cache"), chat, None, counter)
        rep = Pipeline(tmp_path / "out", models, image_root=tmp_path, progress=False).run(read_manifest(manifest))
    assert rep["complete"] and rep["failures"] == {}
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
