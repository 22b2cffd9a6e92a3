"""The optional lmms-eval adapter: a clear error without lmms-eval; with it, lmms-eval's request
objects answered in order through the real pipeline."""

from __future__ import annotations

import importlib
import sys

import pytest
from PIL import Image


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
