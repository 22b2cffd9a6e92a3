import copy
import json

import pytest
import torch
from PIL import Image

from tinygroundinggpt.cli import main


def test_demo_writes_report_table_and_picture(tiny_model, tmp_path, capsys):
    model, proc = tiny_model
    model.save_pretrained(tmp_path / "ckpt")
    proc.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(tmp_path / "ckpt"), "--out", str(out), "--n-eval", "4"]) == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("rec_heldout_acc50", "rec_compositional_acc50", "pope_adversarial_acc", "pope_adversarial_f1"):
        assert 0.0 <= report[key] <= 100.0
    assert report["rec_heldout_n"] > 0 and report["rec_compositional_n"] > 0
    assert "| POPE adversarial | f1 |" in (out / "report.md").read_text()
    assert Image.open(out / "predictions.png").size[0] == 4 * 224
    assert "report.json" in capsys.readouterr().out
    # a checkpoint replaced at the same path (a re-shipped model) is answered afresh, not read from the old answers
    marker = out / "eval" / "predictions" / "model.txt"
    before = marker.read_text()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.projector.linear_2.bias.add_(1.0)
    other.save_pretrained(tmp_path / "ckpt")
    assert main(["demo", "--model", str(tmp_path / "ckpt"), "--out", str(out), "--n-eval", "4"]) == 0
    assert marker.read_text() != before


def test_demo_refuses_a_train_seed_without_train():
    with pytest.raises(SystemExit, match="only applies with --train"):
        main(["demo", "--train-seed", "3"])
