import json
from itertools import pairwise

import pytest
import torch

from tinygroundinggpt.cli import main
from tinygroundinggpt.training.ablations import ABLATIONS, variant_overrides
from tinygroundinggpt.training.chain import load_checkpoint
from tinygroundinggpt.training.engine import (
    devices_sharing_the_batch,
    is_complete,
    loader_workers_per_rank,
    per_device_batch,
    train_stage,
    training_arguments,
)
from tinygroundinggpt.training.recipe import STAGES, RecipeError, chain_stages, load_recipe, stage_recipe


def test_shipped_recipes_hold_the_papers_values():
    r = {s: load_recipe(s) for s in STAGES}
    assert r["stage1a"].learning_rate == 1e-3 and r["stage1a"].mode("language_model") == "frozen"
    assert r["stage1a"].mode("projector") == "full" and r["stage1a"].init == "assemble"
    for s in ("stage1b", "stage2", "stage3"):
        assert r[s].learning_rate == 2e-5 and r[s].mode("language_model") == "full"
    assert [r[s].batch_size for s in STAGES] == [32, 32, 32, 16]
    assert [r[s].epochs for s in STAGES] == [1, 1, 1, 2]
    assert all(r[s].warmup == 0.03 and r[s].weight_decay == 0 and r[s].schedule == "cosine" for s in STAGES)
    assert all(r[s].mode("vision_tower") == "frozen" for s in STAGES)
    assert {d.path for d in r["stage2"].data} == {"stage2_tc.jsonl", "stage2_ic.jsonl", "stage2_ti.jsonl"}


def test_tiny_chain_keeps_the_papers_stages_in_order_and_adds_an_easy_stage_2():
    chain = chain_stages(tiny=True)
    assert chain_stages() == STAGES and [s for s in chain if s in STAGES] == list(STAGES)
    assert chain.index("stage2_easy") == chain.index("stage2") - 1
    easy, stage2 = stage_recipe("stage2_easy", tiny=True), stage_recipe("stage2", tiny=True)
    # a variant of the paper's stage 2 under its own name: same modules, one-object data only
    assert easy.name == "stage2_easy" and easy.modules == stage2.modules == load_recipe("stage2").modules
    assert [d.path for d in easy.data] == ["easy/stage2_tc.jsonl"]
    assert stage_recipe("stage2_easy", ["max_steps=7"], tiny=True).max_steps == 7
    more = stage_recipe("stage2_more", tiny=True)  # stage 2 again, same data, lower learning rate
    assert more.data == stage2.data and more.learning_rate < stage2.learning_rate
    # and again, each part at a lower rate than the one before, then warm restarts at a higher rate, until stage 3
    parts = chain[chain.index("stage2") : chain.index("stage3")]
    assert parts[:2] == ("stage2", "stage2_more") and len(parts) >= 4
    recipes = [stage_recipe(s, tiny=True) for s in parts]
    assert all(r.data == stage2.data and r.modules == stage2.modules for r in recipes)
    restart = next(i for i, s in enumerate(parts) if s.startswith("stage2_restart"))
    rates = [r.learning_rate for r in recipes]
    halving = rates[:restart]
    assert all(later == earlier / 2 for earlier, later in pairwise(halving))
    assert all(halving[-1] < rate < halving[0] for rate in rates[restart:])
    # after stage 3, more warm restarts of stage 2, settling cycles at a lower rate, a second stage-3 pass, and a third
    # mostly on presence questions to end on
    *later, last, presence = chain[chain.index("stage3") + 1 :]
    assert last == "stage3_again" and later and all(s.startswith(("stage2_restart", "stage2_settle")) for s in later)
    rate = {s: stage_recipe(s, tiny=True).learning_rate for s in later}
    settling = [rate[s] for s in later if s.startswith("stage2_settle")]
    assert settling and max(settling) < min(rate[s] for s in later if s.startswith("stage2_restart"))
    again, stage3 = stage_recipe(last, tiny=True), stage_recipe("stage3", tiny=True)
    assert (again.modules, again.learning_rate) == (stage3.modules, stage3.learning_rate)
    assert again.data[:-1] == stage3.data and again.data[-1].path == "stage3_presence.jsonl"  # its mixture and POPE's
    look = stage_recipe(presence, tiny=True)
    assert presence == "stage3_presence"
    assert (look.modules, look.learning_rate) == (stage3.modules, stage3.learning_rate)
    # POPE's questions are the bulk of its data; some REC and instructions keep what the stages before taught
    assert look.data[0].path == "stage3_presence.jsonl" and look.data[0].weight > max(d.weight for d in look.data[1:])
    assert {"stage2_tc.jsonl", "stage3_instruct.jsonl"} <= {d.path for d in look.data}
    for r in (stage_recipe(s, tiny=True) for s in later):
        # stage 2's mixture, the last two pairs' with the world's comparison REC added
        extra = [d.path for d in r.data if d not in stage2.data]
        assert r.data[: len(stage2.data)] == stage2.data and extra in ([], ["stage2_compare.jsonl"])
        assert r.modules == stage2.modules and halving[-1] < r.learning_rate < halving[0]
    grown = [s for s in later if stage_recipe(s, tiny=True).language_model_layers]
    assert grown == ["stage2_restart9"] and stage_recipe(grown[0], tiny=True).language_model_layers == 8
    assert stage_recipe("stage2").learning_rate == 2e-5  # without tiny: the paper's values
    with pytest.raises(RecipeError, match="no recipe"):
        stage_recipe("stage2_easy")  # only the tiny preset has it
    with pytest.raises(RecipeError, match="key=value"):
        stage_recipe("stage2", ["max_steps"], tiny=True)


