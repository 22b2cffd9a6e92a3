"""Last-layer attention from object representations to the image patches (paper §5.2, Fig. 5, A.8).

The paper's procedure: "(1) select the attention scores between image patches and object representations
(i.e., texts, coordinates, and images); (2) sum the attention scores across the dimensions of both the
attention heads and object representations; (3) map the normalized attention scores onto the input image
patches." Here the object representations are answer tokens (all of them, the ones that write a box —
any character of ``[x1, y1, x2, y2]`` — or the rest) or, with ``span="object"``, the tokens of the object
images the prompt holds (``<object:i>`` with its pixel box). A token's attention row is the one where it
is the query, i.e. what the model reads while that token is its input; so object tokens have a map only
where the template puts the image before them (``image_position="first"``, the paper's layout).

The answer is scored teacher-forced: prompt and answer are rendered with the chat template (the answer as
the assistant turn) and run through the model once. A generated answer is re-tokenised canonically, which
for this tokenizer family gives the generated ids back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from PIL import Image

from tinygroundinggpt import boxes as bx
from tinygroundinggpt.api import ImageLike, TinyGroundingGPTPipeline, answer_boxes
from tinygroundinggpt.images import PREDICTED_BOX_COLOUR, RGB, draw_boxes, load_image
from tinygroundinggpt.interpret.heatmap import minmax, overlay_grid
from tinygroundinggpt.model import TinyGroundingGPTForConditionalGeneration, TinyGroundingGPTProcessor
from tinygroundinggpt.model.processing_tinygroundinggpt import IGNORE_INDEX, Encoded

SPANS = ("answer", "boxes", "text", "object")


@dataclass
class AttentionMap:
    """Attention from answer or object-image tokens to the global image's patches, one cell per patch of the
    padded square."""

    grid: torch.Tensor  # [grid, grid], normalised to [0, 1] (min → 0, max → 1)
    raw: torch.Tensor  # [grid, grid], attention summed over heads and the span's tokens
    answer: str
    span: str  # "answer", "boxes", "text" or "object"
    tokens: list[str]  # the span's tokens, decoded one by one
    token_positions: list[int]  # their positions in the sequence (the attention rows)
    image_positions: list[int]  # the image tokens' positions (the attention columns), row-major patches
    layer: int

    def to_image(
        self,
        image: ImageLike,
        *,
        predicted: bool = True,
        extra_boxes: Sequence[tuple[Sequence[float], RGB]] = (),
        scale: float = 1.0,
        alpha: float = 0.5,
    ) -> Image.Image:
        """The heat map over the original image (its size × ``scale``), with ``extra_boxes`` (pixel box,
        colour) and, when ``predicted``, the answer's boxes in red."""
        img = load_image(image)
        drawn = list(extra_boxes)
        if predicted:
            drawn += [(b, PREDICTED_BOX_COLOUR) for b in answer_boxes(self.answer, img.width, img.height)[0]]
        return draw_boxes(
            overlay_grid(img, self.grid, alpha=alpha),
            [b for b, _ in drawn],
            colour=[c for _, c in drawn],
            scale=scale,
        )


@contextmanager
def eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model`` with eager attention: SDPA and flash kernels never form the attention matrix, so
    transformers returns no attentions from them. The previous implementation is restored afterwards."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def _span_rows(reply_offsets: list[tuple[int, int]], answer: str, span: str) -> list[int]:
    """Indices into the answer's labelled tokens that belong to ``span`` (the end-of-turn token never does)."""
    boxes = bx.box_spans(answer)
    rows = []
    for k, (a, b) in enumerate(reply_offsets):
        if a >= len(answer):
            continue
        in_box = any(a < e and b > s for s, e in boxes)
        if span == "answer" or (span == "boxes") == in_box:
            rows.append(k)
    return rows


