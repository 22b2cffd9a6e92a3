"""Tiny CLIP: a ``CLIPModel`` trained contrastively on scene images and their captions.

Saved as openai/clip-vit-large-patch14-336 is published: ``config.json`` + ``model.safetensors``, the
image processor (``CLIPImageProcessor``: resize, centre crop, CLIP mean/std) and the tokenizer, so
``CLIPModel.from_pretrained(path)`` / ``AutoImageProcessor.from_pretrained(path)`` load it offline.
(The processor is built as transformers' PIL flavour, which needs no torchvision; its saved type is
``CLIPImageProcessor`` all the same.)
At 64 px with 8 px patches the vision tower gives the 8×8 grid the DINOv2 tower gives too.

The tokenizer is the project's tiny byte-level BPE (trained on the captions) with a post-processor that
appends ``<|endoftext|>`` to every text, as CLIP's tokenizer appends its end token: CLIP's text tower
pools at the first end token (``text_config.eos_token_id``), so plain ``tokenizer(texts)`` is right.

``shape_negatives`` (on for the shipped checkpoint): NegCLIP-style hard negatives, each caption's copy with one shape
word swapped. After 3000 steps the image prefers its caption to that copy far more often and the grounding chain on
it reads expressions better, though the patch tokens still hardly tell shapes apart (docs/components.md).

``region_weight`` (1 for the shipped checkpoint; 0 turns it off): a region-level term in the spirit of
RegionCLIP: each object's patch tokens (``hidden_states[-2]``, the layer the grounding model reads, pooled by how much
of each patch the object's box covers) must pick the object's own phrase ("a small striped red star") from the
batch's phrases and from shape-swapped copies of it, so that shape has to live in the patch tokens themselves (per-patch
shape probe 22 -> 47 %). Alone it did not help the grounding chain; together with the DINOv2's position term it did
(docs/components.md).

``region_dense`` (off for the shipped checkpoint): that term asked of every patch token the object covers rather than
of their pooled mean, weighted by coverage (as dense CLIP variants align each pixel's or patch's feature with text).
Pooled, an object's patches can split its shape between them; the grounding model reads them one token at a time.
It lifts the per-patch shape probe (47 -> 62 %), but the demo's chain on it fell on compositional REC (53.8 -> 35.3 %,
held-out 27.45 -> 27.06 %): each patch learns the whole phrase, colour and shape bound together (docs/components.md).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tokenizers import processors
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, PreTrainedTokenizerFast

from tinygroundinggpt.boxes import Box
from tinygroundinggpt.components.corpus import IMAGE_SIZE, PATCH_SIZE, patch_grid
from tinygroundinggpt.components.tokenizer import EOS, train_tokenizer
from tinygroundinggpt.components.training import save_model_16bit, seed_everything, train_steps
from tinygroundinggpt.model.configuration_tinygroundinggpt import CLIP_MEAN, CLIP_STD
from tinygroundinggpt.world.scene import DEFAULT_HELDOUT, SHAPES


@dataclass
class ClipRecipe:
    """Sizes and optimisation of the tiny CLIP; the defaults are what the shipped checkpoint used."""

    steps: int = 3000  # with shape negatives; 800 sufficed without them
    batch_size: int = 64
    lr: float = 1e-3
    vocab_size: int = 512
    max_text_len: int = 48
    vision_hidden: int = 96
    vision_layers: int = 4
    text_hidden: int = 64
    text_layers: int = 3
    projection_dim: int = 64
    shape_negatives: bool = True  # NegCLIP-style hard negatives: held-out REC 18.0 -> 24.0 % in the demo's chain
    region_weight: float = 1.0  # region-phrase term on the patch tokens (module docstring)
    region_dense: bool = False  # that term per patch token, not per pooled region (module docstring)
    image_size: int = IMAGE_SIZE  # input side; the scenes must be drawn at it (more pixels per object, same grid
    patch_size: int = PATCH_SIZE  # with patch_size scaled alike)


@dataclass
class TrainedClip:
    model: CLIPModel
    image_processor: CLIPImageProcessorPil
    tokenizer: PreTrainedTokenizerFast
    losses: list[float]

    def save(self, out: str | Path) -> None:
        save_model_16bit(self.model, out)
        self.image_processor.save_pretrained(out)
        self.tokenizer.save_pretrained(out)


def clip_image_processor(image_size: int) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


def clip_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = train_tokenizer(texts, vocab_size=vocab_size)
    eos_id = tok.convert_tokens_to_ids(EOS)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
    )
    tok.eos_token = EOS
    tok.chat_template = None  # a text encoder has no chat turns (CLIP's tokenizer ships none)
    return tok


def clip_config(recipe: ClipRecipe, vocab_size: int, eos_id: int) -> CLIPConfig:
    return CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": recipe.text_hidden,
            "intermediate_size": 4 * recipe.text_hidden,
            "num_hidden_layers": recipe.text_layers,
            "num_attention_heads": 4,
            "max_position_embeddings": recipe.max_text_len,
            "bos_token_id": eos_id,
            "eos_token_id": eos_id,
            "pad_token_id": eos_id,
        },
        vision_config={
            "hidden_size": recipe.vision_hidden,
            "intermediate_size": 4 * recipe.vision_hidden,
            "num_hidden_layers": recipe.vision_layers,
            "num_attention_heads": 4,
            "image_size": recipe.image_size,
            "patch_size": recipe.patch_size,
        },
        projection_dim=recipe.projection_dim,
    )


_SHAPE_WORD = re.compile(r"\b(" + "|".join(SHAPES) + r")\b")


def swap_one_shape(text: str, rng: random.Random) -> str:
    """``text`` with one shape word, drawn at random, replaced by another shape (unchanged if it names none).

    The new shape never makes a held-out colour-shape pair with the colour word before it: the compositional
    split must be the first to show those pairs, and here they would be taught as a mismatch.
    """
    hits = list(_SHAPE_WORD.finditer(text))
    if not hits:
        return text
    hit = rng.choice(hits)
    before = text[: hit.start()].split()
    colour = before[-1] if before else ""
    other = rng.choice([s for s in SHAPES if s != hit.group() and (colour, s) not in DEFAULT_HELDOUT])
    return text[: hit.start()] + other + text[hit.end() :]


def cell_weights(box: Box, grid: int) -> torch.Tensor:
    """How much of each patch (row-major grid x grid, as the patch tokens) a model-frame box covers, summing to 1."""
    x1, y1, x2, y2 = box
    edges = torch.arange(grid + 1, dtype=torch.float32) / grid
    wx = (edges[1:].clamp(max=x2) - edges[:-1].clamp(min=x1)).clamp(min=0)
    wy = (edges[1:].clamp(max=y2) - edges[:-1].clamp(min=y1)).clamp(min=0)
    weights = (wy[:, None] * wx[None, :]).flatten()
    if weights.sum() <= 0:
        raise ValueError(f"region box {box} covers no patch")
    return weights / weights.sum()


def phrase_ids(phrases: Sequence[str], swapped: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """One id per distinct phrase, for the phrases and for their swapped copies (-1: a copy no object's phrase equals),
    so that a batch can tell which texts are an object's own phrase."""
    ids = {p: j for j, p in enumerate(dict.fromkeys(phrases))}
    return torch.tensor([ids[p] for p in phrases]), torch.tensor([ids.get(p, -1) for p in swapped])


def own_phrase_mask(phrase_id: torch.Tensor, swapped_id: torch.Tensor) -> torch.Tensor:
    """(K, 2K) from K objects' :func:`phrase_ids`: is text j (the K phrases, then their swaps) object i's phrase?"""
    return phrase_id[:, None] == torch.cat([phrase_id, swapped_id])[None, :]


class RegionLoss(torch.nn.Module):
    """The region-phrase term: each object's patch tokens, pooled (or with ``dense`` each covered patch on its own),
    against the batch's phrases and shape swaps; the phrases pick their pooled region in both modes."""

    def __init__(self, hidden: int, projection_dim: int, dense: bool = False) -> None:
        super().__init__()
        self.head = torch.nn.Sequential(torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, projection_dim))
        self.dense = dense

    def forward(
        self, patches: torch.Tensor, weights: torch.Tensor, texts: torch.Tensor, same: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """``patches`` (K, grid², D): each object's image's patch tokens; ``weights`` (K, grid²); ``texts`` (2K, P):
        the K phrases' embeddings, then their shape-swapped copies'; ``same`` (K, 2K): phrase i equals phrase j, then
        phrase i equals swapped copy j (a swap can turn one object's phrase into another's)."""
        texts = torch.nn.functional.normalize(texts, dim=-1)
        regions = torch.nn.functional.normalize(self.head((weights.unsqueeze(-1) * patches).sum(1)), dim=-1)
        logits = scale * regions @ texts.t()  # K x 2K
        k = len(regions)
        # A text that is the object's own phrase, but for another object or from a swap, is no negative.
        clash = same & ~torch.eye(k, 2 * k, dtype=torch.bool)
        logits = logits.masked_fill(clash, float("-inf"))
        target, ce = torch.arange(k), torch.nn.functional.cross_entropy
        if not self.dense:
            return (ce(logits, target) + ce(logits[:, :k].t(), target)) / 2
        # Dense: every patch the object covers must pick the phrase itself, weighted by how much it covers.
        per_patch = scale * torch.nn.functional.normalize(self.head(patches), dim=-1) @ texts.t()  # K x N x 2K
        per_patch = per_patch.masked_fill(clash[:, None], float("-inf"))
        n = per_patch.shape[1]
        nll = ce(per_patch.reshape(k * n, -1), target.repeat_interleave(n), reduction="none").view(k, n)
        return ((weights * nll).sum(1).mean() + ce(logits[:, :k].t(), target)) / 2


def train_clip(
    images: Sequence[Image.Image],
    captions: Sequence[Sequence[str]],
    *,
    seed: int,
    recipe: ClipRecipe | None = None,
    regions: Sequence[Sequence[tuple[Box, str]]] | None = None,
) -> TrainedClip:
    """Train on ``images[i]`` paired with one of ``captions[i]`` (drawn afresh each step).

    ``regions[i]``: image ``i``'s objects as (model-frame box, phrase), needed when ``recipe.region_weight`` > 0.
    """
    recipe = recipe or ClipRecipe()
    if len(images) != len(captions) or not images:
        raise ValueError(f"need one caption list per image, got {len(images)} images and {len(captions)} lists")
    if recipe.region_weight and (regions is None or len(regions) != len(images)):
        raise ValueError("region_weight > 0 needs regions: one list of (box, phrase) per image")
    grid = patch_grid(images, recipe.image_size, recipe.patch_size)
    gen = seed_everything(seed)
    flat = [c for caps in captions for c in caps]
    tokenizer = clip_tokenizer(flat, recipe.vocab_size)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    # With shape_negatives each caption also has a copy naming one wrong shape, a negative for its own image
    # (NegCLIP): random batches rarely hold two scenes that differ only in shape, so shape goes unlearned.
    negatives = [swap_one_shape(c, random.Random(i)) for i, c in enumerate(flat)] if recipe.shape_negatives else []
    enc = tokenizer(
        flat + negatives, padding="max_length", truncation=True, max_length=recipe.max_text_len, return_tensors="pt"
    )
    if recipe.region_weight:
        objects = [obj for objs in regions or () for obj in objs]
        phrases = [phrase for _, phrase in objects]
        swapped = [swap_one_shape(p, random.Random(-1 - i)) for i, p in enumerate(phrases)]
        phrase_enc = tokenizer(phrases + swapped, padding="longest", return_tensors="pt")
        phrase_id, swapped_id = phrase_ids(phrases, swapped)
        obj_weights = torch.stack([cell_weights(box, grid) for box, _ in objects])
        obj_starts = torch.tensor([0] + [len(objs) for objs in regions or ()]).cumsum(0)
    # The call above leaves padding/truncation switched on in the backend, which would be saved into
    # tokenizer.json; the published tokenizer must encode texts as they are.
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.backend_tokenizer.no_truncation()
    # Truncation can cut the appended end token off; put it back so the text tower pools a real summary.
    enc.input_ids[:, -1] = torch.where(enc.attention_mask[:, -1].bool(), eos_id, enc.input_ids[:, -1])
    starts = torch.tensor([0] + [len(c) for c in captions]).cumsum(0)
    counts = torch.tensor([len(c) for c in captions])

    image_processor = clip_image_processor(recipe.image_size)
    pixels = image_processor(list(images), return_tensors="pt").pixel_values
    model = CLIPModel(clip_config(recipe, len(tokenizer), eos_id))
    model.train()
    region_loss = (
        RegionLoss(recipe.vision_hidden, recipe.projection_dim, recipe.region_dense) if recipe.region_weight else None
    )
    n = len(images)

    def loss_at(step: int) -> torch.Tensor:
        idx = torch.randperm(n, generator=gen)[: recipe.batch_size]
        pick = starts[idx] + (torch.rand(len(idx), generator=gen) * counts[idx]).long()
        texts = torch.cat([pick, pick + len(flat)]) if recipe.shape_negatives else pick
        out = model(
            input_ids=enc.input_ids[texts],
            attention_mask=enc.attention_mask[texts],
            pixel_values=pixels[idx],
            output_hidden_states=region_loss is not None,
        )
        logits = out.logits_per_image  # B images x (B captions[, then their B shape-swapped copies])
        target = torch.arange(len(idx))
        image_to_text = torch.nn.functional.cross_entropy(logits, target)
        text_to_image = torch.nn.functional.cross_entropy(logits[:, : len(idx)].t(), target)
        loss = (image_to_text + text_to_image) / 2
        if region_loss is None:
            return loss
        objs = torch.cat([torch.arange(obj_starts[i], obj_starts[i + 1]) for i in idx.tolist()])
        owner = torch.repeat_interleave(torch.arange(len(idx)), obj_starts[idx + 1] - obj_starts[idx])
        both = torch.cat([objs, objs + len(phrases)])
        embedded = model.get_text_features(
            input_ids=phrase_enc.input_ids[both], attention_mask=phrase_enc.attention_mask[both]
        )
        embedded = embedded if isinstance(embedded, torch.Tensor) else embedded.pooler_output
        patches = out.vision_model_output.hidden_states[-2][:, 1:][owner]  # drop CLS
        same = own_phrase_mask(phrase_id[objs], swapped_id[objs])
        term = region_loss(patches, obj_weights[objs], embedded, same, model.logit_scale.exp())
        return loss + recipe.region_weight * term

    params = [*model.parameters(), *(region_loss.parameters() if region_loss is not None else ())]
    losses = train_steps(params, loss_at, steps=recipe.steps, lr=recipe.lr, desc="tiny CLIP")
    model.eval()
    return TrainedClip(model, image_processor, tokenizer, losses)
