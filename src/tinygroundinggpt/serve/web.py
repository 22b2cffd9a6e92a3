"""Gradio web demo: upload an image, ask a question, see the answer, its boxes as JSON and the image
with the boxes drawn and numbered (number ``i`` is ``boxes[i]`` in the JSON).

``build_demo(pipeline)`` returns the ``gr.Blocks`` (``tgg web`` launches it); :func:`answer` is the
function behind its button, usable without Gradio.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from tinygroundinggpt.api import TinyGroundingGPTPipeline
from tinygroundinggpt.images import draw_boxes, load_image
from tinygroundinggpt.serve import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_PENDING
from tinygroundinggpt.serve.server import IMAGE_FORMATS, text_problem

if TYPE_CHECKING:
    import gradio as gr

# Referring-expression prompts in the forms the shipped tiny model was trained on (it answers those best).
EXAMPLE_PROMPTS = (
    "Output the coordinate of the red circle.",
    "Where is the blue square? Give its box.",
    "In this image, where is the large green triangle located?",
    "Find the striped yellow star.",
)
WEB_MAX_FILE_SIZE = DEFAULT_MAX_IMAGE_BYTES  # for gr.Blocks.launch(max_file_size=...): uploads as large as the server's
DISPLAY_SIDE = 512  # smaller images are enlarged for display so that boxes and their numbers stay legible


def answer_stream(
    pipeline: TinyGroundingGPTPipeline,
    image: str | Path | Image.Image | None,
    question: str,
    max_new_tokens: int = 64,
) -> Iterator[tuple[Image.Image | None, str, dict[str, Any] | None]]:
    """(None, the answer so far, None) as it is generated, then (the image with the predicted boxes drawn, the
    answer, the prediction as JSON).

    ``image`` is the uploaded file's path as Gradio hands it over (not yet decoded) or an image. It is held to the
    server's limits: ``DEFAULT_MAX_IMAGE_PIXELS`` pixels and the raster formats the server reads. Raises
    ``ValueError`` (:class:`~tinygroundinggpt.images.ImageLoadError` included) for a missing image or question,
    before anything is generated.
    """
    if image is None:
        raise ValueError("upload an image first")
    if not question.strip():
        raise ValueError("type a question")
    problem = text_problem(question)
    if problem:
        raise ValueError(problem)
    img = load_image(image, max_pixels=DEFAULT_MAX_IMAGE_PIXELS, formats=IMAGE_FORMATS, name="the image")
    text = ""
    with closing(pipeline.stream(img, question, max_new_tokens=max_new_tokens)) as pieces:  # a closed page stops it
        for piece in pieces:
            if isinstance(piece, str):
                text += piece
                yield None, text, None
                continue
            scale = max(1.0, DISPLAY_SIDE / max(img.size))
            width = max(2, round(max(img.size) * scale / 256))  # lines stay visible on large photos
            labels = [str(i) for i in range(len(piece.boxes))]
            yield draw_boxes(img, piece.boxes, labels=labels, scale=scale, width=width), piece.text, piece.to_json()


def answer(
    pipeline: TinyGroundingGPTPipeline,
    image: str | Path | Image.Image | None,
    question: str,
    max_new_tokens: int = 64,
) -> tuple[Image.Image, str, dict[str, Any]]:
    """The last of :func:`answer_stream`: (the image with the predicted boxes drawn, the answer text, the prediction
    as JSON)."""
    *_, last = answer_stream(pipeline, image, question, max_new_tokens)
    return last


def random_scene(size: int) -> Image.Image:
    """A fresh synthetic scene, the kind of image the tiny models know, drawn at ``size`` px (the model's input)."""
    from tinygroundinggpt.world import generate_scene

    return generate_scene(random.Random(), size)[0]


def build_demo(pipeline: TinyGroundingGPTPipeline, *, title: str = "TinyGroundingGPT") -> gr.Blocks:
    """The web demo around ``pipeline``. Gradio's queue runs one prediction at a time by default, and holds at most
    ``DEFAULT_MAX_PENDING`` waiting requests (more are told the queue is full). Launch it with
    ``max_file_size=WEB_MAX_FILE_SIZE`` (``tgg web`` does) to cap uploads as the server caps image files."""
    import gradio as gr

    def run(image: str | None, question: str) -> Iterator[tuple[Image.Image | None, str, dict[str, Any] | None]]:
        try:
            yield from answer_stream(pipeline, image, question)  # the text as it is written, then the boxes
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc

    with gr.Blocks(title=title) as demo:
        gr.Markdown(
            f"# {title}\nUpload an image and ask about it. Boxes the model writes are drawn on the image, "
            "numbered as in the JSON (pixels of your image, `[x1, y1, x2, y2]`)."
        )
        with gr.Row():
            with gr.Column():
                # The upload's path, undecoded (image_mode None): answer() decodes it within the limits. PNG, not
                # Gradio's default WebP, for a pasted image or a synthetic scene: the model must see their pixels.
                image = gr.Image(
                    type="filepath", image_mode=None, format="png", label="Image", sources=["upload", "clipboard"]
                )
                scene = gr.Button("New synthetic scene")
                question = gr.Textbox(label="Question", value=EXAMPLE_PROMPTS[0])
                gr.Examples([[p] for p in EXAMPLE_PROMPTS], inputs=[question], label="Example questions")
                ask = gr.Button("Ask", variant="primary")
            with gr.Column():
                drawn = gr.Image(type="pil", format="png", label="Answer boxes", interactive=False)
                text = gr.Textbox(label="Answer", interactive=False)
                boxes = gr.JSON(label="Boxes")
        scene.click(lambda: random_scene(pipeline.model.config.image_size), outputs=image, api_name="scene")
        gr.on([ask.click, question.submit], run, inputs=[image, question], outputs=[drawn, text, boxes], api_name="ask")
    # as the server caps requests waiting: each holds an upload; Gradio's queue is unbounded otherwise
    demo.queue(max_size=DEFAULT_MAX_PENDING)
    return demo
