import copy
import json

import pytest
import torch
from PIL import Image

from tinygroundinggpt.cli import main
from tinygroundinggpt.demo import HEADLINE, POPE_TASKS, REC_TASKS, summarise


def test_demo_writes_report_table_and_picture(tiny_model, tmp_path, capsys):
    model, proc = tiny_model
    for name in ("ckpt", "first"):
        model.save_pretrained(tmp_path / name)
        proc.save_pretrained(tmp_path / name)
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
    # compared with the first checkpoint on the same scenes: both sides' figures are what their own demos reported
    second = json.loads((out / "report.json").read_text())
    cmp = tmp_path / "cmp"
    args = ["demo", "--model", str(tmp_path / "ckpt"), "--compare-with", str(tmp_path / "first"), "--n-eval", "4"]
    assert main([*args, "--out", str(cmp)]) == 0
    both = json.loads((cmp / "report.json").read_text())
    other = both["compared_with"]
    assert other["model"] == str(tmp_path / "first")
    for key in HEADLINE:
        assert both[key] == second[key] and other[key] == report[key]
    assert other["within"] == all(abs(second[k] - report[k]) <= 3.0 for k in HEADLINE)
    a, b = second["rec_heldout_acc50"], report["rec_heldout_acc50"]
    assert f"| rec_heldout_acc50 | {a:.2f} | {b:.2f} | {a - b:+.2f} |" in (cmp / "report.md").read_text()
    # a checkpoint against itself reproduces itself exactly
    itself = ["demo", "--model", str(tmp_path / "first"), "--compare-with", str(tmp_path / "first"), "--n-eval", "4"]
    assert main([*itself, "--out", str(tmp_path / "self")]) == 0
    same = json.loads((tmp_path / "self" / "report.json").read_text())
    assert same["compared_with"]["within"] and all(same[k] == same["compared_with"][k] == report[k] for k in HEADLINE)
    with pytest.raises(SystemExit, match="missing to compare with"):
        main(["demo", "--train", "--compare-with", str(tmp_path / "missing"), "--out", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()  # refused before any training


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train-seed", "3"], "a training seed applies only when training"),
        (["--train", "--model", "elsewhere"], "a model to evaluate was named too"),
        (["--n-eval", "1"], "at least 2 scenes"),
    ],
)
def test_demo_refuses_arguments_it_cannot_honour_before_any_work(args, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        main(["demo", "--out", str(tmp_path / "demo"), *args])
    assert not (tmp_path / "demo").exists()


def test_summary_pools_only_tasks_with_scored_items():
    # a split without expressions (few scenes, no held-out pair drawn) has no metrics; it was read as if it had
    rec = {"n_scored": 10, "metrics": {"acc@0.5": 50.0, "miou": 40.0}}
    empty = {"n_scored": 0, "metrics": {}}
    pope = {"n_scored": 8, "metrics": {"accuracy": 75.0, "f1": 70.0, "yes_ratio": 50.0, "not_yes_or_no": 0.0}}
    tasks = {t: rec for t in REC_TASKS["heldout"]} | {t: empty for t in REC_TASKS["compositional"]}
    summary = summarise({"tasks": tasks | {t: pope for t in POPE_TASKS}})
    assert summary["rec_heldout_acc50"] == 50.0 and summary["rec_heldout_n"] == 20
    assert summary["rec_compositional_acc50"] == 0.0 and summary["rec_compositional_n"] == 0
    assert summary["pope_adversarial_acc"] == 75.0


def test_demo_draws_its_scenes_at_the_models_input_size(tiny_tokenizer, tmp_path):
    """A model that reads 32 px images is evaluated on scenes drawn at 32 px, not on 64 px ones shrunk."""
    from tinygroundinggpt.model.presets import tiny_random

    model, proc = tiny_random(tiny_tokenizer, image_size=32, patch_size=4)
    model.save_pretrained(tmp_path / "ckpt")
    proc.save_pretrained(tmp_path / "ckpt")
    assert main(["demo", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "demo"), "--n-eval", "2"]) == 0
    images = list((tmp_path / "demo" / "world" / "images").rglob("*.png"))
    assert images and {max(Image.open(p).size) for p in images} == {32}