def test_ablation_variants_drop_their_files_from_every_later_stage_and_keep_the_rest():
    tiny = chain_stages(tiny=True)
    tc_only = variant_overrides(ABLATIONS["table3"]["T,C"], tiny, ["max_steps=3"], tiny=True)
    for stage in tiny:
        recipe = stage_recipe(stage, tc_only[stage], tiny=True)
        assert recipe.max_steps == 3
        names = [d.path for d in recipe.data]
        if stage.startswith("stage2") and stage != "stage2_easy":  # all multi-object stage-2 parts lose them
            # the comparison REC file of the last pair is text-coordinate data too: it stays
            assert names[:2] == ["easy/stage2_tc.jsonl", "stage2_tc.jsonl"] and names[2:] in (
                [],
                ["stage2_compare.jsonl"],
            )
            assert [d.weight for d in recipe.data][:2] == [0.3, 1.0]
        else:
            assert recipe.data == stage_recipe(stage, tiny=True).data
    no_global = variant_overrides(ABLATIONS["table4"]["no global align"], tiny, [], tiny=True)
    # the tiny stage 3 keeps its text-coordinate share: only conversations and descriptions go
    assert [d.path for d in stage_recipe("stage3", no_global["stage3"], tiny=True).data] == [
        "stage3_instruct.jsonl",
        "stage2_tc.jsonl",
        "easy/stage2_tc.jsonl",
    ]
    again = [d.path for d in stage_recipe("stage3_again", no_global["stage3_again"], tiny=True).data]
    assert "stage3_conv.jsonl" not in again and "stage3_desc.jsonl" not in again  # nor the second pass
    paper = variant_overrides(ABLATIONS["table3"]["T,C"], STAGES, [], tiny=False)
    assert [d.path for d in stage_recipe("stage2", paper["stage2"]).data] == ["stage2_tc.jsonl"]
    assert all(paper[s] == [] for s in STAGES if s != "stage2")
    own_data = ['data=[{"path": "stage2_tc.jsonl", "weight": 1.0}]']  # a --set naming none of the dropped files
    with pytest.raises(ValueError, match="nothing to ablate"):
        variant_overrides(ABLATIONS["table3"]["T,C"], tiny, own_data, tiny=True)


def test_overrides_and_errors():
    r = load_recipe("stage2", ["learning_rate=1e-3", "modules.language_model=lora", "max_steps=3"])
    assert r.learning_rate == 1e-3 and r.mode("language_model") == "lora" and r.max_steps == 3
    with pytest.raises(RecipeError, match="unknown recipe key"):
        load_recipe("stage2", ["lr=1"])
    with pytest.raises(RecipeError, match="mode 'half'"):
        load_recipe("stage2", ["modules.projector=half"])
    with pytest.raises(RecipeError, match="no recipe"):
        load_recipe("stage9")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.0.weight=0.5", "override data.0.weight: data is not a mapping"),
        ("learning_rate.projector=1e-3", "learning_rate is not a mapping"),
        ("modules=frozen", "modules must be a mapping, got 'frozen'"),
        ("module_learning_rates=3", "module_learning_rates must be a mapping"),
        ("data=5", "data must be a list of"),
        ("data=[{file: a.jsonl}]", r"data\[0\] must be \{path: FILE, weight: W\}"),
        ("data=[{path: a.jsonl, weight: -0.5}]", r"data\[0\].weight must be 0 or more, got -0.5"),
        ("max_steps=abc", "max_steps must be a number, got 'abc'"),
        ("module_learning_rates={projector: fast}", "module_learning_rates.projector must be a number"),
    ],
)
def test_a_bad_override_is_a_recipe_error_naming_it(override, message):
    # these crashed with AttributeError / TypeError tracebacks, or named no key
    with pytest.raises(RecipeError, match=message):
        load_recipe("stage2", [override])


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "stage,trained",
    [
        ("stage1a", {"projector"}),
        ("stage1b", {"projector", "language_model"}),
        ("stage2", {"projector", "language_model"}),
        ("stage3", {"projector", "language_model"}),
    ],
)
def test_one_step_changes_exactly_the_trained_modules(stage, trained, world, tiny_ckpt, tmp_path):
    model, proc = load_checkpoint(tiny_ckpt)
    before = _snapshot(model)
    recipe = load_recipe(stage, ["batch_size=2", "max_steps=1", "learning_rate=1e-3", "warmup=0"])
    train_stage(recipe, model, proc, tmp_path / stage, data_root=world, disable_tqdm=True)
    after = _snapshot(model)
    for key, value in before.items():
        changed = not torch.equal(value, after[key])
        top = key.split(".")[0]
        if top in trained and key.endswith("weight") and "norm" not in key and "embed" not in key:
            # every matrix of a trained module moves (embeddings only move for the tokens seen)
            assert changed, f"{stage}: {key} did not change"
        if top not in trained:
            assert not changed, f"{stage}: {key} changed but {top} is frozen"
    reloaded, _ = load_checkpoint(tmp_path / stage)
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, after[key])


