import json
import threading

import pytest
import torch
from PIL import Image

from tinygroundinggpt import boxes as bx
from tinygroundinggpt.api import Prediction, TinyGroundingGPTPipeline, answer_boxes
from tinygroundinggpt.cli import main
from tinygroundinggpt.model import TinyGroundingGPTForConditionalGeneration, TinyGroundingGPTProcessor


def test_answer_boxes_are_returned_in_the_original_frame():
    # 200x100 image: model frame y is offset by the 50 px of top padding on a 200 px square
    pixel, norm = answer_boxes("It is at [0.250, 0.250, 0.750, 0.500] and [0.1, 0.1, 0.2]", 200, 100)
    assert pixel == [(50.0, 0.0, 150.0, 50.0)]
    assert norm == [(0.25, 0.0, 0.75, 0.5)]
    # numbers outside [0, 1] are no model-frame box: left out, not clamped to the image's edge
    assert answer_boxes("[3, 5, 7, 9] and [0.250, 0.250, 0.750, 0.500]", 200, 100)[0] == [(50.0, 0.0, 150.0, 50.0)]


def test_pipeline_predict_and_cli(tiny_model, tmp_path, capsys):
    model, proc = tiny_model
    model.save_pretrained(tmp_path / "ckpt")
    proc.save_pretrained(tmp_path / "ckpt")
    img_path = tmp_path / "scene.png"
    Image.new("RGB", (90, 60), (10, 10, 200)).save(img_path)
    pipe = TinyGroundingGPTPipeline.from_pretrained(tmp_path / "ckpt")
    pred = pipe.predict(img_path, "Output the coordinate of the blue square.", max_new_tokens=6)
    assert (pred.width, pred.height) == (90, 60)
    assert pred.boxes == answer_boxes(pred.text, 90, 60)[0]
    for b in pred.boxes:
        assert bx.validate_pixel_box(b, 90, 60, repair=True)
    texts = pipe.generate_batch([img_path, img_path], ["hi", "Output the coordinate of x"], max_new_tokens=4)
    assert len(texts) == 2
    detailed = pipe.generate_batch_detailed(
        [img_path, img_path], ["hi", "Output the coordinate of x"], max_new_tokens=4
    )
    assert [g.text for g in detailed] == texts
    for g in detailed:
        assert g.prompt_tokens > proc.image_seq_length and 1 <= g.completion_tokens <= 4
        assert g.finished or g.completion_tokens == 4
        assert (g.width, g.height) == (90, 60) and g.boxes == answer_boxes(g.text, 90, 60)[0]
    (no_image,) = pipe.generate_batch_detailed([None], ["hi"], max_new_tokens=3)
    assert (no_image.width, no_image.boxes) == (0, []) and no_image.prompt_tokens < proc.image_seq_length
    assert (
        main(["predict", "--model", str(tmp_path / "ckpt"), "--image", str(img_path), "hi", "--max-new-tokens", "3"])
        == 0
    )
    printed = capsys.readouterr().out
    out = json.loads(printed[printed.index("{") :])
    assert set(out) == {"text", "boxes", "boxes_norm", "width", "height"} and out["width"] == 90
    # A question naming a box it was not given, and a missing image: clear errors, not tracebacks.
    with pytest.raises(ValueError, match="prompt 0 .*refers to box 1, but there are 1 boxes"):
        pipe.generate_batch([img_path], ["What is <object:1>?"], boxes=[[(1, 1, 20, 20)]])
    with pytest.raises(ValueError, match="<object:i>, but there is no image"):
        pipe.generate_batch([None], ["What is <object:0>?"], boxes=[[(1, 1, 20, 20)]])
    with pytest.raises(ValueError, match="box 0 of the 90x60 image is inverted"):  # not swapped into another box
        pipe.generate_batch([img_path], ["What is <object:0>?"], boxes=[[(20, 1, 1, 20)]])
    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(SystemExit, match="tgg predict: .*refers to box 0, but there are 0 boxes"):
        main(["predict", "--model", ckpt, "--image", str(img_path), "Where is <box:0>?"])
    with pytest.raises(SystemExit, match="tgg predict: .*missing.png: no such image file"):
        main(["predict", "--model", ckpt, "--image", str(tmp_path / "missing.png"), "hi"])
    with pytest.raises(SystemExit):  # argparse: must be above 0
        main(["predict", "--model", ckpt, "--image", str(img_path), "hi", "--max-new-tokens", "0"])
    assert "must be above 0" in capsys.readouterr().err


