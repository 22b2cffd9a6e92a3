"""The shipped tiny checkpoint (loaded once for the serving tests) and a synthetic scene it can ground."""

from __future__ import annotations

import os
import random

import pytest
from PIL import Image

# No usage reports from the Gradio app the web tests launch (CI has no internet either).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from tinygroundinggpt.api import TinyGroundingGPTPipeline
from tinygroundinggpt.demo import SHIPPED
from tinygroundinggpt.world import generate_scene


@pytest.fixture(scope="package")
def pipe() -> TinyGroundingGPTPipeline:
    return TinyGroundingGPTPipeline.from_pretrained(SHIPPED)


@pytest.fixture(scope="package")
def scene() -> tuple[Image.Image, str]:
    """A landscape 64x48 scene (so pixel boxes differ from model-frame ones) and a REC prompt for it."""
    image, graph = generate_scene(random.Random(3), 64)
    target = graph.objects[0]
    assert image.size == (64, 48)
    return image, f"Output the coordinate of the {target.colour} {target.shape}."
