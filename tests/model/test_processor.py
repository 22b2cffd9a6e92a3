import copy

import numpy as np
import pytest
import torch
from PIL import Image

from tinygroundinggpt import boxes as bx
from tinygroundinggpt.data.format import Sample, SampleError
from tinygroundinggpt.model.processing_tinygroundinggpt import IGNORE_INDEX, TruncationError


def _labelled_text(proc, enc):
    return proc.tokenizer.decode([i for i, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE_INDEX])


def test_labels_are_exactly_the_assistant_replies(tiny_model):
    _, proc = tiny_model
    img = Image.new("RGB", (80, 40), (10, 200, 10))
    msgs = [
        {"role": "user", "content": "<image>\nOutput the coordinate of the green square."},
        {"role": "assistant", "content": "It is at <box:0>."},
        {"role": "user", "content": "And <object:1>?"},
        {"role": "assistant", "content": "Yes, there is. <box:1>"},
    ]
    enc = proc.encode(msgs, img, [(0, 0, 40, 40), (40, 0, 80, 40)])
    eos = proc.tokenizer.eos_token
    assert _labelled_text(proc, enc) == (
        f"It is at [0.000, 0.250, 0.500, 0.750].{eos}Yes, there is. [0.500, 0.250, 1.000, 0.750]{eos}"
    )
    # each labelled token's characters within its reply: the reply text back, then the end-of-turn token
    replies = ["It is at [0.000, 0.250, 0.500, 0.750].", "Yes, there is. [0.500, 0.250, 1.000, 0.750]"]
    labelled = [i for i, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE_INDEX]
    assert len(enc.reply_offsets) == len(labelled)
    k = 0
    for reply in replies:
        n = next(j for j in range(k, len(labelled)) if enc.reply_offsets[j][0] >= len(reply)) - k
        assert proc.tokenizer.decode(labelled[k : k + n]) == reply
        assert enc.reply_offsets[k] == (0, enc.reply_offsets[k][1]) and enc.reply_offsets[k + n - 1][1] == len(reply)
        assert enc.reply_offsets[k + n] == (len(reply), len(reply) + len(eos))
        k += n + 1
    # no label on any visual token
    vis = {proc.image_token_id, proc.object_token_id}
    assert all(lab == IGNORE_INDEX for i, lab in zip(enc.input_ids, enc.labels, strict=True) if i in vis)


def test_a_base_models_eos_does_not_stop_the_end_of_turn_being_learned(tiny_model):
    # A base Qwen2.5's eos is <|endoftext|>; its ChatML template still closes each reply with <|im_end|>.
    _, proc = tiny_model
    base = copy.deepcopy(proc)
    base.tokenizer.eos_token = "<|endoftext|>"
    assert proc.tokenizer.eos_token == "<|im_end|>" and base.end_of_turn_token == "<|im_end|>"
    assert base.end_of_turn_id == proc.tokenizer.convert_tokens_to_ids("<|im_end|>")
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert _labelled_text(base, base.encode(msgs, None, [])) == "Hello.<|im_end|>"


def test_placeholders_expand_to_feature_counts(tiny_model):
    model, proc = tiny_model
    img = Image.new("RGB", (64, 64))
    enc = proc.encode(
        [{"role": "user", "content": "<image> <object:0> <object:1>"}], img, [(0, 0, 8, 8), (8, 8, 64, 64)]
    )
    ids = torch.tensor(enc.input_ids)
    assert int((ids == proc.image_token_id).sum()) == model.config.image_seq_length == 64
    assert int((ids == proc.object_token_id).sum()) == 2 * model.config.object_seq_length
    assert enc.pixel_values.shape == (1, 3, 64, 64) and enc.object_pixel_values.shape == (2, 3, 64, 64)


