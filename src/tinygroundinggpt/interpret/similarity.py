"""Per-encoder patch-feature similarity (paper Fig. 6): how alike the vision tower finds one patch and every other.

The vision tower's output is CLIP's patch features followed channel-wise by DINOv2's; the split is CLIP's
hidden size. Each encoder's map is the cosine similarity of the query patch's features to every patch's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from tinygroundinggpt import boxes as bx
from tinygroundinggpt.api import ImageLike
from tinygroundinggpt.images import draw_boxes, load_image, tile_sheet
from tinygroundinggpt.interpret.heatmap import overlay_grid
from tinygroundinggpt.model import TinyGroundingGPTForConditionalGeneration, TinyGroundingGPTProcessor

QUERY_COLOUR = (255, 255, 255)


@torch.no_grad()
def feature_similarity(
    model: TinyGroundingGPTForConditionalGeneration,
    processor: TinyGroundingGPTProcessor,
    image: ImageLike,
    point_xy: tuple[float, float],
) -> dict[str, torch.Tensor]:
    """``{"clip": grid, "dinov2": grid}`` (``"clip"`` only for a CLIP-only model): cosine similarity in
    [-1, 1] of the patch under the original-image pixel ``point_xy`` to every patch of the padded square."""
    img = load_image(image)
    cfg = model.config
    grid = cfg.grid_size
    row, col = bx.pixel_to_cell(*point_xy, grid, img.width, img.height)
    pixels = processor.image_to_tensor(img)[None].to(next(model.parameters()).device)
    feats = model.vision_tower(pixels)[0].float()  # [grid², clip_dim + dino_dim]
    clip_dim = cfg.clip_config.hidden_size
    parts = {"clip": feats[:, :clip_dim]}
    if cfg.use_dino:
        parts["dinov2"] = feats[:, clip_dim:]
    out = {}
    for name, f in parts.items():
        f = F.normalize(f, dim=-1)
        out[name] = (f @ f[row * grid + col]).reshape(grid, grid).cpu()
    return out


def similarity_panels(
    image: ImageLike, maps: dict[str, torch.Tensor], point_xy: tuple[float, float], *, scale: float = 1.0
) -> Image.Image:
    """One heat map per encoder side by side, the query patch outlined in white, the encoder's name under it."""
    img = load_image(image)
    grid = next(iter(maps.values())).shape[0]
    query = bx.grid_cell_box(*bx.pixel_to_cell(*point_xy, grid, img.width, img.height), grid, img.width, img.height)
    tiles = [draw_boxes(overlay_grid(img, m), [query], colour=QUERY_COLOUR, scale=scale) for m in maps.values()]
    return tile_sheet(tiles, columns=len(tiles), cell=tiles[0].size, captions=[[name] for name in maps])
