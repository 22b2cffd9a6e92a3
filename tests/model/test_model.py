import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image
from transformers import (
    AutoModel,
    AutoProcessor,
    AutoTokenizer,
    CLIPVisionModel,
    Dinov2Model,
    GenerationConfig,
    Qwen2ForCausalLM,
)

from tinygroundinggpt.model import PlaceholderMismatchError, TinyGroundingGPTForConditionalGeneration
from tinygroundinggpt.model.modeling_tinygroundinggpt import MultiScaleVisionEncoder, _normalise
from tinygroundinggpt.model.presets import assemble


def test_vision_features_equal_transformers_reference(tiny_model):
    model, _ = tiny_model
    cfg = model.config
    pv = torch.rand(2, 3, cfg.image_size, cfg.image_size)
    clip = CLIPVisionModel(cfg.clip_config).eval()
    clip.load_state_dict(model.vision_tower.clip.state_dict())
    dino = Dinov2Model(cfg.dino_config).eval()
    dino.load_state_dict(model.vision_tower.dino.state_dict())
    with torch.no_grad():
        ref_clip = clip(_normalise(pv, cfg.clip_image_mean, cfg.clip_image_std), output_hidden_states=True)
        ref_dino = dino(_normalise(pv, cfg.dino_image_mean, cfg.dino_image_std)).last_hidden_state
        ours = model.vision_tower(pv)
    assert ours.shape == (2, cfg.grid_size**2, cfg.vision_feature_size)
    torch.testing.assert_close(ours[..., : cfg.clip_config.hidden_size], ref_clip.hidden_states[-2][:, 1:])
    torch.testing.assert_close(ours[..., cfg.clip_config.hidden_size :], ref_dino[:, 1:])


def test_text_only_logits_equal_qwen2(tiny_model):
    model, proc = tiny_model
    ref = Qwen2ForCausalLM(model.config.text_config).eval()
    ref.load_state_dict(model.language_model.state_dict())
    ids = torch.tensor([proc.tokenizer("Output the coordinate of the red circle.")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, ref(input_ids=ids).logits)


def test_placeholder_mismatch_is_a_clear_error(tiny_model):
    model, proc = tiny_model
    ids = torch.tensor([[5] + [proc.image_token_id] * 10])
    with pytest.raises(PlaceholderMismatchError, match="10 image placeholder tokens .* 64 image feature vectors"):
        model(input_ids=ids, pixel_values=torch.rand(1, 3, 64, 64))
    with pytest.raises(PlaceholderMismatchError, match="0 object placeholder tokens .* 4 object feature"):
        model(input_ids=torch.tensor([[5, 6]]), object_pixel_values=torch.rand(1, 3, 64, 64))


def test_loss_depends_on_the_image_and_backprops_to_projector_only(tiny_model):
    model, proc = tiny_model
    img = Image.new("RGB", (64, 48), (200, 0, 0))
    enc = proc.encode(
        [{"role": "user", "content": "<image>\nWhere is <object:0>?"}, {"role": "assistant", "content": "<box:0>"}],
        img,
        [(0, 0, 32, 32)],
    )
    batch = proc.collate([enc])
    model.train()
    out = model(**batch)
    out.loss.backward()
    model.eval()
    assert model.projector.linear_1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vision_tower.parameters())
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        other = dict(batch, pixel_values=torch.zeros_like(batch["pixel_values"]))
        assert not torch.allclose(model(**batch).logits, model(**other).logits)