def test_a_stage_can_grow_the_language_model_and_trains_the_new_layers(world, tiny_ckpt, tmp_path):
    model, proc = load_checkpoint(tiny_ckpt)
    old = model.config.text_config.num_hidden_layers
    recipe = load_recipe(
        "stage2", ["batch_size=2", "max_steps=1", "learning_rate=1e-3", "warmup=0", f"language_model_layers={old + 2}"]
    )
    report = train_stage(recipe, model, proc, tmp_path / "grown", data_root=world, disable_tqdm=True)
    new = report["expanded_layers"]
    assert len(new) == 2
    reloaded, _ = load_checkpoint(tmp_path / "grown")
    assert len(reloaded.language_model.model.layers) == old + 2
    for j in new:  # zero when added, so the identity; one step later they write into the residual stream
        layer = reloaded.language_model.model.layers[j]
        assert layer.self_attn.o_proj.weight.any() and layer.mlp.down_proj.weight.any()
    again = train_stage(recipe, reloaded, proc, tmp_path / "again", data_root=world, disable_tqdm=True)
    assert again["expanded_layers"] == []  # a model that already has the layers is left as it is


def test_lora_stage_trains_adapters_and_saves_a_merged_checkpoint(world, tiny_ckpt, tmp_path):
    model, proc = load_checkpoint(tiny_ckpt)
    before = _snapshot(model)
    recipe = load_recipe(
        "stage2", ["batch_size=2", "max_steps=2", "learning_rate=1e-2", "modules.language_model=lora", "lora.r=4"]
    )
    train_stage(recipe, model, proc, tmp_path / "lora", data_root=world, disable_tqdm=True)
    reloaded, _ = load_checkpoint(tmp_path / "lora")
    sd = reloaded.state_dict()
    assert set(sd) == set(before)  # an ordinary checkpoint: no lora_A/lora_B keys
    q = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(sd[q], before[q])  # merged adapter changed the base weight
    assert torch.equal(sd["language_model.model.norm.weight"], before["language_model.model.norm.weight"])


def test_training_starts_from_float32_weights_even_from_a_bf16_export(tiny_ckpt, tmp_path):
    model, proc = load_checkpoint(tiny_ckpt)
    model.to(torch.bfloat16).save_pretrained(tmp_path)  # what `tgg export` ships
    proc.save_pretrained(tmp_path)
    reloaded, _ = load_checkpoint(tmp_path)
    assert {p.dtype for p in reloaded.parameters()} == {torch.float32}
    bf16 = model.state_dict()
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, bf16[name].float()), name  # the same values, upcast exactly


def test_a_stage_that_diverges_is_never_marked_complete(world, tiny_ckpt, tmp_path):
    model, proc = load_checkpoint(tiny_ckpt)
    recipe = load_recipe("stage1b", ["batch_size=2", "max_steps=4", "learning_rate=1e30", "warmup=0"])
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        train_stage(recipe, model, proc, tmp_path / "nan", data_root=world, disable_tqdm=True)
    assert not is_complete(tmp_path / "nan")  # a rerun of the chain trains it again instead of building on it


