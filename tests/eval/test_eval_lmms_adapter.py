"""The optional lmms-eval adapter: a clear error without lmms-eval; with it, lmms-eval's request
objects answered in order through the real pipeline. lmms-eval is not a dependency, so one test stands in
its two names the adapter builds on (the ``lmms`` base class, ``register_model``) to check the adapter's
own work on the shipped checkpoint: the answer frame per task."""

from __future__ import annotations

import importlib
import io
import random
import sys
import types

import pytest
from PIL import Image

from tinygroundinggpt.boxes import model_frame_boxes, model_text_to_norm
from tinygroundinggpt.demo import SHIPPED
from tinygroundinggpt.world import generate_scene


def _png(image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **kw)
    return buf.getvalue()


def test_without_lmms_eval_the_import_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lmms_eval", None)
    monkeypatch.delitem(sys.modules, "tinygroundinggpt.eval.lmms_adapter", raising=False)
    with pytest.raises(ImportError, match="pip install lmms-eval"):
        importlib.import_module("tinygroundinggpt.eval.lmms_adapter")


def test_generate_until_answers_lmms_eval_requests(tmp_path, tiny_model):
    pytest.importorskip("lmms_eval.api.model")
    from lmms_eval.api.instance import Instance

    from tinygroundinggpt.eval.lmms_adapter import TinyGroundingGPTLMMs, cut_at_stop

    model, processor = tiny_model
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    lm = TinyGroundingGPTLMMs(pretrained=str(tmp_path), batch_size=2)
    docs = [{"image": Image.new("RGB", (40, 30), "red")}, {"image": Image.new("RGB", (30, 40), "blue")}, {}]
    lm.task_dict = {"toy": {"test": docs}}

    def visual(doc):
        return [doc["image"]] if "image" in doc else []

    def request(i, max_new_tokens):
        gen = {"max_new_tokens": max_new_tokens, "until": ["\n\n"], "temperature": 0}
        args = ("<image>\nWhat colour is it?", gen, visual, i, "toy", "test")
        return Instance("generate_until", args, idx=0, metadata={"task": "toy", "doc_id": i, "repeats": 1})

    requests = [request(0, 4), request(1, 8), request(2, 4)]
    answers = lm.generate_until(requests)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    direct = lm.pipe.generate_batch([docs[1]["image"]], ["What colour is it?"], max_new_tokens=8)[0]
    assert answers[1] == cut_at_stop(direct, ["\n\n"])  # same answer as the pipeline, in request order
    assert cut_at_stop("yes\n\nmore", ["\n\n"]) == "yes" and cut_at_stop("a.b", ".") == "a"
    with pytest.raises(NotImplementedError):
        lm.loglikelihood(requests)


@pytest.fixture
def stand_in_lmms_eval(monkeypatch):
    """``lmms_eval.api.model.lmms`` and ``lmms_eval.api.registry.register_model`` as lmms-eval defines them for a
    model: a base class holding rank 0 of 1, and a decorator that records the class under its names."""

    class lmms:  # noqa: N801 - lmms-eval's name
        def __init__(self) -> None:
            self._rank, self._world_size = 0, 1

        @property
        def rank(self) -> int:
            return self._rank

    registry: dict[str, type] = {}

    def register_model(*names):
        def decorate(cls):
            registry.update(dict.fromkeys(names, cls))
            return cls

        return decorate

    api = types.ModuleType("lmms_eval.api")
    model_mod, registry_mod = types.ModuleType("lmms_eval.api.model"), types.ModuleType("lmms_eval.api.registry")
    model_mod.lmms, registry_mod.register_model = lmms, register_model
    for name, mod in [("lmms_eval", types.ModuleType("lmms_eval")), ("lmms_eval.api", api),
                      ("lmms_eval.api.model", model_mod), ("lmms_eval.api.registry", registry_mod)]:  # fmt: skip
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.delitem(sys.modules, "tinygroundinggpt.eval.lmms_adapter", raising=False)
    yield registry
    sys.modules.pop("tinygroundinggpt.eval.lmms_adapter", None)  # built on the stand-in: not for later tests


def test_boxes_are_rewritten_into_lmms_evals_frame_only_in_box_answer_tasks(stand_in_lmms_eval):
    adapter = importlib.import_module("tinygroundinggpt.eval.lmms_adapter")
    assert stand_in_lmms_eval == {"tinygroundinggpt": adapter.TinyGroundingGPTLMMs}
    lm = adapter.TinyGroundingGPTLMMs(pretrained=str(SHIPPED), batch_size=2, device="cpu")
    image, graph = generate_scene(random.Random(3), 64)  # landscape: the two frames differ in y
    assert image.size == (64, 48)
    target = graph.objects[0]
    prompt = f"Output the coordinate of the {target.colour} {target.shape}."
    lm.task_dict = {t: {"val": [{"image": image}]} for t in ("refcoco_bbox_rec_val", "vqav2_val")}

    def request(task):
        gen = {"max_new_tokens": 32, "until": ["\n\n"], "temperature": 0}
        return types.SimpleNamespace(args=(f"<image>\n{prompt}", gen, lambda doc: [doc["image"]], 0, task, "val"))

    rec, other = lm.generate_until([request("refcoco_bbox_rec_val"), request("vqav2_val")])
    direct = lm.pipe.generate_batch([image], [prompt], max_new_tokens=32)[0]
    assert model_frame_boxes(direct), f"the shipped model wrote no box: {direct!r}"
    assert other == direct
    assert rec == model_text_to_norm(direct, 64, 48) and rec != direct


def test_rotated_images_are_read_as_stored_and_long_requests_fit_the_context(stand_in_lmms_eval):
    from PIL import Image as PILImage

    adapter = importlib.import_module("tinygroundinggpt.eval.lmms_adapter")
    lm = adapter.TinyGroundingGPTLMMs(pretrained=str(SHIPPED), batch_size=2, device="cpu")
    image, graph = generate_scene(random.Random(3), 64)
    target = graph.objects[0]
    prompt = f"Output the coordinate of the {target.colour} {target.shape}."
    exif = PILImage.Exif()
    exif[0x0112] = 6  # "turn 90 degrees to display": lmms-eval scores boxes in the stored pixels all the same
    tagged = PILImage.open(io.BytesIO(_png(image, exif=exif.tobytes())))
    lm.task_dict = {"refcoco_bbox_rec_val": {"val": [{"image": image}, {"image": tagged}]}}
    context = lm.pipe.model.config.text_config.max_position_embeddings

    def request(doc, max_new_tokens, text=prompt):
        gen = {"max_new_tokens": max_new_tokens, "until": ["\n\n"], "temperature": 0}
        args = (f"<image>\n{text}", gen, lambda d: [d["image"]], doc, "refcoco_bbox_rec_val", "val")
        return types.SimpleNamespace(args=args)

    plain, rotated, long_task, too_long = lm.generate_until(
        [request(0, 32), request(1, 32), request(0, context), request(0, 32, "very " * context + prompt)]
    )
    assert rotated == plain  # the model saw the stored pixels, the frame the answer is scored in
    assert long_task == plain  # a task limit past the context: the answer gets what the context leaves
    assert too_long == ""  # a prompt the model cannot take: an empty answer, not the end of the run
