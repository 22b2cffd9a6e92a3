"""What a stage leaves in its folder (markers, checkpoints' processors), its optimiser groups and its weights' dtype."""

import os
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from tinygroundinggpt.model import TinyGroundingGPTProcessor
from tinygroundinggpt.training.chain import load_checkpoint, run_chain
from tinygroundinggpt.training.engine import (
    COMPLETE,
    GroundingTrainer,
    _mark_complete,
    is_complete,
    last_complete_checkpoint,
    train_stage,
)
from tinygroundinggpt.training.recipe import RecipeError, load_recipe

QUICK = ["batch_size=2", "warmup=0", "data=[{path: stage2_tc.jsonl, weight: 1.0}]"]


def _stage(name, world, ckpt, out, sets=(), model=None, **kwargs):
    loaded, proc = load_checkpoint(ckpt)
    recipe = load_recipe(name, [*QUICK, *sets])
    return train_stage(recipe, model or loaded, proc, out, data_root=world, disable_tqdm=True, **kwargs)


class _Capture(TrainerCallback):
    def on_train_begin(self, args, state, control, optimizer=None, model=None, **kwargs):
        self.optimizer, self.model = optimizer, model
        self.dtypes = {n: p.dtype for n, p in model.named_parameters()}


def test_a_rerun_killed_midway_leaves_no_stale_marker_to_trust(world, tiny_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "stage"
    _stage("stage1a", world, tiny_ckpt, out, ["max_steps=2", "save_steps=1"])
    assert is_complete(out) and last_complete_checkpoint(out) == str(out / "checkpoint-2")

    class Stale(TrainerCallback):  # a finished checkpoint-1 the rerun will save into in place
        def on_step_begin(self, args, state, control, **kwargs):
            (out / "checkpoint-1").mkdir(exist_ok=True)
            (out / "checkpoint-1" / COMPLETE).write_text("{}")

    def killed(self, output_dir):  # the model is written, the optimiser state not yet
        raise KeyboardInterrupt

    monkeypatch.setattr(GroundingTrainer, "_save_optimizer_and_scheduler", killed)
    with pytest.raises(KeyboardInterrupt):
        _stage("stage1a", world, tiny_ckpt, out, ["max_steps=2", "save_steps=1"], resume=False, callbacks=[Stale()])
    assert (out / "checkpoint-1" / "model.safetensors").is_file()  # killed during the save, not before it
    assert not is_complete(out)  # a chain rerun trains the stage again instead of skipping it
    assert last_complete_checkpoint(out) is None  # neither the old run's checkpoint-2 nor the half-saved one


def test_a_chain_without_resume_trains_finished_stages_again(world, tiny_ckpt, tmp_path):
    sets = {"stage1b": [*QUICK, "max_steps=1"]}
    run = dict(stages=("stage1b",), init=tiny_ckpt, overrides=sets, use_tiny_overrides=False, disable_tqdm=True)
    weights = tmp_path / "stage1b" / "model.safetensors"
    run_chain(tmp_path, world, **run)
    stamp = weights.stat().st_mtime_ns
    run_chain(tmp_path, world, **run)
    assert weights.stat().st_mtime_ns == stamp  # finished: skipped
    run_chain(tmp_path, world, resume=False, **run)
    assert weights.stat().st_mtime_ns != stamp and is_complete(weights.parent)


def test_a_stage_trained_again_supersedes_the_later_stages_built_on_it(world, tiny_ckpt, tmp_path):
    sets = {s: [*QUICK, "max_steps=1"] for s in ("stage1b", "stage2")}
    run = dict(init=tiny_ckpt, overrides=sets, use_tiny_overrides=False, disable_tqdm=True)
    run_chain(tmp_path, world, stages=("stage1b", "stage2"), **run)
    first = load_file(tmp_path / "stage2" / "model.safetensors")
    again = {"stage1b": [*QUICK, "max_steps=1", "learning_rate=1e-2"]}  # stage1b alone, trained again otherwise
    run_chain(tmp_path, world, stages=("stage1b",), resume=False, **{**run, "overrides": again})
    # stage2 was built on the old stage1b: moved aside, so the next chain run trains it instead of skipping it
    assert not (tmp_path / "stage2").exists() and is_complete(tmp_path / "stage2.superseded")
    run_chain(tmp_path, world, stages=("stage1b", "stage2"), **run)
    assert is_complete(tmp_path / "stage2")
    assert not torch.equal(first["projector.linear_1.weight"], load_file(tmp_path / "stage2" / "model.safetensors")[
        "projector.linear_1.weight"])  # fmt: skip


def test_a_marker_is_written_after_every_file_of_its_folder_is_flushed(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    for name in ("model.safetensors", "sub/optimizer.pt"):
        (tmp_path / name).write_bytes(b"x")
    flushed: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: flushed.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    _mark_complete(tmp_path, {"global_step": 1})
    names = [os.path.relpath(p, tmp_path) for p in flushed]
    assert names[:2] == ["model.safetensors", "sub/optimizer.pt"] and names[2] == f".{COMPLETE}.tmp"
    assert names[-1] == "." and is_complete(tmp_path)  # then the rename itself, through the folder


def test_a_checkpoint_of_another_recipe_is_not_resumed(world, tiny_ckpt, tmp_path):
    sets = ["max_steps=2", "save_steps=1", "logging_steps=1"]
    out = tmp_path / "stage"
    _stage("stage1a", world, tiny_ckpt, out, sets)
    for leftover in ("checkpoint-2", "model.safetensors", COMPLETE):  # as if killed after checkpoint-1
        path = out / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    # another rate: the optimizer and schedule would continue the old run while the logs show the new rate
    with pytest.raises(RecipeError, match="checkpoint-1 was trained with another recipe .learning_rate differ"):
        _stage("stage1a", world, tiny_ckpt, out, [*sets, "learning_rate=5e-3"])
    assert _stage("stage1a", world, tiny_ckpt, out, [*sets, "save_steps=5"])["resumed_from"] == "checkpoint-1"


def test_half_an_epoch_resumed_at_its_last_step_takes_no_step_more(world, tiny_ckpt, tmp_path):
    out = tmp_path / "stage"
    first = _stage("stage1a", world, tiny_ckpt, out, ["epochs=0.5"])
    last = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert last.name == f"checkpoint-{first['global_step']}"  # the stage's end, mid-epoch
    (out / "model.safetensors").unlink()  # as if killed after its last checkpoint
    (out / COMPLETE).unlink()
    again = _stage("stage1a", world, tiny_ckpt, out, ["epochs=0.5"])
    assert again["global_step"] == first["global_step"] and again["resumed_from"] == last.name


def test_checkpoints_keep_the_stages_processor(world, tiny_ckpt, tmp_path):
    out = tmp_path / "stage"
    _stage("stage1a", world, tiny_ckpt, out, ["max_steps=1", "save_steps=1", "max_length=512"])
    final = TinyGroundingGPTProcessor.from_pretrained(out)
    saved = TinyGroundingGPTProcessor.from_pretrained(out / "checkpoint-1")
    assert saved.to_dict() == final.to_dict()
    assert (saved.image_size, saved.max_length) == (64, 512)  # not the defaults (336 px, 2048)


def test_weight_decay_spares_biases_and_norms_and_keeps_module_learning_rates(world, tiny_ckpt, tmp_path):
    capture = _Capture()
    sets = ["max_steps=1", "weight_decay=0.1", "learning_rate=1e-3", "module_learning_rates={projector: 2e-3}"]
    _stage("stage1b", world, tiny_ckpt, tmp_path / "stage", sets, callbacks=[capture])
    role = {id(p): (m, n) for m in capture.model.modules() for n, p in m.named_parameters(recurse=False)}
    groups = capture.optimizer.param_groups
    # the LLM's and the projector's rates, each for a decayed and a spared group
    expected = [(1e-3, 0.0), (1e-3, 0.1), (2e-3, 0.0), (2e-3, 0.1)]
    assert sorted((g["initial_lr"], g["weight_decay"]) for g in groups) == expected
    for group in groups:
        for p in group["params"]:
            module, name = role[id(p)]
            spared = name == "bias" or "Norm" in type(module).__name__  # LayerNorm, Qwen2RMSNorm
            assert (group["weight_decay"] == 0.0) == spared, (type(module).__name__, name, group["weight_decay"])
    assert type(capture.optimizer.optimizer) is torch.optim.AdamW and not groups[0]["fused"]
    # another optimiser asked for is used, with the same groups
    _stage("stage1b", world, tiny_ckpt, tmp_path / "sgd", sets, callbacks=[capture], optim="sgd")
    assert type(capture.optimizer.optimizer) is torch.optim.SGD and len(capture.optimizer.param_groups) == 4


def test_the_logged_learning_rate_is_the_recipes_and_module_rates_are_logged_by_name(world, tiny_ckpt, tmp_path):
    sets = ["max_steps=2", "logging_steps=1", "learning_rate=1e-3", "module_learning_rates={projector: 4e-3}"]
    report = _stage("stage1b", world, tiny_ckpt, tmp_path / "stage", sets)
    logged = [e for e in report["log_history"] if "loss" in e]
    assert len(logged) == 2
    for entry in logged:  # the projector's group comes first; its rate was logged as the stage's
        assert entry["learning_rate_projector"] == pytest.approx(4 * entry["learning_rate"])
    assert 0 < logged[0]["learning_rate"] <= 1e-3


def test_a_bf16_model_trains_float32_master_weights(world, tiny_ckpt, tmp_path):
    model, _ = load_checkpoint(tiny_ckpt)
    model.to(torch.bfloat16)  # as a paper preset assembles
    capture = _Capture()
    _stage("stage1b", world, tiny_ckpt, tmp_path / "stage", ["max_steps=1"], model=model, callbacks=[capture])
    trained = {n.split(".")[0]: dtype for n, dtype in capture.dtypes.items() if not n.startswith("vision_tower")}
    assert set(trained.values()) == {torch.float32}
    assert {p.dtype for p in model.vision_tower.parameters()} == {torch.bfloat16}  # frozen: left as it was
    assert {p.dtype for group in capture.optimizer.param_groups for p in group["params"]} == {torch.float32}


def _final_weights(out):
    return load_file(out / "model.safetensors")


def test_a_resume_restores_a_trained_vision_tower_saved_under_dinov2s_published_names(world, tiny_ckpt, tmp_path):
    # transformers 5 saves DINOv2's attention as attention.attention.query (its published names) and its Trainer
    # resumed by loading them raw: the trained tower went back to where the stage began
    sets = ["max_steps=4", "save_steps=2", "logging_steps=1", "modules.vision_tower=full", "learning_rate=1e-3"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _stage("stage1b", world, tiny_ckpt, full, sets)
    _stage("stage1b", world, tiny_ckpt, resumed, sets)
    for leftover in ("checkpoint-4", "model.safetensors", COMPLETE):  # as if killed after checkpoint-2
        path = resumed / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    report = _stage("stage1b", world, tiny_ckpt, resumed, sets)
    assert report["resumed_from"] == "checkpoint-2"
    a, b = _final_weights(full), _final_weights(resumed)
    assert any("attention.attention.query" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)


def test_rerunning_a_finished_stage_trains_no_further_and_reports_the_whole_stage(world, tiny_ckpt, tmp_path):
    sets = ["max_steps=3", "save_steps=3", "logging_steps=1", "schedule=constant"]
    out = tmp_path / "stage"
    first = _stage("stage1a", world, tiny_ckpt, out, sets)
    weights = _final_weights(out)
    again = _stage("stage1a", world, tiny_ckpt, out, sets)  # a rerun, or a kill during the stage's final save
    assert again["global_step"] == 3 and not (out / "checkpoint-4").exists()
    assert again["train_loss"] == pytest.approx(first["train_loss"])
    steps = [e["loss"] for e in first["log_history"] if "loss" in e]
    assert first["train_loss"] == pytest.approx(sum(steps) / len(steps))
    for k, v in _final_weights(out).items():
        assert torch.equal(v, weights[k]), k
    longer = _stage("stage1a", world, tiny_ckpt, out, ["max_steps=5", *sets[1:]])  # asked for more: it goes on
    assert longer["global_step"] == 5 and longer["resumed_from"] == "checkpoint-3"


def test_module_gradient_norms_are_the_steps_whatever_the_accumulation(world, tiny_ckpt, tmp_path):
    sets = ["max_steps=1", "logging_steps=1", "batch_size=4", "modules.vision_tower=full"]
    norms = []
    for accumulation in (1, 2, 4):
        report = _stage("stage1b", world, tiny_ckpt, tmp_path / f"ga{accumulation}",
                        [*sets, f"gradient_accumulation={accumulation}"])  # fmt: skip
        (logged,) = [e for e in report["log_history"] if "loss" in e]
        norms.append((logged["grad_norm_projector"], logged["grad_norm_vision_tower"], logged["grad_norm"]))
    for got in norms[1:]:  # one optimiser step over the same 4 samples: the same gradients
        for a, b in zip(norms[0], got, strict=True):
            assert a == pytest.approx(b, rel=1e-3)