def test_bad_lines_are_skipped_and_bad_samples_replaced_and_reported(world, tiny_ckpt, tmp_path, capsys):
    (tmp_path / "images").symlink_to(world / "images")
    lines = (world / "stage2_tc.jsonl").read_text().splitlines()[:6]
    missing = dict(json.loads(lines[1]), id="no-image", image="images/missing.png")
    (tmp_path / "mixed.jsonl").write_text("\n".join([lines[0], "{not json", json.dumps(missing), *lines[2:]]) + "\n")
    out = tmp_path / "run"
    cli = ["train", "--recipe", "stage1b", "--init", str(tiny_ckpt), "--data-root", str(tmp_path), "--out", str(out)]
    sets = ["batch_size=6", "max_steps=2", "warmup=0", "data=[{path: mixed.jsonl, weight: 1.0}]"]
    assert main([*cli, *(a for s in sets for a in ("--set", s))]) == 0
    assert "1 bad lines skipped, 1 samples replaced (see train_report.json)" in capsys.readouterr().out
    report = json.loads((out / "train_report.json").read_text())
    ((path, line, problem),) = report["skipped"]  # file, line, problem; the other samples went on
    assert path == str(tmp_path / "mixed.jsonl") and line == 2 and "JSON" in problem
    ((path, sample, problem),) = report["replaced"]  # found when its image was read, replaced by the next sample
    assert sample == "no-image" and "missing.png: no such image file" in problem
    indices = json.loads((out / "data_rank0.json").read_text())["indices"]
    assert len(indices) == 12 and sorted(set(indices)) == list(range(6))  # two batches of the 6 good-line samples


def test_the_recipes_batch_is_the_global_batch_whatever_shares_it(monkeypatch, tmp_path):
    recipe = load_recipe("stage3", [])  # the paper's global batch 16
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert devices_sharing_the_batch() == 1
    assert training_arguments(recipe, tmp_path).per_device_train_batch_size == 16
    # One process that sees 8 GPUs would run DataParallel, which splits stacked object images from their tokens
    # (no GPU here, so the count is what is patched).
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    with pytest.raises(RecipeError, match="one process sees 8 GPUs: launch one process per GPU"):
        devices_sharing_the_batch()
    monkeypatch.setenv("WORLD_SIZE", "4")  # torchrun / deepspeed / accelerate: one process per device
    assert devices_sharing_the_batch() == 4 and per_device_batch(recipe, 4) == 4
    with pytest.raises(RecipeError, match="batch_size 16 is not divisible by 3 devices"):
        per_device_batch(recipe, 3)


def test_gpu_ranks_share_the_cores_for_image_loading(monkeypatch):
    # measured on a lent H200 (benchmarks/results/gpu_h200.md): the tiny model's step outruns 4 loaders
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers_per_rank() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 ranks on a 16-core node: one loader each
    assert loader_workers_per_rank() == 1
    monkeypatch.setattr("os.cpu_count", lambda: 128)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert loader_workers_per_rank() == 8


def test_a_real_size_init_without_preset_is_not_trained_with_the_tiny_chains_values(
    tiny_ckpt, tiny_tokenizer, tmp_path, capsys
):
    from tinygroundinggpt.model.presets import paper_config, tiny_random
    from tinygroundinggpt.training.cli import _uses_tiny_recipes

    real = tmp_path / "real"
    paper_config("1.5b").save_pretrained(real)  # a config is all the choice reads: no 1.5B weights needed
    assert not _uses_tiny_recipes(None, str(real))
    assert "LLM is 1536 wide, so the paper's values apply (as --preset 1.5b)" in capsys.readouterr().out
    assert _uses_tiny_recipes(None, str(tiny_ckpt))
    sharp = tmp_path / "sharp"  # tiny components that see 128 px images are still the tiny chain's
    tiny_random(tiny_tokenizer, image_size=128, patch_size=16)[0].config.save_pretrained(sharp)
    assert _uses_tiny_recipes(None, str(sharp))
    assert _uses_tiny_recipes("tiny", str(real)) and not _uses_tiny_recipes("1.5b", str(tiny_ckpt))  # asked: obeyed
    assert _uses_tiny_recipes(None, None)  # assembling the default components: the tiny chain


def test_tgg_train_trains_with_the_recipe_the_preset_chooses(world, tiny_ckpt, tmp_path):
    """The choice reaches the stage: tiny.yaml's stage1b learning rate by default, the paper's under --preset 1.5b."""
    rates = {}
    for preset in ("tiny", "1.5b"):
        out = tmp_path / preset
        cli = ["train", "--recipe", "stage1b", "--init", str(tiny_ckpt), "--data-root", str(world), "--out", str(out)]
        sets = ["batch_size=2", "max_steps=1", "warmup=0", "data=[{path: stage2_tc.jsonl, weight: 1.0}]"]
        assert main([*cli, "--preset", preset, *(a for s in sets for a in ("--set", s))]) == 0
        rates[preset] = json.loads((out / "train_report.json").read_text())["recipe"]["learning_rate"]
    assert rates == {"tiny": 1e-3, "1.5b": 2e-5}
