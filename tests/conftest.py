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


@pytest.fixture(scope="session")
def tiny_components(tiny_model, tmp_path_factory):
    """A CLIPModel, a Dinov2Model and a Qwen2 LM + tokenizer saved in their published formats."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig

    model, proc = tiny_model
    root = tmp_path_factory.mktemp("components")
    clip = CLIPModel(
        CLIPConfig(
            text_config=CLIPTextConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64
            ),
            vision_config=model.config.clip_config.to_dict(),
            projection_dim=16,
        )
    )
    clip.vision_model.load_state_dict(model.vision_tower.clip.state_dict(), strict=False)
    clip.save_pretrained(root / "clip")
    model.vision_tower.dino.save_pretrained(root / "dino")
    model.language_model.save_pretrained(root / "llm")
    proc.tokenizer.save_pretrained(root / "llm")
    return {"clip": root / "clip", "dino": root / "dino", "llm": root / "llm"}
