"""Tiny DINOv2: a ``Dinov2Model`` pretrained without labels by masked-patch modelling.

Saved as facebook/dinov2-large is published: ``config.json`` + ``model.safetensors`` and a
``BitImageProcessor`` config with ImageNet mean/std (built as its PIL flavour: no torchvision needed),
so ``Dinov2Model.from_pretrained(path)`` and ``AutoImageProcessor.from_pretrained(path)`` load it
offline. ``image_size`` is 64 by default (``Dinov2Recipe``), so at 64 px the position embeddings are used as
trained (no interpolation) and the grid is 8×8, like the tiny CLIP's.

Objective (the masked-image-modelling half of iBOT, the part DINOv2 relies on for dense features):
block-wise masks as iBOT/BEiT draw them hide 50-80 % of the patches behind DINOv2's own ``mask_token``
(``bool_masked_pos``), and a linear head on ``last_hidden_state`` — the layer the grounding model reads —
must predict the normalised pixels of the hidden patches from their context (SimMIM's target). Visible
patches are also reconstructed, at a quarter of the weight, so the features the downstream model sees
unmasked keep their own patch's colour and texture.

``position_weight`` (1 for the shipped checkpoint; 0 turns it off): a second linear head must read each patch
token's grid position (row, column in [-1, 1]) off the same features. Real ViT patch tokens carry their position
embedding through the residual stream; without the term the tiny DINOv2 lost it (ridge row/column R² 0.37/0.21,
benchmarks/results/position_previous.txt; with it 1.00), and a box probe on the frozen CLIP + DINOv2 features alone
goes from the mean box's 2 % to 82 % Acc@0.5 (benchmarks/results/position.txt).
Alone it made the grounding chain learn one-object scenes faster but not multi-object REC; with the CLIP's
region-phrase term it did both (docs/components.md).

``view_weight`` (0 for the shipped checkpoint; 1 is measured in docs/components.md): dense view contrast. The world
draws each scene again on other backgrounds (``corpus.background_views``); an EMA teacher reads such a view, and each
patch token of the (masked) student must pick the teacher's token at its own grid cell among all the batch's tokens
(InfoNCE through a small projection head, as dense contrastive methods like DenseCL/iBOT pair patches across views).
Only what the two views share — the objects — can make a patch its own positive, so object patches become distinct
from background ones and alike within an object. No names, boxes or masks enter the loss; the views are an
augmentation the renderer can draw, as the mirrored scenes are.

Measured alternatives (docs/components.md): scattered instead of block masks gave far less
object-local features (Fig. 6's same-object similarity 67 vs 82); adding iBOT's EMA-teacher prototype
distillation, or a background-swap invariance term, did not improve the patch probes at this budget.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

from tinygroundinggpt.components.corpus import IMAGE_SIZE, PATCH_SIZE, patch_grid
from tinygroundinggpt.components.training import save_model_16bit, seed_everything, train_steps
from tinygroundinggpt.model.configuration_tinygroundinggpt import IMAGENET_MEAN, IMAGENET_STD

VISIBLE_WEIGHT = 0.25
VIEWS_PER_SCENE = 3  # background views drawn per scene for the view-contrast term


@dataclass
class Dinov2Recipe:
    """Sizes and optimisation of the tiny DINOv2; the defaults are what the shipped checkpoint used."""

    steps: int = 1200
    batch_size: int = 64
    lr: float = 1e-3
    hidden: int = 96
    layers: int = 4
    mask_min: float = 0.5
    mask_max: float = 0.8
    position_weight: float = 1.0  # grid-position term; see the module docstring
    view_weight: float = 0.0  # dense view-contrast term (module docstring); needs ``views``
    view_temperature: float = 0.05
    view_momentum: float = 0.99  # of the EMA teacher
    image_size: int = IMAGE_SIZE  # as ClipRecipe's
    patch_size: int = PATCH_SIZE


@dataclass
class TrainedDinov2:
    model: Dinov2Model
    image_processor: BitImageProcessorPil
    losses: list[float]

    def save(self, out: str | Path) -> None:
        save_model_16bit(self.model, out)
        self.image_processor.save_pretrained(out)


def dinov2_image_processor(image_size: int) -> BitImageProcessorPil:
    """facebook/dinov2-*'s processor (resize shortest edge, centre crop, ImageNet mean/std) at ``image_size``."""
    return BitImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )


