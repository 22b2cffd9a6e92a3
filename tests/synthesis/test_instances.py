"""Several objects with one name: the models see distinct labels, training text only the plain name, and
no sample asks where an object is by a name that several objects share."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from fake_openai import FakeOpenAI
from helpers import write_corpus
from PIL import Image

from tinygroundinggpt.synthesis.backends import CachedModels, Detection, OpenAIChatBackend, RetryCounter
from tinygroundinggpt.synthesis.cache import DiskCache
from tinygroundinggpt.synthesis.pipeline import Pipeline, read_manifest
from tinygroundinggpt.synthesis.postprocess import instance_labels, template_samples, text_image_samples
from tinygroundinggpt.synthesis.stages import StageContext, SynthConfig, ground

TWO_RED = [(160, 120, [("red", (10, 10, 60, 60)), ("red", (90, 50, 150, 110)), ("blue", (90, 5, 150, 40))])]
GROUNDING = [
    {"name": "red box", "label": "red box (1)", "box": [10, 10, 60, 60], "score": 0.9},
    {"name": "red box", "label": "red box (2)", "box": [90, 50, 150, 110], "score": 0.9},
    {"name": "blue box", "label": "blue box", "box": [90, 5, 150, 40], "score": 0.9},
]


def test_labels_tell_instances_apart() -> None:
    assert instance_labels(["person", "Person", "dog", "person"]) == ["person (1)", "Person (2)", "dog", "person (3)"]


def test_pipeline_labels_for_the_models_and_plain_names_in_the_data(tmp_path: Path) -> None:
    write_corpus(tmp_path, TWO_RED)
    with FakeOpenAI() as srv:
        counter = RetryCounter()
        chat = OpenAIChatBackend("fake", base_url=srv.url, timeout=5, backoff=0.01, counter=counter)
        models = CachedModels(DiskCache(tmp_path / "cache"), chat, None, counter)
        pipe = Pipeline(tmp_path / "out", models, SynthConfig(), image_root=tmp_path, progress=False)
        rep = pipe.run(read_manifest(tmp_path / "manifest.jsonl"))
        assert "Given a list of instances: [red box (1), red box (2), blue box], please" in srv.requests[0]
    # "(red box (1), next to, red box (2))" parses; every object keeps its own box.
    assert rep["complete"] and rep["failures"] == {} and rep["counts"]["relations"] == 2
    samples = [json.loads(line) for f in (tmp_path / "out").glob("stage*.jsonl") for line in f.read_text().splitlines()]
    texts = [m["content"] for s in samples for m in s["messages"]]
    assert not [t for t in texts if "(1)" in t or "(2)" in t]
    where = [t for t in texts if t.startswith("<image>\nIn this image, where is")]
    assert where == ["<image>\nIn this image, where is blue box located?"]
    conv = next(s for s in samples if s["meta"]["task"] == "conversation")
    assert conv["messages"][-2]["content"] == "What is blue box? Specify the location."  # none for the red boxes
    assert "red box <box:" in next(s for s in samples if s["meta"]["task"] == "description")["messages"][1]["content"]
    options = [s for s in samples if s["id"] == "img0-objects_as_options-0"]
    assert options and options[0]["messages"][1]["content"] == "A. red box"
    assert options[0]["boxes"] == [[10, 10, 60, 60], [90, 50, 150, 110]]


def test_a_shared_plain_name_is_no_reference() -> None:
    qas = [
        {"question": "Is <red box> big?", "answer": "yes"},
        {"question": "Is <red box (2)> above <blue box>?", "answer": "No, <red box (2)> is below."},
    ]
    samples, problems = text_image_samples("img", "object_in_question", qas, GROUNDING, 160, 120)
    assert [p.kind for p in problems] == ["ambiguous_object"]
    assert samples[0]["boxes"] == [[90, 50, 150, 110], [90, 5, 150, 40]]
    assert samples[0]["messages"][1]["content"] == "No, red box is below."
    ids = [s["id"] for s in template_samples("img", GROUNDING)]
    assert "img-tc-2b" in ids and "img-tc-0b" not in ids and "img-tc-1b" not in ids and "img-tc-0a" in ids


class TwoBoxGrounder:
    """Gives a repeated name one box per listing, as GroundingDINO's top-k does."""

    name = "fake-grounder"

    def ground(self, image: Image.Image, names: Sequence[str]) -> list[Detection]:
        seen: dict[str, int] = {}
        out = []
        for n in names:
            k = seen[n] = seen.get(n, 0) + 1
            out.append(Detection(n, (10.0 * k, 10.0 * k, 10.0 * k + 5, 10.0 * k + 5), 0.9 - 0.1 * k))
        return out


def test_the_grounder_gives_each_instance_its_own_box_and_label(tmp_path: Path) -> None:
    models = CachedModels(DiskCache(tmp_path), None, TwoBoxGrounder(), RetryCounter())
    state = {"id": "x", "objects": ["cat", "dog", "cat"]}
    ground(state, Image.new("RGB", (64, 64)), StageContext(models, SynthConfig(box_threshold=0.5)))
    assert [(g["name"], g["label"], g["box"]) for g in state["grounding"]] == [
        ("cat", "cat (1)", [10.0, 10.0, 15.0, 15.0]),
        ("dog", "dog", [10.0, 10.0, 15.0, 15.0]),
        ("cat", "cat (2)", [20.0, 20.0, 25.0, 25.0]),
    ]
    state = {"id": "x", "objects": ["cat", "dog", "cat"]}
    ground(state, Image.new("RGB", (64, 64)), StageContext(models, SynthConfig(box_threshold=0.75)))
    assert [g["label"] for g in state["grounding"]] == ["cat (1)", "dog"]  # cat (2) scored 0.7