def test_stream_yields_the_answer_in_pieces_then_its_prediction_and_stops_when_closed():
    from tinygroundinggpt.demo import SHIPPED
    from tinygroundinggpt.world import generate_scene

    image = generate_scene(__import__("random").Random(22), 64)[0]
    pipe = TinyGroundingGPTPipeline.from_pretrained(SHIPPED)
    question = "Output the coordinate of the cyan triangle."
    whole = pipe.predict(image, question)
    *pieces, last = list(pipe.stream(image, question))
    assert len(pieces) > 1 and all(isinstance(p, str) for p in pieces)
    assert "".join(pieces).strip() == whole.text and last == whole  # boxes, token counts, finished: as predict
    # a bad input raises when the stream is asked for, before any token
    with pytest.raises(ValueError, match="refers to box 0, but there are 0 boxes"):
        pipe.stream(image, "Where is <box:0>?")
    # closed after its first piece, the generation stops instead of running to max_new_tokens in the background;
    # also when another thread is reading it at that moment (a server whose client went away)
    describe = "Describe the image with the coordinates of every object."
    for reader in (False, True):
        long = pipe.stream(image, describe, max_new_tokens=400)
        assert isinstance(next(long), str)
        rest: list = []
        thread = threading.Thread(target=rest.extend, args=(long,)) if reader else None
        if thread:
            thread.start()
        long.close()
        if thread:
            thread.join(60)
            assert not thread.is_alive()
            assert all(not isinstance(p, Prediction) or not p.finished for p in rest)  # cut short, not run out
        assert pipe.predict(image, question) == whole  # the pipeline is free again


def test_a_number_too_long_to_be_finite_is_not_returned_as_a_box():
    pixel, norm = answer_boxes(f"[0.1, 0.1, 0.2, 0.2] [{'9' * 400}, 0, 1, 1]", 100, 100)
    assert pixel == [(10.0, 10.0, 20.0, 20.0)] and len(norm) == 1


def test_export_casts_every_weight_once_and_keeps_the_processor(tiny_model, tmp_path):
    model, proc = tiny_model
    model.save_pretrained(tmp_path / "ckpt")
    proc.save_pretrained(tmp_path / "ckpt")
    assert main(["export", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "bf16")]) == 0
    small = TinyGroundingGPTForConditionalGeneration.from_pretrained(tmp_path / "bf16")
    assert small.dtype == torch.bfloat16
    full = model.state_dict()
    for name, value in small.state_dict().items():
        assert torch.equal(value, full[name].to(torch.bfloat16)), name
    assert TinyGroundingGPTProcessor.from_pretrained(tmp_path / "bf16").to_dict() == proc.to_dict()
    with pytest.raises(SystemExit, match="already exists"):
        main(["export", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "bf16")])


def test_the_checkpoints_own_stop_tokens_end_an_answer():
    """Qwen2.5-Instruct's generation config stops at <|endoftext|> as well as <|im_end|>: the pipeline honours the
    checkpoint's list, not only the end of turn."""
    from tinygroundinggpt.assets import SHIPPED

    pipe = TinyGroundingGPTPipeline.from_pretrained(SHIPPED)
    image, prompt = Image.new("RGB", (64, 48), (200, 30, 30)), "Output the coordinate of the red object."
    full = pipe.predict(image, prompt, max_new_tokens=12)
    ids = pipe.processor.tokenizer(full.text, add_special_tokens=False)["input_ids"]
    assert len(ids) >= 3
    config = pipe.model.language_model.generation_config
    config.eos_token_id = [pipe.processor.end_of_turn_id, ids[2]]  # as if the checkpoint listed this token too
    cut = pipe.predict(image, prompt, max_new_tokens=12)
    assert cut.finished and cut.completion_tokens == 3 and full.text.startswith(cut.text) and cut.text != full.text