@pytest.mark.parametrize("size", [(120, 40), (40, 120)])
def test_object_image_is_exactly_the_box_pixels_zoomed(tiny_model, size):
    _, proc = tiny_model
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    box = (10, 5, 26, 21) if w > h else (5, 10, 21, 26)  # a 16x16 square
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = (255, 0, 0)
    arr[y1 : y1 + 8, x1:x2] = (0, 0, 255)  # top half blue, bottom half red
    img = Image.fromarray(arr)
    t = proc.object_to_tensor(img, box)
    s = proc.image_size
    assert t.shape == (3, s, s)
    top, bottom = t[:, : s // 2 - 2], t[:, s // 2 + 2 :]
    assert torch.allclose(top[2], torch.ones_like(top[2]), atol=0.02) and top[0].max() < 0.02
    assert torch.allclose(bottom[0], torch.ones_like(bottom[0]), atol=0.02) and bottom[2].max() < 0.02


def test_global_image_padded_to_centred_square(tiny_model):
    _, proc = tiny_model
    img = Image.new("RGB", (64, 32), (255, 255, 255))
    t = proc.image_to_tensor(img)
    fill = torch.tensor(proc.pad_fill, dtype=torch.float32) / 255
    assert torch.allclose(t[:, 0, 0], fill) and torch.allclose(t[:, -1, -1], fill)
    assert torch.allclose(t[:, 32, 32], torch.ones(3))
    # the box text of the whole image marks exactly the unpadded band
    assert bx.format_box(bx.pixel_to_model((0, 0, 64, 32), 64, 32)) == "[0.000, 0.250, 1.000, 0.750]"


def test_truncation_never_splits_an_image_run(tiny_model):
    _, proc = tiny_model
    img = Image.new("RGB", (64, 64))
    msgs = [
        {"role": "user", "content": "Output the coordinate of the circle. <image>"},
        {"role": "assistant", "content": "It is at <box:0>."},
        {"role": "user", "content": "Which is <object:0>?"},
        {"role": "assistant", "content": "The answer is A."},
    ]
    full = proc.encode(msgs, img, [(0, 0, 32, 32)])
    obj_start = full.input_ids.index(proc.object_token_id)
    proc.max_length = obj_start + 2  # would cut through the object run
    try:
        cut = proc.encode(msgs, img, [(0, 0, 32, 32)])
        assert cut.input_ids == full.input_ids[:obj_start]
        assert cut.object_pixel_values.shape[0] == 0 and cut.object_boxes == []
        assert cut.input_ids.count(proc.image_token_id) == proc.image_seq_length
        assert "[0.000, 0.000, 0.500, 0.500]" in proc.tokenizer.decode(
            [i for i, lab in zip(cut.input_ids, cut.labels, strict=True) if lab != IGNORE_INDEX]
        )
        proc.max_length = full.input_ids.index(proc.image_token_id) + 3  # inside the image run
        with pytest.raises(TruncationError):
            proc.encode(msgs, img, [(0, 0, 32, 32)])
    finally:
        proc.max_length = 2048


def test_a_prompt_over_max_length_is_refused_not_cut(tiny_model):
    _, proc = tiny_model
    msgs = [{"role": "user", "content": "Output the coordinate of the circle. " * 20 + "<image>"}]
    n = len(proc.encode(msgs, Image.new("RGB", (64, 64)), add_generation_prompt=True).input_ids)
    proc.max_length = n - 1  # cutting would drop the image and the turn the model should answer
    try:
        with pytest.raises(TruncationError, match=f"the prompt has {n} tokens, more than max_length {n - 1}"):
            proc.encode(msgs, Image.new("RGB", (64, 64)), add_generation_prompt=True)
    finally:
        proc.max_length = 2048


def test_collate_left_and_right_padding(tiny_model):
    _, proc = tiny_model
    a = proc.encode([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Yes."}])
    b = proc.encode([{"role": "user", "content": "a longer question here"}, {"role": "assistant", "content": "No."}])
    right = proc.collate([a, b])
    left = proc.collate([a, b], padding_side="left")
    n = len(a.input_ids)
    assert right["attention_mask"][0, :n].all() and not right["attention_mask"][0, n:].any()
    assert left["attention_mask"][0, -n:].all() and not left["attention_mask"][0, :-n].any()
    assert right["input_ids"][0, :n].tolist() == a.input_ids == left["input_ids"][0, -n:].tolist()
    assert right["pixel_values"].shape[0] == 0


def test_errors_for_missing_image_and_bad_box(tiny_model):
    _, proc = tiny_model
    with pytest.raises(ValueError, match="no image"):
        proc.encode([{"role": "user", "content": "<image> hi"}])
    with pytest.raises(bx.BoxError, match="lies outside the 10x10 image"):  # not clamped to an empty box
        proc.object_to_tensor(Image.new("RGB", (10, 10)), (20, 20, 30, 30))


def test_a_literal_object_token_is_refused_not_left_without_an_object_image(tiny_model):
    _, proc = tiny_model
    img = Image.new("RGB", (40, 40))
    for system in (None, "You see <object>."):  # in a turn, or in the system prompt the template adds
        asking = copy.deepcopy(proc)
        asking.system_prompt = system
        text = "<image> Is <object:0> like <object>?" if system is None else "<image> Is <object:0> red?"
        msgs = [{"role": "user", "content": text}, {"role": "assistant", "content": "Yes."}]
        with pytest.raises(ValueError, match=r"2 <object> placeholders but 1 object images"):
            asking.encode(msgs, img, [(0, 0, 8, 8)])
    with pytest.raises(ValueError, match="bare <object>"):  # a prompt: refused before encoding
        proc(["What is <object>?"], [img])


@pytest.mark.parametrize(
    ("box", "problem"),
    [
        ((50, 10, 20, 40), "box 0 of the 90x60 image is inverted"),
        ((10, 10, 100, 40), r"box 0 of the 90x60 image \[10.0, 10.0, 100.0, 40.0\] lies outside the 90x60 image"),
        ((-5, 10, 20, 40), "box 0 of the 90x60 image has a negative coordinate"),
    ],
)
@pytest.mark.parametrize("prompt", ["Where is <box:0>?", "What is <object:0>?"])
def test_boxes_given_with_a_prompt_are_checked_not_repaired(tiny_model, box, problem, prompt):
    _, proc = tiny_model
    with pytest.raises(ValueError, match=problem):
        proc([prompt], [Image.new("RGB", (90, 60))], boxes=[[box]])


def test_boxes_need_an_image(tiny_model):
    _, proc = tiny_model
    msgs = [{"role": "user", "content": "Where is <box:0>?"}, {"role": "assistant", "content": "There."}]
    with pytest.raises(ValueError, match="<box:i> / <object:i> but no image was given"):
        proc.encode(msgs, None, [(0, 0, 1, 1)])  # it rendered as [1.000, 1.000, 1.000, 1.000]
    with pytest.raises(ValueError, match="<box:i> / <object:i>, but there is no image"):
        proc(["Where is <box:0>?"], [None], boxes=[[(0, 0, 1, 1)]])


def test_an_image_the_conversation_never_shows_is_an_error_not_dropped(tiny_model):
    _, proc = tiny_model
    img = Image.new("RGB", (64, 48))
    boxes = [{"role": "user", "content": "Where is <box:0>?"}, {"role": "assistant", "content": "There."}]
    with pytest.raises(ValueError, match="has <box:i> but no <image>: its boxes would be in the frame of an image"):
        proc.encode(boxes, img, [(1, 1, 30, 30)])
    plain = [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "A box."}]
    with pytest.raises(ValueError, match="an image was given but the conversation has no <image> or <object:i>"):
        proc.encode(plain, img, [])
    # an object image alone is shown: allowed
    objects = [{"role": "user", "content": "What is <object:0>?"}, {"role": "assistant", "content": "A box."}]
    enc = proc.encode(objects, img, [(1, 1, 30, 30)])
    assert enc.pixel_values.shape[0] == 0 and enc.object_pixel_values.shape[0] == 1


def test_a_stored_size_that_is_not_the_images_is_a_sample_error(tiny_model, tmp_path):
    _, proc = tiny_model
    Image.new("RGB", (200, 100)).save(tmp_path / "a.png")
    msgs = [{"role": "user", "content": "<image>\nWhere is it?"}, {"role": "assistant", "content": "<box:0>"}]
    stored = {"id": "s", "image": "a.png", "boxes": [[10, 10, 50, 50]], "messages": msgs}
    assert proc.encode_sample(Sample.from_json({**stored, "width": 200, "height": 100}), str(tmp_path)).input_ids
    wrong = Sample.from_json({**stored, "width": 640, "height": 480})
    with pytest.raises(SampleError, match=r"a.png: the sample says 640x480 but the image is 200x100"):
        proc.encode_sample(wrong, str(tmp_path))
