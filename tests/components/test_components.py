"""The tiny pretrained components: very short runs of the real trainers and of ``tgg components``.

They check the published formats (each checkpoint loads with transformers' own classes, offline, from
a local path), the 8×8 patch grid both encoders must share, determinism by seed and that training
lowers the loss. Quality figures are the benchmark's job (benchmarks/bench_components.py).
"""

from __future__ import annotations

import json
import math
import random
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPModel,
    Dinov2Model,
)

from tinygroundinggpt.boxes import format_box, pad_offsets
from tinygroundinggpt.cli import main
from tinygroundinggpt.components import clip, corpus, dinov2, qwen2
from tinygroundinggpt.components.tokenizer import CHATML_TEMPLATE, EOS, IM_END
from tinygroundinggpt.world.scene import DEFAULT_HELDOUT, SHAPES, render_scene

N_PATCHES = 8 * 8  # the 8×8 grid the grounding model reads


@pytest.fixture(autouse=True)
def one_thread():
    """Models this small gain nothing from a second thread, and a second thread slows them 10-20x
    when the cores are shared with other jobs (measured: 15 s vs 6 min for this file)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def samples() -> list[corpus.WorldSample]:
    return corpus.world_samples(seed=7, count=48)


def _saved_dtypes(path) -> set[str]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}


def _processor_type(path) -> str:
    return json.loads((path / "preprocessor_config.json").read_text())["image_processor_type"]


def _falls(losses: list[float], k: int = 5) -> bool:
    return float(np.mean(losses[-k:])) < float(np.mean(losses[:k]))


def test_clip_trains_and_loads_as_published(samples, tmp_path):
    images = corpus.square_images(samples, clip.CLIP_MEAN)
    recipe = clip.ClipRecipe(steps=30, batch_size=16, lr=2e-3, vocab_size=300, shape_negatives=False, region_weight=0)
    trained = clip.train_clip(images, corpus.captions(samples, 1), seed=0, recipe=recipe)
    assert _falls(trained.losses)
    trained.save(tmp_path)

    assert _saved_dtypes(tmp_path) == {"BF16"}
    model = CLIPModel.from_pretrained(tmp_path, dtype=torch.float32, local_files_only=True)
    processor = AutoImageProcessor.from_pretrained(tmp_path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert _processor_type(tmp_path) == "CLIPImageProcessor"

    pixels = processor(images[:2], return_tensors="pt").pixel_values
    assert pixels.shape == (2, 3, 64, 64)
    hidden = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    assert hidden.shape[1] == 1 + N_PATCHES  # CLS + the 8×8 grid the grounding model reads

    # The tokenizer ends every text with the token the text tower pools at.
    ids = tokenizer("a red circle").input_ids
    assert ids[-1] == model.config.text_config.eos_token_id == tokenizer.convert_tokens_to_ids(EOS)
    assert ids == trained.tokenizer("a red circle").input_ids
    with torch.no_grad():
        before = trained.model.get_text_features(**trained.tokenizer(["a red circle"], return_tensors="pt"))
        after = model.get_text_features(**tokenizer(["a red circle"], return_tensors="pt"))
    before = before if isinstance(before, torch.Tensor) else before.pooler_output
    after = after if isinstance(after, torch.Tensor) else after.pooler_output
    assert torch.nn.functional.cosine_similarity(before, after).item() > 0.99  # bf16 round trip


def test_swap_one_shape_names_exactly_one_wrong_shape():
    text = "three shapes on a dark background: a small red cross, a green cross and a large pink circle."
    for seed in range(20):
        swapped = clip.swap_one_shape(text, random.Random(seed))
        changed = [(a, b) for a, b in zip(text.split(), swapped.split(), strict=True) if a != b]
        assert len(changed) == 1  # "shapes" is not a shape word
        ((was, now),) = changed
        assert was.strip(",.") in SHAPES and now.strip(",.") in SHAPES and was != now
    assert clip.swap_one_shape("an image of nothing.", random.Random(0)) == "an image of nothing."


def test_swap_one_shape_never_makes_a_heldout_pair():
    """A swap that named a held-out pair would teach, before the compositional split asks, that it is a mismatch."""
    for colour, held in DEFAULT_HELDOUT:
        for shape in (s for s in SHAPES if s != held):
            text = f"a small striped {colour} {shape} and a {colour} {shape}."
            for seed in range(30):
                swapped = clip.swap_one_shape(text, random.Random(seed))
                assert f"{colour} {held}" not in swapped, (text, swapped)
    # other colours still swap to every other shape, held-out ones included
    swaps = {clip.swap_one_shape("a red circle", random.Random(seed)) for seed in range(200)}
    assert "a red star" not in swaps and len(swaps) == len(SHAPES) - 2
    assert len({clip.swap_one_shape("a pink circle", random.Random(seed)) for seed in range(200)}) == len(SHAPES) - 1


def test_region_term_takes_no_text_of_an_objects_own_phrase_as_negative():
    """A shape swap can turn one object's phrase into another's: that copy is a right answer for the other object."""
    phrases = ["a red circle", "a red square", "a blue star"]
    swapped = ["a red star", "a red circle", "a blue circle"]  # object 1's swap is object 0's phrase
    phrase_id, swapped_id = clip.phrase_ids(phrases, swapped)
    assert phrase_id.tolist() == [0, 1, 2] and swapped_id.tolist() == [-1, 0, -1]
    same = clip.own_phrase_mask(phrase_id, swapped_id)
    assert same.nonzero().tolist() == [[0, 0], [0, 4], [1, 1], [2, 2]]
    torch.manual_seed(0)
    k, d, p = 3, 12, 8
    patches, texts, scale = torch.randn(k, N_PATCHES, d), torch.randn(2 * k, p), torch.tensor(5.0)
    weights = torch.nn.functional.one_hot(torch.tensor([3, 20, 50]), N_PATCHES).float()
    term = clip.RegionLoss(d, p)
    got = term(patches, weights, texts, same, scale)
    with torch.no_grad():
        regions = torch.nn.functional.normalize(term.head((weights[..., None] * patches).sum(1)), dim=-1)
        logits = scale * regions @ torch.nn.functional.normalize(texts, dim=-1).t()
        logits[0, 4] = float("-inf")  # object 0 is not told that its own phrase, as object 1's swap, is wrong
        ce = torch.nn.functional.cross_entropy
        want = (ce(logits, torch.arange(k)) + ce(logits[:, :k].t(), torch.arange(k))) / 2
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_clip_with_shape_negatives_trains(samples):
    images = corpus.square_images(samples, clip.CLIP_MEAN)
    # negatives are the default; the region term (also a default) has its own test
    recipe = clip.ClipRecipe(steps=30, batch_size=16, lr=2e-3, vocab_size=300, region_weight=0)
    trained = clip.train_clip(images, corpus.captions(samples, 1), seed=0, recipe=recipe)
    assert _falls(trained.losses)
    # the first loss is over twice the texts: about log(2B) for image→text, log(B) back
    assert abs(trained.losses[0] - (math.log(32) + math.log(16)) / 2) < 0.5


def test_cell_weights_share_a_box_among_the_patches_it_covers():
    one = clip.cell_weights((3 / 8, 2 / 8, 4 / 8, 3 / 8), 8)  # exactly the patch in row 2, column 3
    assert one[2 * 8 + 3] == 1 and one.sum() == 1
    half = clip.cell_weights((0.5 / 8, 0.0, 1.5 / 8, 1 / 8), 8)  # half of patch (0, 0), half of (0, 1)
    assert half[:2].tolist() == pytest.approx([0.5, 0.5]) and half[2:].sum() == 0
    with pytest.raises(ValueError, match="covers no patch"):
        clip.cell_weights((0.3, 0.3, 0.3, 0.5), 8)


def test_clip_with_region_term_trains_and_saves_a_plain_clip(samples, tmp_path):
    images = corpus.square_images(samples, clip.CLIP_MEAN)
    recipe = clip.ClipRecipe(steps=30, batch_size=16, lr=2e-3, vocab_size=300, region_weight=1.0)
    with pytest.raises(ValueError, match="needs regions"):
        clip.train_clip(images, corpus.captions(samples, 1), seed=0, recipe=recipe)
    regions = corpus.regions(samples)
    assert [len(r) for r in regions] == [len(s.scene.objects) for s in samples]
    trained = clip.train_clip(images, corpus.captions(samples, 1), seed=0, recipe=recipe, regions=regions)
    assert _falls(trained.losses)
    # CLIP's two terms start near (log 2B + log B) / 2; the region term, over K ~ 50 objects, adds several nats
    assert trained.losses[0] > (math.log(32) + math.log(16)) / 2 + 2
    trained.save(tmp_path)  # the region head is training-only: the checkpoint is a plain CLIPModel
    reloaded = CLIPModel.from_pretrained(tmp_path, local_files_only=True)
    assert set(reloaded.state_dict()) == set(trained.model.state_dict())


def test_dense_region_term_is_the_pooled_one_patch_by_patch():
    """Where each object covers one patch, asking every covered patch for the phrase is the pooled term; where it
    covers two, the dense term scores each patch on its own (a pooled mean can pass where one patch fails)."""
    torch.manual_seed(0)
    k, n, d, p = 4, N_PATCHES, 12, 8
    patches, texts, scale = torch.randn(k, n, d), torch.randn(2 * k, p), torch.tensor(5.0)
    same = torch.eye(k, 2 * k, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True  # objects 0 and 1 share a phrase: no negatives for each other
    pooled, dense = clip.RegionLoss(d, p), clip.RegionLoss(d, p, dense=True)
    dense.load_state_dict(pooled.state_dict())
    one = torch.nn.functional.one_hot(torch.tensor([3, 10, 10, 60]), n).float()
    assert dense(patches, one, texts, same, scale).item() == pytest.approx(
        pooled(patches, one, texts, same, scale).item()
    )
    two = (one + torch.nn.functional.one_hot(torch.tensor([4, 11, 12, 61]), n).float()) / 2
    got = dense(patches, two, texts, same, scale)
    with torch.no_grad():
        heads = torch.nn.functional.normalize(dense.head(patches), dim=-1)
        logits = scale * heads @ torch.nn.functional.normalize(texts, dim=-1).t()
        logits[0, :, 1] = logits[1, :, 0] = float("-inf")
        nll = -logits.log_softmax(-1)[torch.arange(k), :, torch.arange(k)]  # K x N: each patch's own phrase
        pooled_logits = scale * torch.nn.functional.normalize(dense.head((two[..., None] * patches).sum(1)), dim=-1)
        pooled_logits = pooled_logits @ torch.nn.functional.normalize(texts[:k], dim=-1).t()
        pooled_logits[0, 1] = pooled_logits[1, 0] = float("-inf")
        text_to_region = torch.nn.functional.cross_entropy(pooled_logits.t(), torch.arange(k))
        want = ((two * nll).sum(1).mean() + text_to_region) / 2
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert got.item() != pytest.approx(pooled(patches, two, texts, same, scale).item(), rel=1e-3)


def test_dinov2_trains_and_loads_as_published(samples, tmp_path):
    images = corpus.square_images(samples, dinov2.IMAGENET_MEAN)
    mirrored = corpus.square_images(samples, dinov2.IMAGENET_MEAN, mirrored=True)  # as `tgg components dinov2` does
    recipe = dinov2.Dinov2Recipe(steps=30, batch_size=16, lr=2e-3)
    with pytest.raises(ValueError, match="one mirrored image per image"):
        dinov2.train_dinov2(images, seed=0, recipe=recipe, mirrored=mirrored[:-1])
    trained = dinov2.train_dinov2(images, seed=0, recipe=recipe, mirrored=mirrored)
    assert _falls(trained.losses)
    trained.save(tmp_path)

    assert _saved_dtypes(tmp_path) == {"BF16"}
    model = Dinov2Model.from_pretrained(tmp_path, dtype=torch.float32, local_files_only=True)
    processor = AutoImageProcessor.from_pretrained(tmp_path, local_files_only=True)
    assert _processor_type(tmp_path) == "BitImageProcessor"
    assert model.config.image_size == 64 and model.config.patch_size == 8  # 8×8 grid, no interpolation at 64 px
    pixels = processor(images[:2], return_tensors="pt").pixel_values
    assert pixels.shape == (2, 3, 64, 64)
    assert model(pixel_values=pixels).last_hidden_state.shape == (2, 1 + N_PATCHES, model.config.hidden_size)


def test_patchify_follows_the_patch_token_order():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    patches = dinov2.patchify(x, patch=8)
    assert patches.shape == (2, 4, 3 * 64)
    # token 1 is row 0, column 1: pixels [0:8, 8:16] of every channel
    assert torch.equal(patches[1, 1], x[1, :, 0:8, 8:16].reshape(-1))
    assert torch.equal(patches[0, 2], x[0, :, 8:16, 0:8].reshape(-1))


def test_patch_positions_name_each_tokens_cell():
    where = dinov2.patch_positions(4)
    assert where.shape == (16, 2)
    # token 6 is row 1, column 2 of a 4x4 grid; centres of 4 equal cells across [-1, 1]
    assert torch.allclose(where[6], torch.tensor([-0.25, 0.25]))
    assert torch.allclose(where[0], torch.tensor([-0.75, -0.75]))
    assert torch.allclose(where[15], torch.tensor([0.75, 0.75]))


def test_dinov2_position_term_makes_features_say_where_they_are(samples):
    # The same short run with and without the term: only with it does a linear read-out of the
    # patch features follow the grid (held-out R² of the column on other images).
    images = corpus.square_images(samples, dinov2.IMAGENET_MEAN)
    mirrored = corpus.square_images(samples, dinov2.IMAGENET_MEAN, mirrored=True)
    pixels = dinov2.dinov2_image_processor(64)(images, return_tensors="pt").pixel_values
    cols = dinov2.patch_positions(8)[:, 1]

    def column_r2(weight: float) -> float:
        recipe = dinov2.Dinov2Recipe(steps=150, batch_size=16, lr=2e-3, position_weight=weight)
        model = dinov2.train_dinov2(images, seed=0, recipe=recipe, mirrored=mirrored).model
        with torch.no_grad():
            feats = model(pixel_values=pixels).last_hidden_state[:, 1:]
        design = torch.cat([feats, torch.ones(*feats.shape[:2], 1)], -1)
        half = len(images) // 2
        w = torch.linalg.lstsq(design[:half].reshape(-1, design.shape[-1]), cols.repeat(half)[:, None]).solution
        pred = design[half:].reshape(-1, design.shape[-1]) @ w
        target = cols.repeat(len(images) - half)[:, None]
        return float(1 - (pred - target).pow(2).sum() / (target - target.mean()).pow(2).sum())

    assert column_r2(1.0) > 0.5 > column_r2(0.0) + 0.3  # 150 steps: about 0.70 vs -0.31


def test_background_views_keep_the_objects_and_change_the_background(samples):
    views = corpus.background_views(samples[:6], dinov2.IMAGENET_MEAN, 2, seed=3)
    assert views == corpus.background_views(samples[:6], dinov2.IMAGENET_MEAN, 2, seed=3)  # deterministic by seed
    originals = corpus.square_images(samples[:6], dinov2.IMAGENET_MEAN)
    for sample, original, *drawn in zip(samples[:6], originals, *views, strict=True):
        _, labels = render_scene(sample.scene)
        dx, dy = pad_offsets(sample.scene.width, sample.scene.height)
        inside = (slice(dy, dy + sample.scene.height), slice(dx, dx + sample.scene.width))
        for view in drawn:
            a, b = np.asarray(original)[inside], np.asarray(view)[inside]
            assert view.size == original.size
            assert np.array_equal(a[labels >= 0], b[labels >= 0])  # every object pixel as it was
            assert (a[labels < 0] != b[labels < 0]).any(-1).mean() > 0.5  # most background pixels changed


def test_patch_coverage_counts_every_object_pixel_once(samples):
    for sample in samples[:6]:
        _, labels = render_scene(sample.scene)
        cover = corpus.patch_coverage(sample, 8)
        assert cover.shape == (N_PATCHES,) and ((cover >= 0) & (cover <= 1)).all()
        assert round(cover.sum() * 64) == (labels >= 0).sum()  # 64 pixels per 8-px patch, padding never an object


def test_dinov2_view_term_needs_views_and_makes_objects_agree_across_backgrounds(samples):
    # The same short run with and without the term: only with it do an object's patch tokens stay alike when the
    # scene is drawn on another background (held-out scenes, backgrounds never trained on).
    train, held = samples[:36], samples[36:]
    images = corpus.square_images(train, dinov2.IMAGENET_MEAN)
    mirrored = corpus.square_images(train, dinov2.IMAGENET_MEAN, mirrored=True)
    views = corpus.background_views(train, dinov2.IMAGENET_MEAN, 2, seed=1)
    with pytest.raises(ValueError, match="view_weight needs views"):
        dinov2.train_dinov2(images, seed=0, recipe=dinov2.Dinov2Recipe(steps=1, view_weight=1.0), mirrored=mirrored)
    with pytest.raises(ValueError, match="one image per image"):
        dinov2.train_dinov2(images, seed=0, recipe=dinov2.Dinov2Recipe(steps=1, view_weight=1.0), views=[views[0][:-1]])
    processor = dinov2.dinov2_image_processor(64)
    a, b = corpus.background_views(held, dinov2.IMAGENET_MEAN, 2, seed=9)
    object_cells = torch.from_numpy(np.stack([corpus.patch_coverage(s, 8) >= 0.5 for s in held]))

    def agreement(weight: float) -> float:
        recipe = dinov2.Dinov2Recipe(steps=150, batch_size=16, lr=2e-3, view_weight=weight)
        model = dinov2.train_dinov2(images, seed=0, recipe=recipe, mirrored=mirrored, views=views).model
        with torch.no_grad():
            fa, fb = (
                model(pixel_values=processor(x, return_tensors="pt").pixel_values).last_hidden_state[:, 1:]
                for x in (a, b)
            )
        return float(torch.nn.functional.cosine_similarity(fa, fb, dim=-1)[object_cells].mean())

    assert agreement(1.0) > agreement(0.0) + 0.2  # 150 steps: about 0.93 vs 0.56


def test_block_patch_mask_covers_the_drawn_share_in_blocks():
    mask = dinov2.block_patch_mask(300, 8, 0.5, 0.8, torch.Generator().manual_seed(0))
    share = mask.float().mean(1)
    # the last block may overshoot the drawn share by at most one block (16 patches)
    assert share.min() >= 0.5 and share.max() <= 0.8 + 16 / 64
    # blocks, not scattered patches: most masked patches have a masked 4-neighbour
    grid = mask.view(-1, 8, 8)
    neighbour = torch.zeros_like(grid)
    neighbour[:, 1:] |= grid[:, :-1]
    neighbour[:, :-1] |= grid[:, 1:]
    neighbour[:, :, 1:] |= grid[:, :, :-1]
    neighbour[:, :, :-1] |= grid[:, :, 1:]
    assert (grid & neighbour).sum() / grid.sum() > 0.95


def test_qwen2_trains_and_loads_as_published(samples, tmp_path):
    docs = corpus.lm_documents(samples, seed=1)
    assert any(isinstance(d, list) for d in docs) and any(isinstance(d, str) for d in docs)
    recipe = qwen2.Qwen2Recipe(steps=30, batch_size=8, block_size=64, vocab_size=400)
    trained = qwen2.train_qwen2(docs, seed=0, recipe=recipe)
    assert _falls(trained.losses)
    trained.save(tmp_path)

    assert _saved_dtypes(tmp_path) == {"BF16"}
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert model.config.model_type == "qwen2" and model.config.tie_word_embeddings
    assert tokenizer.chat_template == CHATML_TEMPLATE
    assert model.config.eos_token_id == tokenizer.convert_tokens_to_ids(IM_END) == tokenizer.eos_token_id
    box = format_box((0.1, 0.25, 0.5, 0.875))
    assert tokenizer.tokenize(box).count("0") >= 4  # digits are single tokens
    assert tokenizer(box).input_ids == trained.tokenizer(box).input_ids
    assert tokenizer.decode(tokenizer(box).input_ids) == box

    chat = [{"role": "user", "content": "<image>\nOutput the coordinate of the red circle."}]
    enc = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_lm_documents_write_boxes_in_the_model_frame(samples):
    sample = samples[0]
    docs = corpus.lm_documents([sample], seed=3)
    rec = [d for d in docs if isinstance(d, list) and d[0]["content"].startswith("<image>\nOutput the coordinate")]
    boxes = {corpus.box_text(sample.scene, i) for i in range(len(sample.scene.objects))}
    assert rec and all(d[1]["content"] in boxes for d in rec)


def test_lm_documents_name_no_heldout_pair_and_no_twin():
    """The corpus's absent-object questions draw attributes the world can hold (never a held-out pair, which the
    compositional split must be the first to show); its relation sentences name no object an identical twin shares."""
    many = corpus.world_samples(seed=11, count=200)
    text = json.dumps(corpus.lm_documents(many, seed=2)).lower()
    assert "is there a" in text
    for colour, shape in DEFAULT_HELDOUT:
        assert not re.search(rf"\b{colour} {shape}s?\b", text), (colour, shape)
    twins = [s for s in many if len({tuple(o.attributes().values()) for o in s.scene.objects}) < len(s.scene.objects)]
    assert twins  # the check below has something to find
    for s in twins:
        for doc in corpus.lm_documents([s], seed=2)[:1]:  # the caption and relation sentences
            for sentence in doc.split(". ")[1:]:
                a, _, b = re.split(r" is (left of|right of|above|below|in front of|behind) ", sentence.rstrip("."))
                named = [re.sub(r"^the ", "", x.lower()) for x in (a, b)]
                phrases = [
                    " ".join(o.attributes()[k] for k in ("size", "pattern", "colour", "shape")) for o in s.scene.objects
                ]
                assert all(phrases.count(n) <= 1 for n in named), sentence


def test_trainers_are_deterministic_by_seed(samples):
    images = corpus.square_images(samples, dinov2.IMAGENET_MEAN)
    mirrored = corpus.square_images(samples, dinov2.IMAGENET_MEAN, mirrored=True)
    recipe = dinov2.Dinov2Recipe(steps=3, batch_size=8)
    a = dinov2.train_dinov2(images, seed=5, recipe=recipe, mirrored=mirrored)
    b = dinov2.train_dinov2(images, seed=5, recipe=recipe, mirrored=mirrored)
    c = dinov2.train_dinov2(images, seed=6, recipe=recipe, mirrored=mirrored)
    assert a.losses == b.losses and a.losses != c.losses
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tgg_components_all_writes_three_checkpoints(tmp_path):
    assert main(["components", "all", "--out", str(tmp_path), "--seed", "1", "--scenes", "24", "--steps", "2"]) == 0
    assert CLIPModel.from_pretrained(tmp_path / "clip", local_files_only=True).config.vision_config.image_size == 64
    assert Dinov2Model.from_pretrained(tmp_path / "dinov2", local_files_only=True).config.image_size == 64
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "qwen2", local_files_only=True).config.model_type == "qwen2"
    assert AutoTokenizer.from_pretrained(tmp_path / "qwen2", local_files_only=True).chat_template == CHATML_TEMPLATE
    # 'all' trains each component exactly as its own command does (each reseeds from --seed).
    one = tmp_path / "dinov2_alone"
    assert main(["components", "dinov2", "--out", str(one), "--seed", "1", "--scenes", "24", "--steps", "2"]) == 0
    assert (one / "model.safetensors").read_bytes() == (tmp_path / "dinov2" / "model.safetensors").read_bytes()


def test_tgg_components_set_overrides_a_recipe_field(tmp_path):
    base = ["components", "dinov2", "--seed", "1", "--scenes", "24", "--steps", "2"]
    assert main([*base, "--out", str(tmp_path / "default")]) == 0
    assert main([*base, "--out", str(tmp_path / "nopos"), "--set", "position_weight=0"]) == 0
    # the position term (on by default) changes training, so the weights differ
    default, nopos = (tmp_path / d / "model.safetensors" for d in ("default", "nopos"))
    assert default.read_bytes() != nopos.read_bytes()
    # a field the recipe lacks, or no '=', stops before any scene is rendered, naming the problem
    with pytest.raises(SystemExit, match="Dinov2Recipe has no field.*'position_wieght'"):
        main([*base, "--out", str(tmp_path / "bad"), "--set", "position_wieght=1"])
    with pytest.raises(SystemExit, match="key=value"):
        main([*base, "--out", str(tmp_path / "bad"), "--set", "position_weight"])
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("which", ["clip", "dinov2"])
def test_an_encoder_can_see_more_pixels_per_object_on_the_same_grid(which, tmp_path):
    """image_size 128 with patch_size 16: the scenes drawn at 128 px, the grounding model's 8x8 grid kept."""
    out = tmp_path / which
    sets = ["--set", "image_size=128", "--set", "patch_size=16"]
    assert main(["components", which, "--out", str(out), "--scenes", "16", "--steps", "2", *sets]) == 0
    model = CLIPModel if which == "clip" else Dinov2Model
    config = model.from_pretrained(out, local_files_only=True).config
    vision = config.vision_config if which == "clip" else config
    assert (vision.image_size, vision.patch_size) == (128, 16)
    processor = AutoImageProcessor.from_pretrained(out, local_files_only=True)
    assert processor.crop_size == {"height": 128, "width": 128}
    # a size the patches do not tile stops before any scene is rendered
    quick = ["--scenes", "16", "--steps", "2"]
    for size, patch in (("100", "16"), ("abc", "16"), ("64", "0")):
        with pytest.raises(
            SystemExit, match=f"image_size .?{size}.? must be a positive multiple of patch_size {patch}"
        ):
            main(["components", which, "--out", str(tmp_path / "bad"), *quick, "--set", f"image_size={size}",
                  "--set", f"patch_size={patch}"])  # fmt: skip
    assert not (tmp_path / "bad").exists()


def test_an_encoder_refuses_scenes_drawn_at_another_size(samples):
    """64 px scenes resized up to a 128 px encoder would add pixels but no detail: refused, naming both sizes."""
    images = corpus.square_images(samples[:4], clip.CLIP_MEAN)
    with pytest.raises(ValueError, match=r"images are \[\(64, 64\)\] px, the recipe's image_size is 128"):
        dinov2.train_dinov2(images, seed=0, recipe=dinov2.Dinov2Recipe(steps=1, image_size=128, patch_size=16))
