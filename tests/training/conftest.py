"""A small world and a tiny random checkpoint shared by the training tests."""

from __future__ import annotations

import pytest

from tinygroundinggpt.components.tokenizer import train_tokenizer
from tinygroundinggpt.data.format import iter_jsonl
from tinygroundinggpt.model.presets import tiny_random
from tinygroundinggpt.world import STAGE_FILES, write_world


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    write_world(root, n_train=24, n_eval=4, seed=3, image_size=64, progress=False)
    # the tiny recipes' stage 2 also reads a one-object world from <root>/easy
    write_world(root / "easy", n_train=8, n_eval=0, seed=4, image_size=64, min_objects=1, max_objects=1, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_ckpt(world, tmp_path_factory):
    texts = [m["content"] for name in STAGE_FILES for s in iter_jsonl(world / name) for m in s.messages]
    tok = train_tokenizer(texts + ["[0.000, 0.125, 0.500, 1.000]"] * 20, vocab_size=400)
    model, proc = tiny_random(tok, seed=0)
    path = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path