def dinov2_config(recipe: Dinov2Recipe) -> Dinov2Config:
    return Dinov2Config(
        hidden_size=recipe.hidden,
        num_hidden_layers=recipe.layers,
        num_attention_heads=4,
        mlp_ratio=4,
        image_size=recipe.image_size,
        patch_size=recipe.patch_size,
    )


def patchify(pixel_values: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, H/p * W/p, C*p*p)`` in the row-major order of the patch tokens."""
    b, c, _, _ = pixel_values.shape
    x = pixel_values.unfold(2, patch, patch).unfold(3, patch, patch)  # B, C, gh, gw, p, p
    return x.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * patch * patch)


def block_patch_mask(batch: int, grid: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    """BEiT/iBOT block-wise masks: rectangles of 2-16 patches (aspect 1/3-3) until a drawn share in [lo, hi]."""
    masks = torch.zeros(batch, grid, grid, dtype=torch.bool)
    for b in range(batch):
        target = round((lo + (hi - lo) * torch.rand(1, generator=gen).item()) * grid * grid)
        while int(masks[b].sum()) < target:
            area = 2 + torch.randint(15, (1,), generator=gen).item()
            aspect = math.exp((torch.rand(1, generator=gen).item() * 2 - 1) * math.log(3))
            h = min(grid, max(1, round(math.sqrt(area * aspect))))
            w = min(grid, max(1, round(math.sqrt(area / aspect))))
            top = torch.randint(grid - h + 1, (1,), generator=gen).item()
            left = torch.randint(grid - w + 1, (1,), generator=gen).item()
            masks[b, top : top + h, left : left + w] = True
    return masks.view(batch, grid * grid)


def patch_positions(grid: int) -> torch.Tensor:
    """``(grid*grid, 2)``: each patch token's (row, column) centre in [-1, 1], in the tokens' row-major order."""
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * 2 - 1
    rows, cols = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], -1)


class ViewContrast(torch.nn.Module):
    """The view-contrast term: a projection head on the student's patch tokens, and an EMA teacher (encoder and head)
    that reads the other view. ``loss`` pairs each student token with the teacher's token at the same grid cell."""

    def __init__(self, student: Dinov2Model, temperature: float, momentum: float, dim: int = 64) -> None:
        super().__init__()
        hidden = student.config.hidden_size
        self.head = torch.nn.Sequential(
            torch.nn.Linear(hidden, 2 * hidden), torch.nn.GELU(), torch.nn.Linear(2 * hidden, dim)
        )
        self.teacher = copy.deepcopy(student).eval()
        self.teacher_head = copy.deepcopy(self.head)
        for p in [*self.teacher.parameters(), *self.teacher_head.parameters()]:
            p.requires_grad_(False)
        self.temperature, self.momentum = temperature, momentum

    @torch.no_grad()
    def update_teacher(self, student: Dinov2Model) -> None:
        online = [*student.parameters(), *self.head.parameters()]
        for s, t in zip(online, [*self.teacher.parameters(), *self.teacher_head.parameters()], strict=True):
            t.mul_(self.momentum).add_(s.detach(), alpha=1 - self.momentum)

    def loss(self, student_tokens: torch.Tensor, view: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
        """``student_tokens`` (B, N, hidden) of images of which ``mirrored`` (B,) were drawn mirrored; ``view``: the
        same scenes, unmirrored, on other backgrounds (B, C, H, W)."""
        b, n, _ = student_tokens.shape
        grid = math.isqrt(n)
        with torch.no_grad():
            target = self.teacher_head(self.teacher(pixel_values=view).last_hidden_state[:, 1:])
            target = target.view(b, grid, grid, -1)
            # a mirrored student token at column j sees what the teacher sees at column grid-1-j
            target = torch.where(mirrored[:, None, None, None], target.flip(2), target).reshape(b * n, -1)
            target = torch.nn.functional.normalize(target, dim=-1)
        query = torch.nn.functional.normalize(self.head(student_tokens).reshape(b * n, -1), dim=-1)
        logits = query @ target.T / self.temperature
        return torch.nn.functional.cross_entropy(logits, torch.arange(b * n))


def train_dinov2(
    images: Sequence[Image.Image],
    *,
    seed: int,
    recipe: Dinov2Recipe | None = None,
    mirrored: Sequence[Image.Image] | None = None,
    views: Sequence[Sequence[Image.Image]] | None = None,
) -> TrainedDinov2:
    """Pretrain on ``images`` (no labels). ``mirrored[i]``, image ``i``'s scene drawn mirrored, stands in for it half
    of the time (the augmentation; without it there is none). ``views[k][i]``: image ``i``'s scene drawn on another
    background (the ``k``-th draw), for the view-contrast term; needed when ``recipe.view_weight`` is set."""
    recipe = recipe or Dinov2Recipe()
    if not images:
        raise ValueError("need at least one image")
    if mirrored is not None and len(mirrored) != len(images):
        raise ValueError(f"need one mirrored image per image, got {len(mirrored)} for {len(images)}")
    if recipe.view_weight and not views:
        raise ValueError("view_weight needs views: each scene drawn on other backgrounds (corpus.background_views)")
    if recipe.view_weight and any(len(v) != len(images) for v in views or ()):
        sizes = [len(v) for v in views or ()]
        raise ValueError(f"each set of views needs one image per image ({len(images)}), got {sizes}")
    grid = patch_grid(images, recipe.image_size, recipe.patch_size)
    gen = seed_everything(seed)
    image_processor = dinov2_image_processor(recipe.image_size)
    pixels = image_processor(list(images), return_tensors="pt").pixel_values
    mirror_pixels = image_processor(list(mirrored), return_tensors="pt").pixel_values if mirrored is not None else None
    model = Dinov2Model(dinov2_config(recipe))
    head = torch.nn.Linear(recipe.hidden, 3 * recipe.patch_size**2)
    # Built only when used, so that runs without the term draw the same random numbers as before it existed.
    where_head = torch.nn.Linear(recipe.hidden, 2) if recipe.position_weight else None
    where = patch_positions(grid)
    # Built only when used, as the position head.
    contrast = ViewContrast(model, recipe.view_temperature, recipe.view_momentum) if recipe.view_weight else None
    view_pixels = None
    if contrast is not None:
        view_pixels = torch.stack([image_processor(list(v), return_tensors="pt").pixel_values for v in views or ()])
    model.train()
    n = len(images)

    def loss_at(step: int) -> torch.Tensor:
        idx = torch.randperm(n, generator=gen)[: recipe.batch_size]
        x = pixels[idx]
        flip = torch.zeros(len(idx), dtype=torch.bool)
        if mirror_pixels is not None:
            # Mirrored scenes come drawn by the world: a mirrored image would run the stripes along the other diagonal.
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], mirror_pixels[idx], x)
        target = patchify(x, recipe.patch_size)
        mask = block_patch_mask(len(x), grid, recipe.mask_min, recipe.mask_max, gen)
        feats = model(pixel_values=x, bool_masked_pos=mask).last_hidden_state[:, 1:]
        err = (head(feats) - target).pow(2).mean(-1)
        weight = torch.where(mask, 1.0, VISIBLE_WEIGHT)
        loss = (err * weight).sum() / weight.sum()
        if where_head is not None:
            loss = loss + recipe.position_weight * (where_head(feats) - where).pow(2).mean()
        if contrast is not None:
            if step:
                contrast.update_teacher(model)  # with the weights the last optimiser step left
            view = view_pixels[torch.randint(len(view_pixels), (len(idx),), generator=gen), idx]
            loss = loss + recipe.view_weight * contrast.loss(feats, view, flip)
        return loss

    params = [*model.parameters(), *head.parameters(), *(where_head.parameters() if where_head else ())]
    params += [*contrast.head.parameters()] if contrast else []
    losses = train_steps(params, loss_at, steps=recipe.steps, lr=recipe.lr, desc="tiny DINOv2")
    model.eval()
    return TrainedDinov2(model, image_processor, losses)