def attention_map(
    model: TinyGroundingGPTForConditionalGeneration,
    processor: TinyGroundingGPTProcessor,
    image: ImageLike,
    prompt: str,
    answer: str | None = None,
    *,
    layer: int = -1,
    span: str = "answer",
    boxes: Sequence[Sequence[float]] = (),
    max_new_tokens: int = 64,
) -> AttentionMap:
    """Where the ``span`` tokens attend in the image, at LLM layer ``layer`` (see the module docstring).

    Without ``answer`` the model first answers greedily. ``span``: ``"answer"`` (every answer token),
    ``"boxes"`` (the tokens of its ``[x1, y1, x2, y2]`` boxes), ``"text"`` (the others) or ``"object"``
    (the prompt's object-image tokens). ``boxes``: the pixel boxes the prompt's ``<box:i>`` / ``<object:i>`` name.
    """
    return attention_maps(
        model, processor, image, prompt, answer, layers=[layer], span=span, boxes=boxes, max_new_tokens=max_new_tokens
    )[0]


def _object_rows(model: TinyGroundingGPTForConditionalGeneration, enc: Encoded, prompt: str) -> list[int]:
    """Positions of the prompt's object-image tokens, which must follow the image to have attended to it."""
    ids = torch.tensor(enc.input_ids)
    rows = torch.nonzero(ids == model.config.object_token_id).flatten().tolist()
    if not rows:
        raise ValueError(f"the prompt has no <object:i> (with its box) to take: {prompt!r}")
    if rows[0] < int(torch.nonzero(ids == model.config.image_token_id).min()):
        raise ValueError(
            "the object tokens come before the image (the processor's image_position puts it last): under causal "
            "attention they see none of it; use a model whose processor puts the image first"
        )
    return rows


@torch.no_grad()
def attention_maps(
    model: TinyGroundingGPTForConditionalGeneration,
    processor: TinyGroundingGPTProcessor,
    image: ImageLike,
    prompt: str,
    answer: str | None = None,
    *,
    layers: Sequence[int] | None = None,
    span: str = "answer",
    boxes: Sequence[Sequence[float]] = (),
    max_new_tokens: int = 64,
) -> list[AttentionMap]:
    """:func:`attention_map` at each of ``layers`` (default: every layer, first to last) from one forward pass."""
    if span not in SPANS:
        raise ValueError(f"span must be one of {SPANS}, got {span!r}")
    n_layers = model.config.text_config.num_hidden_layers
    wrong = [layer for layer in layers or () if not -n_layers <= layer < n_layers]
    if wrong:  # refused before the generation and the forward pass are paid for
        raise ValueError(f"layer {wrong[0]} does not exist: the LLM has {n_layers} layers (0 to {n_layers - 1}, or -1)")
    img = load_image(image)
    device = next(model.parameters()).device
    if span == "object":  # refuse before paying for a generation
        _object_rows(model, processor.encode(processor.user_turn(prompt, with_image=True), img, boxes), prompt)
    if answer is None:
        pipe = TinyGroundingGPTPipeline(model, processor, device=device)
        answer = pipe.generate_batch([img], [prompt], max_new_tokens=max_new_tokens, boxes=[boxes])[0]
    messages = [*processor.user_turn(prompt, with_image=True), {"role": "assistant", "content": answer}]
    enc = processor.encode(messages, img, boxes)
    ids = torch.tensor(enc.input_ids)
    cols = torch.nonzero(ids == model.config.image_token_id).flatten().tolist()  # where embed_inputs puts the image
    grid = model.config.grid_size
    if len(cols) != grid * grid:
        raise ValueError(f"{len(cols)} image tokens in the sequence, expected {grid}x{grid}")
    if span == "object":
        rows = _object_rows(model, enc, prompt)
    else:
        labelled = [i for i, lab in enumerate(enc.labels) if lab != IGNORE_INDEX]
        rows = [labelled[k] for k in _span_rows(enc.reply_offsets, answer, span)]
        if not rows:
            raise ValueError(f"the answer has no {span} tokens: {answer!r}")
    batch = processor.collate([enc])
    batch.pop("labels")
    with eager_attention(model.language_model):
        out = model(**{k: v.to(device) for k, v in batch.items()}, output_attentions=True)
    n_layers = len(out.attentions)
    tokens = [processor.tokenizer.decode([enc.input_ids[r]]) for r in rows]
    maps = []
    for layer in range(n_layers) if layers is None else layers:
        attn = out.attentions[layer][0].float()  # [heads, seq, seq], rows are queries
        raw = attn[:, rows][:, :, cols].sum(dim=(0, 1)).reshape(grid, grid).cpu()
        maps.append(AttentionMap(minmax(raw), raw, answer, span, tokens, rows, cols, layer % n_layers))
    return maps
