import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tinygroundinggpt import boxes as bx
from tinygroundinggpt.images import ImageLoadError, ImageTooLargeError
from tinygroundinggpt.serve import DEFAULT_MAX_PENDING
from tinygroundinggpt.serve.web import DISPLAY_SIDE, answer, answer_stream, build_demo, random_scene


def test_the_running_demo_answers_over_http_like_the_pipeline(pipe, scene, tmp_path):
    """The Gradio app itself, launched and driven through gradio_client as a browser's requests would be."""
    image, prompt = scene
    image.save(tmp_path / "scene.png")
    demo = build_demo(pipe)
    assert demo._queue.max_size == DEFAULT_MAX_PENDING  # waiting requests capped as the server caps them
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = Client(url, verbose=False)
        drawn, text, as_json = client.predict(handle_file(str(tmp_path / "scene.png")), prompt, api_name="/ask")
        expected = pipe.predict(image, prompt)
        assert text == expected.text and as_json == expected.to_json()
        assert Image.open(drawn).size == (DISPLAY_SIDE, DISPLAY_SIDE * 48 // 64)
        assert max(Image.open(client.predict(api_name="/scene")).size) == pipe.model.config.image_size
        with pytest.raises(AppError, match="type a question"):  # answer()'s error reaches the page
            client.predict(handle_file(str(tmp_path / "scene.png")), " ", api_name="/ask")
    finally:
        demo.close()


def test_answer_stream_shows_the_text_as_written_then_the_boxes(pipe, scene):
    image, prompt = scene
    *partial, (drawn, text, as_json) = answer_stream(pipe, image, prompt)
    assert len(partial) > 1 and all(img is None and js is None for img, _, js in partial)
    assert [t for _, t, _ in partial] == sorted((t for _, t, _ in partial), key=len)  # each extends the one before
    assert partial[-1][1].strip() == text
    assert answer(pipe, image, prompt) == (drawn, text, as_json)  # the whole answer: the stream's last


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
    with pytest.raises(ValueError, match="not valid Unicode"):  # a lone surrogate: no tokenizer takes it
        answer(pipe, scene[0], "Where is \ud800 it?")


def test_answer_holds_an_upload_to_the_servers_limits(pipe, scene, tmp_path):
    image, prompt = scene
    image.save(tmp_path / "scene.png")
    assert answer(pipe, str(tmp_path / "scene.png"), prompt)[1] == pipe.predict(image, prompt).text  # Gradio's path
    Image.new("RGB", (6000, 5000)).save(tmp_path / "big.png")  # 30 Mpx: over the server's 25, a small file
    # the messages name "the image", not the server's temporary path of the upload
    with pytest.raises(ImageTooLargeError, match="^the image: image has 6000x5000"):
        answer(pipe, str(tmp_path / "big.png"), prompt)
    (tmp_path / "scene.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    with pytest.raises(ImageLoadError, match="^the image: cannot decode"):  # a decoder the server does not allow
        answer(pipe, str(tmp_path / "scene.eps"), prompt)


def test_random_scene_is_a_world_scene_at_the_size_asked():
    assert max(random_scene(64).size) == 64 and max(random_scene(128).size) == 128
