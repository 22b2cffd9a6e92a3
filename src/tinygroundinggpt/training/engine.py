"""The training engine: transformers' ``Trainer`` with what grounding models need on top.

* per-module modes from the recipe (frozen / full / LoRA through peft) and per-module learning rates;
* length-grouped batches from lengths known before decoding images (little compute spent on padding);
* logged health signals: tokens/s, padding fraction, the norms of projected visual features against
  text embeddings, and the gradient norms of the projector and of any trainable vision module once per
  optimiser step (not under DeepSpeed, whose gradients accelerate consumes inside backward; a from-scratch prototype
  failed silently when visual norms exploded and vision gradients vanished);
* checkpoints that count only once complete (a marker written by atomic rename after the Trainer has
  saved everything), so a run killed during a save resumes from the previous good one;
* the same entry point under one CPU process, ``torchrun``, ``accelerate launch`` or ``deepspeed``.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerState, TrainingArguments

from tinygroundinggpt.model import TinyGroundingGPTForConditionalGeneration, TinyGroundingGPTProcessor
from tinygroundinggpt.model.expansion import expand_language_model
from tinygroundinggpt.training.data import BATCH_INFO, Collator, EpochLengthGroupedSampler, MixtureDataset, stable_seed
from tinygroundinggpt.training.recipe import MODULES, Recipe, RecipeError

logger = logging.getLogger(__name__)
COMPLETE = "COMPLETE"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _mark_complete(folder: Path, info: dict[str, Any]) -> None:
    """Write ``folder``'s marker once everything in it is on disk: the files are flushed first, so a machine that
    loses power cannot keep a marker whose weights were still in the page cache."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
    tmp = folder / f".{COMPLETE}.tmp"
    with tmp.open("w") as fh:
        fh.write(json.dumps(info))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / COMPLETE)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX: the directory entry is data of the folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / COMPLETE).is_file()


