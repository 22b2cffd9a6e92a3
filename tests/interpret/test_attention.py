import numpy as np
import pytest
import torch
from PIL import Image

from tinygroundinggpt import boxes as bx
from tinygroundinggpt.demo import SHIPPED
from tinygroundinggpt.interpret import AttentionMap, attention_map, attention_maps, overlay_grid
from tinygroundinggpt.interpret.attention import eager_attention
from tinygroundinggpt.model import TinyGroundingGPTProcessor


def _reference(model, proc, image, prompt, answer, span, layer):
    """The same quantity straight from ``model(..., output_attentions=True)`` on a sequence built by hand."""
    tok = proc.tokenizer
    assert proc.image_position == "last"  # the shipped processor puts the image after the question
    chat = [{"role": "user", "content": f"{prompt}\n<image>"}, {"role": "assistant", "content": answer}]
    ids = tok(tok.apply_chat_template(chat, tokenize=False), add_special_tokens=False)["input_ids"]
    image_id = tok.convert_tokens_to_ids("<image>")
    at = ids.index(image_id)
    ids = ids[:at] + [image_id] * model.config.image_seq_length + ids[at + 1 :]
    answer_ids = tok(answer, add_special_tokens=False)["input_ids"]
    start = max(i for i in range(len(ids)) if ids[i : i + len(answer_ids)] == answer_ids)
    pieces = [tok.decode([t]) for t in answer_ids]
    in_box, depth = [], 0
    for p in pieces:  # a token that writes a bracket ("[", " [", "]") is part of the box
        depth += "[" in p
        in_box.append(depth > 0)
        depth -= "]" in p
    rows = [start + k for k in range(len(answer_ids)) if span == "answer" or in_box[k] == (span == "boxes")]
    cols = [i for i, t in enumerate(ids) if t == image_id]
    before = model.language_model.config._attn_implementation
    model.language_model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), pixel_values=proc.image_to_tensor(image)[None],
                        output_attentions=True)  # fmt: skip
    finally:
        model.language_model.set_attn_implementation(before)
    attn = out.attentions[layer][0]
    g = model.config.grid_size
    return attn[:, rows][:, :, cols].sum(dim=(0, 1)).reshape(g, g), rows, cols


def test_grid_sums_and_normalisation(shipped, scene):
    model, proc = shipped
    image, prompt, _ = scene
    generated = attention_map(model, proc, image, prompt)  # answers greedily first: a box
    assert generated.answer == bx.format_box(bx.parse_first_box(generated.answer))
    assert "".join(generated.tokens) == generated.answer
    answer = f"It is at {generated.answer}."
    whole = attention_map(model, proc, image, prompt, answer)
    boxes = attention_map(model, proc, image, prompt, answer, span="boxes")
    text = attention_map(model, proc, image, prompt, answer, span="text")
    assert whole.raw.shape == whole.grid.shape == (8, 8)
    heads = model.config.text_config.num_attention_heads
    # every attention row sums to 1 over the whole sequence: the image gets a share of heads × rows
    assert 0 < whole.raw.sum() < heads * len(whole.token_positions) and whole.raw.min() >= 0
    assert whole.grid.min() == 0 and whole.grid.max() == 1
    torch.testing.assert_close(whole.grid, (whole.raw - whole.raw.min()) / (whole.raw.max() - whole.raw.min()))
    # the box and text spans split the answer's tokens, so their sums add up to the whole answer's
    assert sorted(boxes.token_positions + text.token_positions) == whole.token_positions
    torch.testing.assert_close(boxes.raw + text.raw, whole.raw)
    # " [" is one token: a token that writes any character of a box belongs to the box span
    assert "".join(boxes.tokens) == f" {generated.answer}" and "".join(text.tokens) == "It is at."
    assert model.language_model.config._attn_implementation == "sdpa"  # eager only for the attention pass


@pytest.mark.parametrize("span", ["answer", "boxes", "text"])
@pytest.mark.parametrize("layer", [-1, 0])
def test_equals_attention_computed_directly(shipped, scene, span, layer):
    model, proc = shipped
    image, prompt, _ = scene
    answer = "It is at [0.609, 0.391, 0.750, 0.531]."
    amap = attention_map(model, proc, image, prompt, answer, span=span, layer=layer)
    ref, rows, cols = _reference(model, proc, image, prompt, answer, span, layer)
    assert amap.token_positions == rows and amap.image_positions == cols
    torch.testing.assert_close(amap.raw, ref)
    every = attention_maps(model, proc, image, prompt, answer, span=span)  # all layers from one forward pass
    assert [m.layer for m in every] == list(range(model.config.text_config.num_hidden_layers))
    torch.testing.assert_close(every[layer].raw, ref)
    assert amap.layer == layer % model.config.text_config.num_hidden_layers