def _greedy_without_cache(model, batch, steps):
    """The reference: every step a full forward pass over the whole sequence (generate forces the cache on when it
    feeds embeddings, so use_cache=False would not be one)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    images = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    with torch.no_grad():
        for _ in range(steps):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: as generate numbers the positions
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **images).logits
            step = logits[:, -1].argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, step], 1), torch.cat([mask, torch.ones_like(step)], 1)
    return ids


def test_cached_greedy_generation_equals_full_forward_passes_batched(tiny_model):
    model, proc = tiny_model
    imgs = [Image.new("RGB", (64, 40), (0, 0, 255)), Image.new("RGB", (30, 64), (255, 255, 0))]
    batch = proc(["Output the coordinate of the blue square.", "Is there a star?"], imgs)
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padded
    a = model.generate(**batch, max_new_tokens=8, do_sample=False)
    b = _greedy_without_cache(model, batch, 8)
    n, stops = batch["input_ids"].shape[1], {proc.end_of_turn_id, proc.tokenizer.eos_token_id}
    compared = []
    for row_a, row_b in zip(a, b, strict=True):  # generate pads a row after its end; compare up to there
        new = row_a[n:].tolist()
        end = next((i + 1 for i, t in enumerate(new) if t in stops), len(new))
        assert row_a[n : n + end].tolist() == row_b[n : n + end].tolist()
        compared.append(end)
    assert max(compared) == 8  # at least one row ran its whole length
    # batched equals one-at-a-time (left padding handled)
    single = proc(["Is there a star?"], [imgs[1]])
    c = model.generate(**single, max_new_tokens=8, do_sample=False)
    n = c.shape[1] - single["input_ids"].shape[1]
    assert torch.equal(c[0, -n:], a[1, batch["input_ids"].shape[1] : batch["input_ids"].shape[1] + n])
    torch.manual_seed(0)
    s = model.generate(**batch, max_new_tokens=4, do_sample=True, temperature=1.0)
    assert s.shape[0] == 2


def test_generate_takes_transformers_own_options(tiny_model):
    model, proc = tiny_model
    batch = proc(["Is there a star?"], [Image.new("RGB", (30, 64), (255, 255, 0))])
    n = batch["input_ids"].shape[1]
    greedy = model.generate(**batch, max_new_tokens=4, do_sample=False)
    beams = model.generate(**batch, max_new_tokens=4, num_beams=2, num_return_sequences=2)
    assert beams.shape[0] == 2 and torch.equal(beams[:, :n], batch["input_ids"].repeat(2, 1))
    out = model.generate(**batch, max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
    assert torch.equal(out.sequences, greedy) and len(out.scores) == greedy.shape[1] - n
    # the prompt's tokens count for a repetition penalty, as in transformers' VLMs: the first step's scores change
    plain = model.generate(**batch, max_new_tokens=1, output_scores=True, return_dict_in_generate=True).scores[0]
    penal = model.generate(
        **batch, max_new_tokens=1, output_scores=True, return_dict_in_generate=True, repetition_penalty=10.0
    ).scores[0]
    assert not torch.equal(plain[0, batch["input_ids"][0]], penal[0, batch["input_ids"][0]])


def test_token_embeddings_resize_on_the_whole_model(tiny_model):
    model = copy.deepcopy(tiny_model[0])
    model.config.text_config.tie_word_embeddings = False
    model.language_model.lm_head.weight = torch.nn.Parameter(model.language_model.lm_head.weight.detach().clone())
    old = model.config.text_config.vocab_size
    model.resize_token_embeddings(old + 8)
    assert model.get_input_embeddings().weight.shape[0] == model.get_output_embeddings().weight.shape[0] == old + 8


def test_weights_missing_from_a_checkpoint_are_initialised_not_left_as_memory(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_model[0]
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("projector.")}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})  # fmt: skip
    projector = TinyGroundingGPTForConditionalGeneration.from_pretrained(tmp_path).projector
    std = model.config.text_config.initializer_range
    for linear in (projector.linear_1, projector.linear_2):  # transformers' init: normal(initializer_range), bias 0
        assert abs(linear.weight.std().item() - std) < 0.2 * std and not linear.bias.any()
    if isinstance(projector.norm, torch.nn.LayerNorm):
        assert (projector.norm.weight == 1).all() and not projector.norm.bias.any()


def test_save_load_round_trip_identical_logits_via_auto_classes(tiny_model, tmp_path):
    model, proc = tiny_model
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    proc2 = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, TinyGroundingGPTForConditionalGeneration)
    img = Image.new("RGB", (50, 64), (0, 128, 0))
    b1 = proc(["Where is <object:0>?"], [img], boxes=[[(5, 5, 30, 40)]])
    b2 = proc2(["Where is <object:0>?"], [img], boxes=[[(5, 5, 30, 40)]])
    for k in b1:
        assert torch.equal(b1[k], b2[k])
    with torch.no_grad():
        torch.testing.assert_close(model(**b1).logits, loaded(**b2).logits, rtol=0, atol=0)


def test_the_llms_generation_config_survives_save_and_load(tiny_model, tmp_path):
    model = copy.deepcopy(tiny_model[0])
    model.language_model.generation_config = GenerationConfig(eos_token_id=[2, 0], pad_token_id=1)  # two stop tokens
    model.save_pretrained(tmp_path)
    loaded = TinyGroundingGPTForConditionalGeneration.from_pretrained(tmp_path).language_model.generation_config
    assert (loaded.eos_token_id, loaded.pad_token_id) == ([2, 0], 1)  # not the text config's single eos


def test_a_checkpoint_holding_only_a_pickle_is_refused(tiny_model, tmp_path):
    model, _ = tiny_model
    model.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(OSError, match="no file named model.safetensors"):
        TinyGroundingGPTForConditionalGeneration.from_pretrained(tmp_path)


def test_assemble_from_three_checkpoints_offline(tiny_components):
    """A CLIPModel, a Dinov2Model and a Qwen2 LM + tokenizer in their real formats, assembled offline."""
    paths = {k: str(v) for k, v in tiny_components.items()}
    script = textwrap.dedent(
        f"""
        import torch
        from PIL import Image
        from tinygroundinggpt.model.presets import assemble
        m, p = assemble({paths["clip"]!r}, {paths["dino"]!r}, {paths["llm"]!r}, object_grid=2)
        assert m.config.image_size == 64 and m.config.use_dino
        b = p(["Output the coordinate of <object:0>."], [Image.new("RGB", (64, 32))], boxes=[[(0, 0, 10, 10)]])
        out = m.generate(**b, max_new_tokens=3, do_sample=False)
        print("OK", out.shape[1] - b["input_ids"].shape[1])
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "OK 3" in res.stdout