def _forget_earlier_run(output_dir: Path, fresh: bool) -> None:
    """Untrust what an earlier run left in ``output_dir`` before this one writes there: its stage marker always (a
    rerun killed midway must not pass for finished), and with ``fresh`` its checkpoints too (the new run's saves
    would mix with them, and a resume would continue the old run from its newest one)."""
    (output_dir / COMPLETE).unlink(missing_ok=True)
    if fresh and output_dir.is_dir():
        for p in output_dir.iterdir():
            if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name):
                shutil.rmtree(p)


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` that was saved to the end (incomplete ones are ignored)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = []
    for p in folder.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and is_complete(p):
            found.append((int(m.group(1)), p))
    return str(max(found)[1]) if found else None


def apply_module_modes(model: TinyGroundingGPTForConditionalGeneration, recipe: Recipe) -> None:
    """Freeze, unfreeze or LoRA-wrap each top-level module as the recipe says."""
    for name in MODULES:
        mode = recipe.mode(name)
        module = getattr(model, name)
        if mode == "lora":
            if name != "language_model":
                raise RecipeError(f"recipe {recipe.name}: LoRA is supported for the language_model, not {name}")
            from peft import LoraConfig, get_peft_model

            module.requires_grad_(False)
            cfg = LoraConfig(
                r=int(recipe.lora["r"]),
                lora_alpha=int(recipe.lora["alpha"]),
                lora_dropout=float(recipe.lora["dropout"]),
                target_modules=LORA_TARGETS,
                task_type="CAUSAL_LM",
            )
            model.language_model = get_peft_model(module, cfg)
        else:
            module.requires_grad_(mode == "full")
            if name == "vision_tower" and mode == "full":  # no gradient ever reaches these (DDP would stall)
                unused = set(module.unused_parameters())
                for pname, param in module.named_parameters():
                    if pname in unused:
                        param.requires_grad_(False)


def merge_lora(model: TinyGroundingGPTForConditionalGeneration) -> None:
    """Fold LoRA weights back so each stage's output is an ordinary checkpoint."""
    if hasattr(model.language_model, "merge_and_unload"):
        model.language_model = model.language_model.merge_and_unload()


class _Health:
    """Running sums of the signals logged every ``logging_steps``."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        # this rank's sums since the last log; tokens and the norm sum stay tensors on the device (reading them every
        # micro-batch would wait for the GPU), summed over the ranks when logged
        self.tokens: torch.Tensor | int = 0
        self.slots = 0
        self.visual_norm_sum: torch.Tensor | float = 0.0
        self.visual_norm_n = 0
        self.grad_norms: dict[str, list[float]] = {}
        self.t0 = time.perf_counter()


class GroundingTrainer(Trainer):
    """``Trainer`` plus per-epoch length grouping of a :class:`MixtureDataset`, module learning rates and health
    logs."""

    def __init__(self, *args: Any, recipe: Recipe, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recipe = recipe
        self.health = _Health()
        self.trained_indices: list[int] = []  # positions (within their epoch) this process trained on: sharding audit
        self.replaced: dict[tuple[str, str, str], None] = {}  # (file:line, sample id, problem), in order
        base = self.model.module if hasattr(self.model, "module") else self.model
        base.projector.register_forward_hook(self._record_visual_norm)
        if self.is_deepspeed_enabled:
            # accelerate steps DeepSpeed's optimiser inside backward; its gradients are gone before any callback
            logger.warning("under DeepSpeed only the whole model's grad_norm is logged, not the projector's own")
        else:
            self.add_callback(_ModuleGradNorms(self))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        weights = Path(resume_from_checkpoint) / "model.safetensors"
        if self.is_fsdp_enabled or not weights.is_file():  # FSDP's sharded state keeps the names in memory
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        # transformers 5 saves a checkpoint under the published checkpoints' key names (DINOv2's
        # attention.attention.query for attention.q_proj) and its Trainer resumes by loading them raw and non-strict:
        # renamed weights silently kept the values the stage started from (transformers #43701). Renamed back here;
        # a weight still unmatched stops the resume.
        from safetensors.torch import load_file
        from transformers.core_model_loading import revert_weight_conversion

        model = model or self.model
        state = model.state_dict()
        name_of = {id(v): k for k, v in state.items()}
        reverted = revert_weight_conversion(model, dict(state))  # saved name: the same tensor
        saved_as = {saved: name_of.get(id(v), saved) for saved, v in reverted.items()}
        loaded = {saved_as.get(k, k): v for k, v in load_file(weights).items()}
        result = model.load_state_dict(loaded, strict=False)
        given = {state[k].data_ptr() for k in loaded if k in state}
        missing = [k for k in result.missing_keys if state[k].data_ptr() not in given]  # tied weights came along
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"{weights} does not fit the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )

    def _record_visual_norm(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if module.training:
            self.health.visual_norm_sum = self.health.visual_norm_sum + output.detach().float().norm(dim=-1).mean()
            self.health.visual_norm_n += 1

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not isinstance(dataset, MixtureDataset):
            return super()._get_train_sampler(train_dataset)
        # Group by the *global* batch so the order, and each optimiser step's samples, do not depend on
        # how many processes share the batch.
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return EpochLengthGroupedSampler(dataset, batch)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """``args.optim`` over one group per module (its own learning rate) and decay rule: as the Trainer does,
        biases, norms and the parameters ``get_decay_parameter_names`` leaves out get no weight decay."""
        if self.optimizer is None:
            base = self.model.module if hasattr(self.model, "module") else self.model
            decay = set(self.get_decay_parameter_names(base))
            groups = []
            for name in MODULES:
                named = [(n, p) for n, p in base.named_parameters() if n.split(".")[0] == name and p.requires_grad]
                lr = self.recipe.module_learning_rates.get(name, self.args.learning_rate)
                for weight_decay, params in (
                    (self.args.weight_decay, [p for n, p in named if n in decay]),
                    (0.0, [p for n, p in named if n not in decay]),
                ):
                    if params:
                        groups.append({"params": params, "lr": lr, "weight_decay": weight_decay})
            if not groups:
                raise RecipeError(f"recipe {self.recipe.name} trains no parameters")
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, base)
            if {"params", "model", "optimizer_dict"} & set(kwargs):
                raise RecipeError(f"optim {self.args.optim} chooses its own parameters; per-module rates need groups")
            self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        # The Trainer saves into an existing checkpoint-N in place: a kill midway must not leave it marked complete.
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            (folder / COMPLETE).unlink(missing_ok=True)
        super()._save_checkpoint(model, trial)

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        mask = inputs["attention_mask"]
        self.health.tokens = self.health.tokens + mask.sum()
        self.health.slots += mask.numel()
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        info = inputs.pop(BATCH_INFO, None)
        if info:
            self.trained_indices += info["indices"]
            self.replaced.update(dict.fromkeys(tuple(r) for r in info["replaced"]))  # once each, whatever the epochs
        return super().training_step(model, inputs, num_items_in_batch)

    def record_module_grad_norms(self) -> None:
        """The projector's and any trained vision module's gradient norm, once per optimiser step: the accumulated
        gradients, after clipping (``grad_norm``, the Trainer's, is the whole model's before it)."""
        base = self.model.module if hasattr(self.model, "module") else self.model
        for name in ("projector", "vision_tower"):
            grads = [p.grad for p in getattr(base, name).parameters() if p.requires_grad and p.grad is not None]
            if grads:
                norm = float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])))
                self.health.grad_norms.setdefault(name, []).append(norm)

    def _log_learning_rates(self, logs: dict[str, float]) -> None:
        """The Trainer logs the first optimizer group's rate, which may be a module's own (the projector's): log the
        recipe's rate as ``learning_rate`` and each trained module's own rate by name. Every group follows one schedule,
        so the rates now are the configured ones times the schedule's factor (any group's ``lr / initial_lr``)."""
        started = [g for g in self.optimizer.param_groups if g.get("initial_lr")]
        if not started:
            return
        factor = started[0]["lr"] / started[0]["initial_lr"]
        logs["learning_rate"] = self.args.learning_rate * factor
        for module, rate in self.recipe.module_learning_rates.items():
            if self.recipe.mode(module) != "frozen":
                logs[f"learning_rate_{module}"] = rate * factor

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        h = self.health
        if "loss" in logs:  # every rank logs at the same step (the loss is gathered first): sum the ranks' counts
            sums = [h.tokens, h.slots, h.visual_norm_sum, h.visual_norm_n]
            exact = torch.float32 if self.args.device.type == "mps" else torch.float64  # MPS has no float64
            totals = torch.stack([torch.as_tensor(x, dtype=exact, device=self.args.device) for x in sums])
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(totals)
            tokens, slots, norm_sum, norm_n = totals.tolist()
        if "loss" in logs and slots:
            elapsed = max(time.perf_counter() - h.t0, 1e-9)
            logs["tokens"] = int(tokens)  # not padding, over every rank
            logs["tokens_per_s"] = round(tokens / elapsed, 1)
            logs["padding_fraction"] = round(1 - tokens / slots, 4)
            base = self.model.module if hasattr(self.model, "module") else self.model
            emb = base.get_input_embeddings().weight
            if emb.numel():  # ZeRO-3 leaves partitioned (empty) tensors here
                logs["text_embed_norm"] = round(float(emb.detach().float().norm(dim=-1).mean()), 4)
            if norm_n:
                logs["visual_feature_norm"] = round(norm_sum / norm_n, 4)
            for name, vals in h.grad_norms.items():
                logs[f"grad_norm_{name}"] = float(f"{sum(vals) / len(vals):.4g}")
            h.reset()
        if "learning_rate" in logs and self.optimizer is not None:
            self._log_learning_rates(logs)
        super().log(logs, *args, **kwargs)


class _ModuleGradNorms(TrainerCallback):
    """Calls :meth:`GroundingTrainer.record_module_grad_norms` when a step's gradients are whole: before the optimiser
    steps (after every micro-batch they would be partial sums under gradient accumulation)."""

    def __init__(self, trainer: GroundingTrainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.record_module_grad_norms()


# what a resume may change: how often it logs and saves, and how far it goes (a finished stage asked for more)
_RESUMABLE_CHANGES = ("logging_steps", "save_steps", "max_steps", "epochs")


def recipe_fingerprint(recipe: Recipe) -> dict[str, Any]:
    """The recipe as a checkpoint records it, less what a resume may change."""
    return json.loads(json.dumps({k: v for k, v in recipe.to_dict().items() if k not in _RESUMABLE_CHANGES}))


def _check_resumable(checkpoint: str, recipe: Recipe) -> None:
    """Refuse to continue a checkpoint trained with another recipe (another rate or seed, say): the optimizer and
    schedule would bring back the old run while the logs showed the new one. Markers from before this check hold
    no recipe and pass."""
    saved = json.loads((Path(checkpoint) / COMPLETE).read_text()).get("recipe")
    now = recipe_fingerprint(recipe)
    if saved is not None and saved != now:
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise RecipeError(
            f"{checkpoint} was trained with another recipe ({', '.join(changed)} differ): rerun with --no-resume "
            "to start the stage again, or give another output folder"
        )


class _CompleteMarker(TrainerCallback):
    """Mark ``checkpoint-N`` complete once the Trainer has written all of it, with the stage's training time so far
    (``elapsed_before``: what the checkpoint resumed from had recorded), so a stage resumed after a kill reports the
    time its steps took, not only the last run's."""

    def __init__(self, elapsed_before: float, t0: float, recipe: dict[str, Any] | None = None) -> None:
        self.elapsed_before, self.t0, self.recipe = elapsed_before, t0, recipe

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def on_save(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                info = {"global_step": state.global_step, "elapsed_seconds": self.elapsed(), "recipe": self.recipe}
                _mark_complete(folder, info)


def _on_every_rank(items: list[tuple]) -> list[tuple]:
    """``items`` of every rank, in rank order, each once (each rank replaces the bad samples of its own batches)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return items
    gathered: list[list[tuple] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, items)
    return list(dict.fromkeys(tuple(x) for part in gathered for x in part or ()))


def _any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on any rank (each rank's loss covers its own batches: they can disagree)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    t = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def finish_distributed() -> None:
    """Wait for every rank, then tear the process group down: a rank leaving early while rank 0 still
    saves was seen to abort at exit ("terminate called without an active exception"). It was seen once more in CI
    after the barrier; the likely cause: the finished Trainer's DDP model sits in reference cycles, and collected only
    at interpreter shutdown its Gloo work releases tensors when the GIL can no longer be taken. So collect it first."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        gc.collect()
        torch.distributed.destroy_process_group()


def devices_sharing_the_batch() -> int:
    """How many processes share the global batch. One process that sees several GPUs is refused: the Trainer would
    run DataParallel, which splits the batch's stacked object images by rows, away from their placeholder tokens."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if torch.cuda.device_count() > 1:
        raise RecipeError(
            f"one process sees {torch.cuda.device_count()} GPUs: launch one process per GPU (torchrun, accelerate "
            "launch, deepspeed) or make one GPU visible (CUDA_VISIBLE_DEVICES)"
        )
    return 1


def per_device_batch(recipe: Recipe, devices: int) -> int:
    """The per-device batch that makes the recipe's batch the global one on ``devices`` devices."""
    per_device, rem = divmod(recipe.batch_size, devices * recipe.gradient_accumulation)
    if rem or per_device == 0:
        raise RecipeError(
            f"batch_size {recipe.batch_size} is not divisible by {devices} devices × "
            f"{recipe.gradient_accumulation} accumulation steps"
        )
    return per_device


def loader_workers_per_rank() -> int:
    """Image loaders per rank on a GPU machine: a small model's step outruns one loader, so half the cores load."""
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, (os.cpu_count() or 2) // (2 * ranks_here)))


def training_arguments(recipe: Recipe, output_dir: str | Path, **extra: Any) -> TrainingArguments:
    """The recipe as ``TrainingArguments``; the recipe's batch size is the global batch."""
    per_device = per_device_batch(recipe, devices_sharing_the_batch())
    cuda = torch.cuda.is_available()
    args: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=recipe.gradient_accumulation,
        learning_rate=recipe.learning_rate,
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps,
        warmup_steps=recipe.warmup,
        weight_decay=recipe.weight_decay,
        lr_scheduler_type=recipe.schedule,
        bf16=recipe.bf16 and cuda and torch.cuda.is_bf16_supported(),
        tf32=True if (recipe.tf32 and cuda and torch.cuda.get_device_capability()[0] >= 8) else None,
        logging_steps=recipe.logging_steps,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=2,
        seed=recipe.seed,
        data_seed=recipe.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0 if not cuda else loader_workers_per_rank(),
        report_to="none",
        use_cpu=not cuda,
        # unfused AdamW, what the recipes were tuned and the shipped checkpoint trained with (the 5.x default is fused,
        # which rounds differently)
        optim="adamw_torch",
        ddp_find_unused_parameters=False,
        logging_nan_inf_filter=False,  # a diverged step shows in the logs and the stage loss, not averaged away
    )
    if recipe.gradient_checkpointing:  # renamed activation_checkpointing in later 5.x; the old name still works
        args["gradient_checkpointing"] = True
    args.update(extra)
    return TrainingArguments(**args)


def _check_fsdp_applies(trainer: Trainer) -> None:
    """``accelerate launch`` with an FSDP config sets ACCELERATE_USE_FSDP, but accelerate shards only accelerator
    processes started by a distributed launcher: CPU processes it trains as DDP (and a GPU process started without a
    launcher unsharded) without a word. Say so before training."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not trainer.is_fsdp_enabled:
        raise RecipeError(
            "FSDP was asked for (ACCELERATE_USE_FSDP=true, an FSDP accelerate config) but accelerate runs this "
            f"launch as {trainer.accelerator.distributed_type.value}: it applies FSDP only to GPU processes started by "
            "a launcher. Use accelerate launch (or torchrun) with one process per GPU, or drop the FSDP config on CPU"
        )


def _reached_its_end(checkpoint: str | Path, args: TrainingArguments) -> bool:
    """Whether ``checkpoint`` holds this run's last step. A run can end mid-epoch (``max_steps``, or a fraction of an
    epoch: the Trainer then counts its steps as ``max_steps``), where the Trainer's resume would take one step more.
    A run of whole epochs ends with an epoch and the Trainer's resume takes no step; one of a fractional count has
    reached its end when the checkpoint's epoch count (steps / steps per epoch) has."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    if args.max_steps > 0:
        return state["global_step"] >= args.max_steps
    if args.num_train_epochs == int(args.num_train_epochs):
        return False
    return float(state.get("epoch") or 0.0) >= args.num_train_epochs - 1e-6


def stage_loss(log_history: list[dict[str, Any]]) -> float | None:
    """A resumed stage's mean training loss, from the losses logged before and after the resume (each weighted by the
    steps it averages, so up to the last logged step); None when none was logged."""
    total = steps = last = 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - last)
            steps += entry["step"] - last
            last = entry["step"]
    return total / steps if steps else None


def train_stage(
    recipe: Recipe,
    model: TinyGroundingGPTForConditionalGeneration,
    processor: TinyGroundingGPTProcessor,
    output_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    resume: bool = True,
    callbacks: list[TrainerCallback] | None = None,
    **training_kwargs: Any,
) -> dict[str, Any]:
    """Run one stage; the trained model and processor are saved to ``output_dir`` (ordinary checkpoint).

    ``resume`` continues from the newest complete checkpoint in ``output_dir``; without it the checkpoints an earlier
    run left there are deleted. Returns the stage report (loss history, data mixture, skipped samples, wall time).
    """
    output_dir = Path(output_dir)
    t0 = time.perf_counter()
    processor.max_length = recipe.max_length
    processor.object_margin = float(recipe.object_augment.get("margin", 0.0))
    processor.object_jitter = float(recipe.object_augment.get("jitter", 0.0))
    # the stage's name in the data seed: stages sharing files and a seed take different shares of a fractional weight
    seed = stable_seed(recipe.seed, recipe.name)
    dataset = MixtureDataset(recipe.data, processor, data_root, augment=bool(recipe.object_augment), seed=seed)
    expanded = expand_language_model(model, recipe.language_model_layers) if recipe.language_model_layers else []
    if expanded:
        logger.info(
            "%s: language model grown to %d layers (new: %s)",
            recipe.name,
            len(model.language_model.model.layers),
            expanded,
        )
    apply_module_modes(model, recipe)
    args = training_arguments(recipe, output_dir, **training_kwargs)
    with args.main_process_first(desc="clearing the earlier run"):
        if args.should_save:
            _forget_earlier_run(output_dir, fresh=not resume)
    checkpoint = last_complete_checkpoint(output_dir) if resume else None
    if checkpoint:
        _check_resumable(checkpoint, recipe)
    # markers written before checkpoints recorded their time count as none
    before = json.loads((Path(checkpoint) / COMPLETE).read_text()).get("elapsed_seconds", 0.0) if checkpoint else 0.0
    marker = _CompleteMarker(before, t0, recipe_fingerprint(recipe))
    trainer = GroundingTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=Collator(processor),
        processing_class=processor,  # saved with every checkpoint: its image size and token counts fit the model
        recipe=recipe,
        callbacks=[marker, *(callbacks or [])],
    )
    _check_fsdp_applies(trainer)
    if not trainer.is_deepspeed_enabled:
        # Optimiser steps on bf16 weights lose small updates (a paper preset assembles in bf16): train fp32 master
        # weights; bf16 comes from the Trainer's autocast. DeepSpeed keeps its own fp32 copy.
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    saved_at_end = None  # under DeepSpeed: the checkpoint whose weights are the stage's, copied as they are
    if checkpoint and _reached_its_end(checkpoint, args):
        # Trainer would take one more step from a checkpoint of the stage's last step (a rerun of a finished stage,
        # or a kill during its final save): load it and save the stage instead
        logger.info("%s: %s is the stage's last step; saving it", recipe.name, checkpoint)
        if trainer.is_deepspeed_enabled:  # no engine without train(): the checkpoint's gathered weights are the save
            if recipe.mode("language_model") == "lora":
                raise RecipeError(f"{checkpoint} holds LoRA adapters under DeepSpeed: rerun the stage with --no-resume")
            saved_at_end = Path(checkpoint)
        else:
            trainer._load_from_checkpoint(checkpoint)
        trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
        train_loss = stage_loss(trainer.state.log_history)
    else:
        if checkpoint:
            logger.info("resuming %s from %s", recipe.name, checkpoint)
        result = trainer.train(resume_from_checkpoint=checkpoint)
        # Trainer's own figure counts only the steps since a resume
        train_loss = stage_loss(trainer.state.log_history) if checkpoint else result.training_loss
    merge_lora(model)
    # inference defaults: no augmentation, the recipe's length limit kept
    processor.object_margin = processor.object_jitter = 0.0
    report = {
        "stage": recipe.name,
        "recipe": recipe.to_dict(),
        "train_loss": train_loss,
        "global_step": trainer.state.global_step,
        "expanded_layers": expanded,
        "log_history": trainer.state.log_history,
        "data": dataset.report.counts,
        "skipped": [list(s) for s in dataset.report.skipped],
        "replaced": [list(s) for s in _on_every_rank(list(trainer.replaced))],  # rank 0 writes the report
        "wall_seconds": round(marker.elapsed(), 1),
        "resumed_from": Path(checkpoint).name if checkpoint else None,
    }
    rank = trainer.args.process_index
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"data_rank{rank}.json").write_text(
        json.dumps({"rank": rank, "world_size": trainer.args.world_size, "indices": trainer.trained_indices})
    )
    if trainer.is_fsdp_enabled:  # checkpoints may stay sharded; the stage's model must load with from_pretrained
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    if saved_at_end is not None:
        if trainer.is_world_process_zero():
            for f in saved_at_end.iterdir():
                if f.is_file() and (f.name.startswith("model") or f.name in ("config.json", "generation_config.json")):
                    shutil.copy2(f, output_dir / f.name)
            processor.save_pretrained(str(output_dir))
    else:  # every rank: ZeRO-3/FSDP gather the weights collectively; rank 0 writes the processor with them
        trainer.save_model(str(output_dir))
    if _any_rank(train_loss is not None and not math.isfinite(train_loss), trainer.args.device):
        # never marked complete, so a chain rerun does not start the next stage from it
        raise FloatingPointError(
            f"stage {recipe.name} ended with a non-finite loss ({train_loss} on this rank); its checkpoints "
            f"in {output_dir} hold the diverged run: delete them to train the stage again"
        )
    if trainer.is_world_process_zero():
        if not any(output_dir.glob("model*.safetensors")):
            raise RuntimeError(f"stage {recipe.name}: saving wrote no model weights to {output_dir}")
        (output_dir / "train_report.json").write_text(json.dumps(report, indent=2, default=str))
        _mark_complete(output_dir, {"stage": recipe.name, "global_step": trainer.state.global_step})
    return report
