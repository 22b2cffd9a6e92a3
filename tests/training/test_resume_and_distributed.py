"""Kill-and-resume and multi-process runs of the real CLI on CPU (gloo): DDP under torchrun, DeepSpeed ZeRO-2 and
ZeRO-3, and FSDP2 from the shipped accelerate config."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")


def _train_cmd(world, ckpt, out, *extra):
    return [
        "-m", "tinygroundinggpt.cli", "train", "--recipe", "stage2", "--preset", "1.5b",
        "--init", str(ckpt), "--data-root", str(world), "--out", str(out),
        "--set", "batch_size=4", "--set", "max_steps=8", "--set", "save_steps=4", "--set", "logging_steps=1",
        "--set", "learning_rate=1e-3", "--set", "object_augment={}", *extra,
    ]  # fmt: skip


def _losses(out: Path) -> dict[int, float]:
    report = json.loads((out / "train_report.json").read_text())
    return {e["step"]: e["loss"] for e in report["log_history"] if "loss" in e}


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


# 6 + 6 samples: 3 steps of 4 an epoch, so the kill after step 4 resumes inside the second epoch, whose order,
# augmentation draws and shares of the fractionally weighted files differ from the first epoch's
RESUME_DATA = [
    "--set", "data=[{path: stage2_ic.jsonl, weight: 0.125}, {path: stage2_tc.jsonl, weight: 0.0834}]",
    "--set", "object_augment={margin: 0.1, jitter: 0.05}",
]  # fmt: skip


def test_sigkill_midway_then_resume_matches_uninterrupted(world, tiny_ckpt, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    cmd = [sys.executable, *_train_cmd(world, tiny_ckpt, full, *RESUME_DATA)]
    subprocess.run(cmd, env=ENV, check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, *_train_cmd(world, tiny_ckpt, killed, *RESUME_DATA)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 240
    while not (killed / "checkpoint-4" / "COMPLETE").exists():
        assert proc.poll() is None, "training ended before the first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "COMPLETE").exists()
    # a checkpoint left half-written by the kill would not be resumed from
    (killed / "checkpoint-8").mkdir(exist_ok=True)
    res = subprocess.run(
        [sys.executable, *_train_cmd(world, tiny_ckpt, killed, *RESUME_DATA)], env=ENV, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # the resumed stage reports the time of all its steps: those before the kill (recorded in the checkpoint) too
    before = json.loads((killed / "checkpoint-4" / "COMPLETE").read_text())["elapsed_seconds"]
    resumed = json.loads((killed / "train_report.json").read_text())
    assert resumed["resumed_from"] == "checkpoint-4" and resumed["wall_seconds"] > before > 0
    a, b = _losses(full), _losses(killed)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    report = json.loads((full / "train_report.json").read_text())
    assert sum(report["data"].values()) == 12 and report["log_history"][-1]["epoch"] > 2
    for step in a:
        assert abs(a[step] - b[step]) < 1e-4, (step, a[step], b[step])
    wa, wb = _weights(full), _weights(killed)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-4, rtol=0)


def _two_process(launcher: list[str], cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*launcher, *cmd], env=ENV, capture_output=True, text=True, timeout=timeout)


def _shards(out: Path) -> list[list[int]]:
    return [json.loads((out / f"data_rank{r}.json").read_text())["indices"] for r in range(2)]


def test_two_process_torchrun_matches_one_process(world, tiny_ckpt, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    cmd = _train_cmd(world, tiny_ckpt, one, "--set", "max_steps=4")
    subprocess.run([sys.executable, *cmd], env=ENV, check=True, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531"]
    res = _two_process(torchrun, _train_cmd(world, tiny_ckpt, two, "--set", "max_steps=4"))
    assert res.returncode == 0, res.stderr[-4000:]
    a, b = _losses(one), _losses(two)
    assert sorted(a) == sorted(b)
    for step in a:
        assert abs(a[step] - b[step]) < 2e-3 * max(1.0, abs(a[step])), (step, a[step], b[step])
    r0, r1 = _shards(two)
    assert set(r0).isdisjoint(r1), "both ranks trained on the same samples"
    single = json.loads((one / "data_rank0.json").read_text())["indices"]
    assert sorted(r0 + r1) == sorted(single)  # together the ranks saw exactly the one-process batches
    # the logged token counts are the whole global batch's, summed over the ranks, not rank 0's
    logged = [
        [e["tokens"] for e in json.loads((o / "train_report.json").read_text())["log_history"] if "tokens" in e]
        for o in (one, two)
    ]
    assert logged[0] == logged[1] and len(logged[0]) == 4


def test_two_processes_train_when_a_rank_has_no_image(world, tiny_ckpt, tmp_path):
    # Text-only samples (LLaVA's mixture has them) leave ranks without images; under DDP / ZeRO-3 / FSDP each rank then
    # runs the vision tower and projector on a zero-weighted dummy. Without it the rank with text only never readies
    # the projector's gradients, the ranks' all-reduces stop matching and the run hangs (seen under gloo): a timeout.
    chat = {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]}
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"id": f"text-{i}", **chat}) + "\n" for i in range(16)))
    data = f"data=[{{path: {tmp_path / 'text.jsonl'}, weight: 1.0}}, {{path: stage2_tc.jsonl, weight: 0.2}}]"
    out = tmp_path / "two"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29535"]
    res = _two_process(torchrun, _train_cmd(world, tiny_ckpt, out, "--set", "max_steps=4", "--set", data), timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    losses = _losses(out)
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in losses.values())
    report = json.loads((out / "train_report.json").read_text())
    assert report["data"][str(tmp_path / "text.jsonl")] == 16 and not report["skipped"]
    # the 16 text samples come first in the mixture: in some step one rank had text only while the other had images
    r0, r1 = ([r[k : k + 2] for k in range(0, len(r), 2)] for r in _shards(out))
    assert any(all(i < 16 for i in a) != all(i < 16 for i in b) for a, b in zip(r0, r1, strict=True)), (r0, r1)


def test_two_processes_train_the_vision_tower(world, tiny_ckpt, tmp_path):
    # DDP stops at the second step on a parameter no gradient reaches (CLIP's layers past its feature layer, its
    # post-LayerNorm, DINOv2's mask token): a trained tower freezes exactly those
    out = tmp_path / "two"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29537"]
    cmd = _train_cmd(world, tiny_ckpt, out, "--set", "max_steps=2", "--set", "modules.vision_tower=full")
    res = _two_process(torchrun, cmd, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    before, after = load_file(tiny_ckpt / "model.safetensors"), _weights(out)
    changed = {k for k in after if k.startswith("vision_tower.") and not torch.equal(before[k], after[k])}
    assert {
        "vision_tower.clip.encoder.layers.0.mlp.fc1.weight",
        "vision_tower.dino.encoder.layer.1.mlp.fc1.weight",
    } <= (changed)
    assert not changed & {"vision_tower.dino.embeddings.mask_token", "vision_tower.clip.post_layernorm.weight"}


def test_two_processes_report_the_bad_samples_of_both_ranks(world, tiny_ckpt, tmp_path):
    # each rank replaces the bad samples of its own batches; rank 0 writes the report, so it must gather them
    samples = [json.loads(line) for line in (world / "stage2_tc.jsonl").read_text().splitlines()[:8]]
    bad = [samples[i]["id"] for i in (1, 3, 4, 6)]
    for s in samples:  # images are found relative to the data file: this one lives elsewhere
        s["image"] = "missing.png" if s["id"] in bad else str(world / s["image"])
    lines = [json.dumps(s) for s in samples]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "two"
    data = f"data=[{{path: {tmp_path / 'data.jsonl'}, weight: 1.0}}]"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29539"]
    res = _two_process(torchrun, _train_cmd(world, tiny_ckpt, out, "--set", "max_steps=2", "--set", data), timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    report = json.loads((out / "train_report.json").read_text())
    assert sorted(r[1] for r in report["replaced"]) == sorted(bad)  # all four, whichever rank drew them
    r0, r1 = _shards(out)
    assert r0 and r1 and set(r0).isdisjoint(r1)


@pytest.mark.skipif(shutil.which("g++") is None, reason="DeepSpeed builds its CPU ops with g++")
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_two_processes_shard_the_data_and_match_one_process(world, tiny_ckpt, tmp_path, stage):
    pytest.importorskip("deepspeed")
    one, out = tmp_path / "one", tmp_path / "ds"
    subprocess.run([sys.executable, *_train_cmd(world, tiny_ckpt, one, "--set", "max_steps=3")], env=ENV, check=True,
                   capture_output=True)  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    res = _two_process(torchrun, _train_cmd(world, tiny_ckpt, out, "--deepspeed", stage, "--set", "max_steps=3"))
    assert res.returncode == 0, res.stderr[-4000:]
    r0, r1 = _shards(out)
    # 3 steps × per-device batch 2 (the DeepSpeed path may fetch one batch ahead)
    assert len(r0) == len(r1) and 6 <= len(r0) <= 8
    assert set(r0).isdisjoint(r1), "DeepSpeed fed every rank the same data"
    a, b = _losses(one), _losses(out)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        assert abs(a[step] - b[step]) < 2e-3 * max(1.0, abs(a[step])), (step, a[step], b[step])
    # ZeRO-3 holds each weight in pieces across the ranks: the stage's save must gather them whole (a DeepSpeed save
    # may add the tied lm_head)
    wa, wb = _weights(one), _weights(out)
    assert set(wa) <= set(wb)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-4, rtol=0)
    # killed after the stage's last checkpoint, before its own save: the rerun saves that checkpoint, no step more
    for leftover in [*out.glob("model*.safetensors"), out / "COMPLETE", out / "train_report.json"]:
        leftover.unlink()
    res = _two_process(torchrun, _train_cmd(world, tiny_ckpt, out, "--deepspeed", stage, "--set", "max_steps=3"))
    assert res.returncode == 0, res.stderr[-4000:]
    assert sorted(_losses(out)) == [1, 2, 3] and json.loads((out / "train_report.json").read_text())["global_step"] == 3
    for k, v in _weights(out).items():
        torch.testing.assert_close(v, wb[k], atol=0, rtol=0)


def _accelerate_fsdp_cpu(tmp_path: Path, port: int) -> list[str]:
    """``accelerate launch`` with the shipped FSDP config, only what two CPU processes need changed (fp32: the CPU
    path has no bf16 autocast here)."""
    import yaml

    import tinygroundinggpt.training

    shipped = Path(tinygroundinggpt.training.__file__).parent / "configs" / "fsdp.yaml"
    config = yaml.safe_load(shipped.read_text())
    config.update(num_processes=2, use_cpu=True, mixed_precision="no", main_process_port=port)
    path = tmp_path / "fsdp_cpu.yaml"
    path.write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path)]


def test_fsdp2_two_processes_match_one_process_and_resume_from_sharded_checkpoint(world, tiny_ckpt, tmp_path):
    one, two = tmp_path / "one", tmp_path / "fsdp"
    subprocess.run([sys.executable, *_train_cmd(world, tiny_ckpt, one, "--set", "max_steps=4")], env=ENV, check=True,
                   capture_output=True)  # fmt: skip
    launch = [*_accelerate_fsdp_cpu(tmp_path, 29537), str(Path(__file__).parent / "fsdp_cpu_launch.py")]
    cmd = _train_cmd(world, tiny_ckpt, two, "--set", "max_steps=4", "--set", "save_steps=2")[2:]  # drop "-m cli"
    res = _two_process(launch, cmd, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    # the mid-stage checkpoints are FSDP's own sharded state (SHARDED_STATE_DICT), not a full copy
    assert (two / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir() and (two / "checkpoint-2" / "optimizer_0").is_dir()
    a, b = _losses(one), _losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert abs(a[step] - b[step]) < 2e-3 * max(1.0, abs(a[step])), (step, a[step], b[step])
    wa, wb = _weights(one), _weights(two)
    for k in wa:  # the stage's final save gathers the full weights (it may add the tied lm_head)
        torch.testing.assert_close(wa[k], wb[k], atol=1e-4, rtol=0)
    r0, r1 = _shards(two)
    assert set(r0).isdisjoint(r1)
    assert sorted(r0 + r1) == sorted(json.loads((one / "data_rank0.json").read_text())["indices"])
    # killed after checkpoint-2: the rerun resumes from the sharded checkpoint and ends where the whole run ended
    for name in ("checkpoint-4", "COMPLETE", "model.safetensors", "train_report.json"):
        shutil.rmtree(two / name) if (two / name).is_dir() else (two / name).unlink()
    res = _two_process(launch, cmd, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert json.loads((two / "train_report.json").read_text())["resumed_from"] == "checkpoint-2"
    wc = _weights(two)
    for k in wa:
        torch.testing.assert_close(wa[k], wc[k], atol=1e-4, rtol=0)


def test_fsdp_config_on_cpu_processes_is_refused_not_run_as_ddp(world, tiny_ckpt, tmp_path):
    # accelerate itself would train the two CPU processes as DDP and say nothing
    launch = [*_accelerate_fsdp_cpu(tmp_path, 29539), "-m"]
    res = _two_process(launch, _train_cmd(world, tiny_ckpt, tmp_path / "out", "--set", "max_steps=2")[1:], timeout=300)
    assert res.returncode != 0
    assert "FSDP was asked for" in res.stderr and "MULTI_CPU" in res.stderr
    assert not (tmp_path / "out" / "COMPLETE").exists()


def test_fsdp2_trains_a_paper_preset_assembled_in_bf16_with_fp32_trainable_weights(world, tmp_path):
    # A paper preset assembles in the LLM's bf16; stage 1a then trains the projector in fp32 beside frozen bf16
    # towers, mixed dtypes inside one FSDP unit (the root). Here from the shipped tiny components, which are bf16.
    from tinygroundinggpt.model.presets import TINY_COMPONENTS

    parts = [a for k in ("clip", "dino", "llm") for a in (f"--{k}", str(TINY_COMPONENTS[k]))]
    cmd = ["train", "--recipe", "stage1a", "--preset", "1.5b", *parts, "--data-root", str(world),
           "--set", "batch_size=4", "--set", "max_steps=2", "--set", "logging_steps=1"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "fsdp"
    subprocess.run([sys.executable, "-m", "tinygroundinggpt.cli", *cmd, "--out", str(one)], env=ENV, check=True,
                   capture_output=True)  # fmt: skip
    launch = [*_accelerate_fsdp_cpu(tmp_path, 29543), str(Path(__file__).parent / "fsdp_cpu_launch.py")]
    res = _two_process(launch, [*cmd, "--out", str(two)], timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    a, b = _losses(one), _losses(two)
    assert sorted(a) == sorted(b) == [1, 2]
    for step in a:  # bf16 towers: the ranks' reductions round differently from one process's
        assert abs(a[step] - b[step]) < 1e-2 * max(1.0, abs(a[step])), (step, a[step], b[step])
    wa, wb = _weights(one), _weights(two)
    assert {k for k, v in wb.items() if v.dtype == torch.float32} == {k for k in wa if k.startswith("projector.")}
    for k in wa:
        torch.testing.assert_close(wa[k].float(), wb[k].float(), atol=2e-3, rtol=0)
