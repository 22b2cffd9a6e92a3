import gradio as gr
import numpy as np
import pytest
from PIL import Image

from tinygroundinggpt import boxes as bx
from tinygroundinggpt.serve.web import DISPLAY_SIDE, SCENE_SIZE, answer, build_demo, random_scene


def test_demo_builds(pipe):
    assert isinstance(build_demo(pipe), gr.Blocks)


def test_answer_draws_the_predicted_boxes(pipe, scene):
    image, prompt = scene
    expected = pipe.predict(image, prompt)
    drawn, text, as_json = answer(pipe, image, prompt)
    assert text == expected.text and as_json == expected.to_json()
    scale = DISPLAY_SIDE / 64  # the 64x48 scene is enlarged for display
    assert drawn.size == (DISPLAY_SIDE, round(48 * scale))
    x1, y1, x2, y2 = bx.to_inclusive_corners(bx.norm_to_pixel(expected.boxes_norm[0], *drawn.size))
    pixels = np.asarray(drawn)
    assert tuple(pixels[y1, (x1 + x2) // 2]) == (230, 0, 0) and tuple(pixels[y2, x2]) == (230, 0, 0)
    before = np.asarray(image.resize(drawn.size, Image.NEAREST))
    centre = ((y1 + y2) // 2, (x1 + x2) // 2)
    assert (pixels[centre] == before[centre]).all()


def test_answer_needs_an_image_and_a_question(pipe, scene):
    with pytest.raises(ValueError, match="upload an image"):
        answer(pipe, None, "Where is it?")
    with pytest.raises(ValueError, match="type a question"):
        answer(pipe, scene[0], "  ")
    with pytest.raises(ValueError, match="placeholder '<box:0>'"):  # would index boxes the demo never has
        answer(pipe, scene[0], "What is at <box:0>?")


def test_random_scene_is_a_world_scene():
    assert max(random_scene().size) == SCENE_SIZE