def test_image_columns_are_the_placeholder_positions(shipped, scene):
    model, proc = shipped
    image, prompt, _ = scene
    answer = "[0.609, 0.391, 0.750, 0.531]"
    plain = attention_map(model, proc, image, prompt, answer, span="boxes")
    longer = "Look at the picture carefully, please. " + prompt  # more text before the image
    shifted = attention_map(model, proc, image, longer, answer, span="boxes")
    shift = shifted.image_positions[0] - plain.image_positions[0]
    assert shift > 0 and shifted.raw.shape == plain.raw.shape
    assert shifted.image_positions == [p + shift for p in plain.image_positions]
    assert shifted.token_positions == [p + shift for p in plain.token_positions]
    assert plain.image_positions == list(range(plain.image_positions[0], plain.image_positions[0] + 64))
    ref, _, cols = _reference(model, proc, image, longer, answer, "boxes", -1)
    assert cols == shifted.image_positions
    torch.testing.assert_close(shifted.raw, ref)


def test_span_without_tokens_is_an_error(shipped, scene):
    model, proc = shipped
    image, prompt, _ = scene
    with pytest.raises(ValueError, match="no boxes tokens"):
        attention_map(model, proc, image, prompt, "I cannot see it.", span="boxes")
    with pytest.raises(ValueError, match="span must be one of"):
        attention_map(model, proc, image, prompt, "x", span="coordinates")
    with pytest.raises(ValueError, match="layer 99 does not exist: the LLM has"):  # was an IndexError
        attention_map(model, proc, image, prompt, "x", layer=99)


def _one_hot(row: int, col: int) -> torch.Tensor:
    grid = torch.zeros(8, 8)
    grid[row, col] = 1.0
    return grid


def test_padded_square_maps_back_onto_the_original_image(shipped):
    model, proc = shipped
    image = Image.new("RGB", (64, 32), (200, 200, 200))  # padded with 16 px rows above and below
    amap = attention_map(model, proc, image, "Output the coordinate of the red circle.", "[0.1, 0.3, 0.5, 0.6]")
    assert amap.to_image(image).size == (64, 32) and amap.to_image(image, scale=2).size == (128, 64)

    cold = overlay_grid(image, torch.zeros(8, 8))
    # rows 0-1 and 6-7 of the 8x8 grid lie entirely in the padding: a hot cell there does not show
    for row in (0, 1, 6, 7):
        assert overlay_grid(image, _one_hot(row, 3)).tobytes() == cold.tobytes()
    # cell (2, 3) covers x 24-32 of the square's y 16-24, i.e. the original's y 0-8: exactly that block changes
    changed = (np.asarray(overlay_grid(image, _one_hot(2, 3))) != np.asarray(cold)).any(axis=2)
    expected = np.zeros((32, 64), dtype=bool)
    expected[0:8, 24:32] = True
    assert (changed == expected).all()
    # Colours span the visible part: a stronger peak in the padding (a corner anchor) does not wash it out.
    anchored = _one_hot(2, 3)
    anchored[0, 0] = 10.0
    assert overlay_grid(image, anchored).tobytes() == overlay_grid(image, _one_hot(2, 3)).tobytes()


def test_to_image_draws_the_predicted_and_extra_boxes():
    grid = torch.zeros(8, 8)
    amap = AttentionMap(grid, grid, "[0.250, 0.250, 0.500, 0.500]", "answer", [], [], [], -1)
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    plain = amap.to_image(image, predicted=False)
    drawn = amap.to_image(image, extra_boxes=[((40, 40, 60, 60), (0, 200, 0))])
    assert drawn.getpixel((16, 16)) == (230, 0, 0) and drawn.getpixel((40, 40)) == (0, 200, 0)
    assert plain.getpixel((16, 16)) == plain.getpixel((0, 0))


def test_object_image_tokens_map_where_the_image_comes_first(shipped, scene):
    model, _ = shipped
    image, _, box = scene
    proc = TinyGroundingGPTProcessor.from_pretrained(SHIPPED, image_position="first")  # the paper's layout
    prompt, answer = "What is <object:0>?", "A shape."
    amap = attention_map(model, proc, image, prompt, answer, span="object", boxes=[box])
    rows, cols = amap.token_positions, amap.image_positions
    assert len(rows) == proc.object_seq_length and rows == list(range(rows[0], rows[0] + len(rows)))
    assert len(cols) == 64 and cols[-1] < rows[0]  # the object's tokens follow the whole image
    # independently: the model's own attentions over the same batch, rows picked by the object token id
    enc = proc.encode([*proc.user_turn(prompt, with_image=True), {"role": "assistant", "content": answer}],
                      image, [box])  # fmt: skip
    batch = proc.collate([enc])
    batch.pop("labels")
    with eager_attention(model.language_model), torch.no_grad():
        attn = model(**batch, output_attentions=True).attentions[-1][0]
    ids = batch["input_ids"][0]
    obj = (ids == model.config.object_token_id).nonzero().flatten()
    img = (ids == model.config.image_token_id).nonzero().flatten()
    torch.testing.assert_close(amap.raw, attn[:, obj][:, :, img].sum(dim=(0, 1)).reshape(8, 8))
    with pytest.raises(ValueError, match="come before the image"):  # the shipped template: question, then image
        attention_map(model, shipped[1], image, prompt, answer, span="object", boxes=[box])
    with pytest.raises(ValueError, match="no <object:i>"):
        attention_map(model, proc, image, "What is this?", answer, span="object")
