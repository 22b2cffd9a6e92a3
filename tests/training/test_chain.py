import json
from pathlib import Path

import pytest
import torch

from tinygroundinggpt.cli import main
from tinygroundinggpt.training.engine import is_complete
from tinygroundinggpt.training.recipe import chain_stages
from tinygroundinggpt.world import write_world

QUICK = ["--set", "max_steps=1", "--set", "batch_size=2", "--set", "save_steps=100"]


def _components(paths):
    return ["--clip", str(paths["clip"]), "--dino", str(paths["dino"]), "--llm", str(paths["llm"])]


def test_tiny_chain_runs_every_stage_from_three_checkpoints_and_resumes(world, tiny_components, tmp_path, capsys):
    out = tmp_path / "chain"
    args = ["train", "--chain", "--preset", "tiny", "--data-root", str(world), "--out", str(out), *QUICK]
    assert main([*args, *_components(tiny_components)]) == 0
    stages = chain_stages(tiny=True)
    assert stages[:3] == ("stage1a", "stage1b", "stage2_easy") and stages[-1] == "stage3_presence"
    assert all(is_complete(out / stage) for stage in stages)
    summary = json.loads((out / "chain_report.json").read_text())
    assert summary["final"] == str(out / "stage3_presence") and set(summary["stages"]) == set(stages)
    easy = json.loads((out / "stage2_easy" / "train_report.json").read_text())
    assert easy["stage"] == "stage2_easy" and list(easy["data"]) == [str(world / "easy" / "stage2_tc.jsonl")]
    stamp = (out / "stage2" / "model.safetensors").stat().st_mtime_ns
    assert main([*args, *_components(tiny_components)]) == 0  # a finished chain skips every stage
    assert (out / "stage2" / "model.safetensors").stat().st_mtime_ns == stamp
    # the skipping run took no training time of its own, yet the chain's cost is still that of its stages
    again = json.loads((out / "chain_report.json").read_text())
    assert again["wall_minutes"] < again["stage_minutes"] == summary["stage_minutes"] > 0
    capsys.readouterr()


def test_table10_ablation_reports_both_encoders_side_by_side(world, tiny_components, tmp_path, capsys):
    heldout = tmp_path / "heldout"
    write_world(heldout, n_train=0, n_eval=2, seed=11, image_size=64, progress=False)
    out = tmp_path / "ablation"
    args = ["ablate", "table10", "--data-root", str(world), "--eval-root", str(heldout), "--out", str(out)]
    assert main([*args, *QUICK, *_components(tiny_components)]) == 0
    result = json.loads((out / "ablation.json").read_text())
    assert set(result["results"]) == {"CLIP", "CLIP + DINOv2"}
    clip_only = json.loads((out / "CLIP" / "stage1a" / "config.json").read_text())
    assert clip_only["use_dino"] is False
    assert "| CLIP + DINOv2 |" in (out / "ablation.md").read_text()
    capsys.readouterr()


def test_table3_ablation_trains_stage_2_without_object_images_from_shared_earlier_stages(
    world, tiny_components, tmp_path, capsys
):
    heldout = tmp_path / "heldout"
    write_world(heldout, n_train=0, n_eval=2, seed=11, image_size=64, progress=False)
    out = tmp_path / "ablation"
    args = ["ablate", "table3", "--data-root", str(world), "--eval-root", str(heldout), "--out", str(out)]
    assert main([*args, *QUICK, *_components(tiny_components)]) == 0
    assert set(json.loads((out / "ablation.json").read_text())["results"]) == {"T,C", "T,C,I"}
    assert sorted(p.name for p in (out / "shared").iterdir() if p.is_dir()) == ["stage1a", "stage1b", "stage2_easy"]
    chain = chain_stages(tiny=True)
    for stage in chain[chain.index("stage2") : chain.index("stage3")]:  # every multi-object part of the tiny stage 2
        tc = json.loads((out / "TC" / stage / "train_report.json").read_text())["data"]
        tci = json.loads((out / "TCI" / stage / "train_report.json").read_text())["data"]
        assert sorted(Path(p).name for p in tc) == ["stage2_tc.jsonl", "stage2_tc.jsonl"]  # one-object and multi
        assert {Path(p).name for p in tci} == {"stage2_tc.jsonl", "stage2_ic.jsonl", "stage2_ti.jsonl"}
    capsys.readouterr()


def test_a_chain_seed_makes_runs_identical_and_another_seed_differs(world, tiny_components, tmp_path, capsys):
    from safetensors.torch import load_file

    def stage1a(name, *seed):
        out = tmp_path / name
        args = ["train", "--chain", "--preset", "tiny", "--data-root", str(world), "--out", str(out), "--stages",
                "stage1a", *QUICK, *_components(tiny_components), *seed]  # fmt: skip
        assert main(args) == 0
        report = json.loads((out / "stage1a" / "train_report.json").read_text())
        return load_file(out / "stage1a" / "model.safetensors"), report["recipe"]["seed"]

    default, default_seed = stage1a("default")
    again, _ = stage1a("again")
    other, other_seed = stage1a("other", "--seed", "5")
    assert (default_seed, other_seed) == (42, 5)
    assert all(torch.equal(default[k], again[k]) for k in default)
    assert not torch.equal(default["projector.linear_1.weight"], other["projector.linear_1.weight"])
    with pytest.raises(SystemExit, match="trained with seed 42, not 5"):  # a finished stage of another seed is no start
        stage1a("default", "--seed", "5")
    with pytest.raises(SystemExit, match="trained with seed 5, not 42"):  # nor for a run with the recipes' own seeds
        stage1a("other")
    capsys.readouterr()
