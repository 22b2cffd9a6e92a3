"""The shipped tiny checkpoint (real weights, no mocks) and a synthetic scene it is asked about."""

from __future__ import annotations

import pytest

from tinygroundinggpt.api import TinyGroundingGPTPipeline
from tinygroundinggpt.demo import SHIPPED
from tinygroundinggpt.world import SceneConfig, generate_scene


@pytest.fixture(scope="session")
def shipped():
    pipe = TinyGroundingGPTPipeline.from_pretrained(SHIPPED, device="cpu")
    return pipe.model, pipe.processor


@pytest.fixture(scope="session")
def scene():
    """A 64x48 scene (padded vertically to a square) and a REC prompt about its first object."""
    image, graph = generate_scene(3, 64, SceneConfig())
    assert image.size == (64, 48)
    target = graph.objects[0]
    return image, f"Output the coordinate of the {target.colour} {target.shape}.", target.box