def test_paper_configs_have_the_published_shapes():
    from tinygroundinggpt.model.presets import paper_config

    cfg = paper_config("1.5b")
    assert cfg.grid_size == 24 and cfg.image_seq_length == 576
    assert cfg.vision_feature_size == 2048
    assert cfg.text_config.hidden_size == 1536
    with torch.device("meta"):
        m = TinyGroundingGPTForConditionalGeneration(cfg)
    n = sum(p.numel() for p in m.parameters())
    assert 2.1e9 < n < 2.4e9  # 1.54B LLM + 0.30B CLIP-L + 0.30B DINOv2-L + projector


def test_assembly_is_seeded_and_leaves_the_callers_random_state_alone(tiny_components):
    paths = {k: str(v) for k, v in tiny_components.items()}
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first, _ = assemble(paths["clip"], paths["dino"], paths["llm"], object_grid=2)
    assert torch.equal(torch.rand(1), before)  # the caller's stream continues as if nothing happened
    again, _ = assemble(paths["clip"], paths["dino"], paths["llm"], object_grid=2)
    other, _ = assemble(paths["clip"], paths["dino"], paths["llm"], object_grid=2, seed=1)
    a, b, c = (dict(m.named_parameters()) for m in (first, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the fresh projector too: two chains start from one model
    assert any(not torch.equal(a[k], c[k]) for k in a if "projector" in k)


def test_published_dtypes_and_generation_settings_are_reconciled_on_assembly(tiny_components, tmp_path):
    # As published: CLIP-L and DINOv2-L in fp32, Qwen2.5-Instruct in bf16 with sampling and a repetition penalty.
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(tiny_components["llm"], dtype=torch.bfloat16)
    llm.generation_config = GenerationConfig(do_sample=True, temperature=0.7, repetition_penalty=1.05, eos_token_id=2)
    llm.save_pretrained(tmp_path / "llm")
    AutoTokenizer.from_pretrained(tiny_components["llm"]).save_pretrained(tmp_path / "llm")
    clip, dino = str(tiny_components["clip"]), str(tiny_components["dino"])
    model, proc = assemble(clip, dino, str(tmp_path / "llm"), object_grid=2)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # one dtype: no fp32 features into a bf16 MLP
    gen = model.language_model.generation_config
    assert not gen.do_sample and gen.repetition_penalty in (None, 1.0) and gen.eos_token_id == 2
    batch = proc(["Where is <object:0>?"], [Image.new("RGB", (64, 32))], boxes=[[(0, 0, 10, 10)]])
    assert model(**batch).logits.dtype == torch.bfloat16
    # Loaded again, the vision tower stays frozen (transformers 5 loads weights into Parameters that require grad).
    model.save_pretrained(tmp_path / "tgg")
    loaded, info = TinyGroundingGPTForConditionalGeneration.from_pretrained(tmp_path / "tgg", output_loading_info=True)
    assert not info["missing_keys"] and not any(p.requires_grad for p in loaded.vision_tower.parameters())
    assert all(p.requires_grad for p in loaded.projector.parameters())
    # An image size other than CLIP's own: both encoders interpolate their position embeddings.
    big, big_proc = assemble(clip, dino, str(tmp_path / "llm"), object_grid=2, image_size=128, dtype=torch.float32)
    feats = big.get_image_features(big_proc(["Hi"], [Image.new("RGB", (64, 32))])["pixel_values"])
    assert feats.shape[1] == (128 // 8) ** 2


@pytest.mark.parametrize(
    ("clip_layer", "dino_layer", "final_norm"), [(-2, -1, True), (-1, -1, False), (1, -2, True), (-3, 1, False)]
)
def test_the_vision_towers_unused_parameters_are_those_no_gradient_reaches(
    tiny_model, clip_layer, dino_layer, final_norm
):
    """What a trained tower freezes (DDP stalls on a parameter without a gradient) is checked against a backward."""
    model, _ = tiny_model
    config = copy.deepcopy(model.config)
    config.clip_feature_layer, config.dino_feature_layer, config.dino_final_norm = clip_layer, dino_layer, final_norm
    tower = MultiScaleVisionEncoder(config).train()
    tower(torch.rand(2, 3, config.image_size, config.image_size)).square().sum().backward()
    no_grad = sorted(n for n, p in tower.named_parameters() if p.grad is None)
    assert sorted(tower.unused_parameters()) == no_grad and "dino.embeddings.mask_token" in no_grad
