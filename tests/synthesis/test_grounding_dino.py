"""A tiny GroundingDINO (random weights, built from its transformers config) in the grounding stage."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from helpers import write_corpus

from tinygroundinggpt.boxes import iou, validate_pixel_box
from tinygroundinggpt.data.format import LoadReport, iter_jsonl
from tinygroundinggpt.synthesis.backends import CachedModels, GroundingDinoGrounder, OpenAIChatBackend, RetryCounter
from tinygroundinggpt.synthesis.cache import DiskCache
from tinygroundinggpt.synthesis.pipeline import Pipeline, read_manifest
from tinygroundinggpt.synthesis.stages import SynthConfig

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "red", "green", "blue", "box"]


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    path = tmp_path_factory.mktemp("tiny-grounding-dino")
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"))  # the text backbone is BERT
    backbone = SwinConfig(
        image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=2,
        out_features=["stage2", "stage3", "stage4"],
    )  # fmt: skip
    text = BertConfig(
        vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64,
    )  # fmt: skip
    # d_model must divide by 32 (GroupNorm) and decoder_layers >= 2 (its box heads are tied across layers).
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, num_queries=10, encoder_layers=1, decoder_layers=2,
        encoder_ffn_dim=16, decoder_ffn_dim=16, encoder_attention_heads=2, decoder_attention_heads=2, d_model=32,
        num_feature_levels=3, encoder_n_points=1, decoder_n_points=1, max_text_len=32,
    )  # fmt: skip
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 64})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def test_grounder_gives_one_in_image_box_per_name(tiny_dino: Path) -> None:
    from PIL import Image

    grounder = GroundingDinoGrounder(str(tiny_dino))
    image = Image.new("RGB", (90, 60), (200, 30, 30))
    dets = grounder.ground(image, ["red box", "blue box"])
    assert [d.name for d in dets] == ["red box", "blue box"]
    for d in dets:
        validate_pixel_box(d.box, 90, 60)
        assert 0.0 <= d.score <= 1.0
    assert grounder.ground(image, ["red box", "blue box"]) == dets  # deterministic


def test_mllm_recognition_then_grounding_dino_in_the_pipeline(tmp_path: Path, tiny_dino: Path) -> None:
    write_corpus(tmp_path)
    with FakeOpenAI() as srv:  # recognises "[red box, blue box]" in every image

        def run(threshold: float, out: str) -> dict:
            counter = RetryCounter()
            chat = OpenAIChatBackend("fake", base_url=srv.url, timeout=5, backoff=0.01, counter=counter)
            models = CachedModels(DiskCache(tmp_path / "cache"), chat, GroundingDinoGrounder(str(tiny_dino)), counter)
            config = SynthConfig(recogniser="mllm", box_threshold=threshold, judge=False)
            pipe = Pipeline(tmp_path / out, models, config, image_root=tmp_path, progress=False)
            return pipe.run(read_manifest(tmp_path / "manifest.jsonl"))

        srv.faults = {"You are an expert in image recognition": ["I see a red thing."]}  # one malformed reply
        rep = run(0.0, "all")
        assert rep["complete"] and rep["failures"] == {"recognise/not_list": 1}
        assert rep["counts"]["objects"] == 4 and rep["counts"]["grounded"] == 4
        assert rep["calls"] == 3 + 2 + 2 + 8  # recognition, grounding, relations, generation
        report = LoadReport("stage3_desc")
        samples = list(iter_jsonl(tmp_path / "all" / "stage3_desc.jsonl", report))
        assert not report.skipped and len(samples) == rep["samples"]["stage3_desc"] > 0
        made = sum(v for k, v in rep["counts"].items() if k.startswith("postprocessed/"))
        assert made - sum(rep["removed"].values()) == sum(rep["samples"].values())
        # Nothing passes an impossible threshold; the grounder's outputs come from the cache.
        rep = run(1.01, "none")
        assert rep["counts"]["grounded"] == 0 and rep["counts"]["ground_dropped_low_confidence"] == 4
        assert rep["calls"] == 0 and not any(rep["samples"].values())


def test_names_past_the_text_limit_are_grounded_in_chunks(tiny_dino: Path) -> None:
    from PIL import Image

    grounder = GroundingDinoGrounder(str(tiny_dino))
    image = Image.new("RGB", (90, 60), (200, 30, 30))
    colours = ("red", "green", "blue")
    names = [f"{a} {b} box" for a in colours for b in colours] + ["box", "red", "green", "blue"]
    too_long = "red " * 40 + "box"  # 41 tokens: no chunk can hold it
    dets = grounder.ground(image, [*names, too_long])  # 13 names, 46 tokens: past max_text_len = 32
    assert [d.name for d in dets] == names
    for d in dets:
        validate_pixel_box(d.box, 90, 60)
    # Each "a b box." is 4 tokens: 7 names fill the first chunk ([CLS] + 28 + [SEP] <= 32), which is
    # therefore the very forward pass that grounds those 7 alone.
    assert grounder.ground(image, names[:7]) == dets[:7]


def test_a_repeated_name_gets_distinct_boxes(tiny_dino: Path) -> None:
    from PIL import Image

    grounder = GroundingDinoGrounder(str(tiny_dino))
    image = Image.new("RGB", (90, 60), (200, 30, 30))
    once = grounder.ground(image, ["red box", "blue box"])
    twice = grounder.ground(image, ["red box", "blue box", "red box"])
    assert [d.name for d in twice] == ["red box", "blue box", "red box"]
    assert twice[:2] == once  # the same text, so the same best boxes; the second red box is the next best
    assert iou(twice[0].box, twice[2].box) <= 0.5 and twice[2].score <= twice[0].score
