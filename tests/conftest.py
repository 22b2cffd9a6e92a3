"""Shared fixtures: a tiny tokenizer and a tiny random TinyGroundingGPT (built once per session)."""

from __future__ import annotations

import pytest
import torch

from tinygroundinggpt.components.tokenizer import train_tokenizer

CORPUS = [
    "Output the coordinate of the striped red circle left of the green star.",
    "The small blue square is at [0.125, 0.250, 0.500, 0.875].",
    "Is there a yellow triangle in the image? Yes, there is. No, there is not.",
    "Describe the object in region [0.000, 0.100, 0.900, 1.000]. It is a dotted purple ring.",
    "Which object is <object> ? A. the cross B. the star. The answer is A.",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_tokenizer(CORPUS * 20, vocab_size=320)


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    from tinygroundinggpt.model.presets import tiny_random

    torch.manual_seed(0)
    model, processor = tiny_random(tiny_tokenizer)
    return model.eval(), processor
