"""A patch grid drawn as a heat map over the original image.

The encoders see the image padded to a centred square (:mod:`tinygroundinggpt.boxes`), so the grid covers
that square: it is upsampled to the square's side and the padding is cropped away, leaving the part that
lies over the original pixels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tinygroundinggpt import boxes as bx
from tinygroundinggpt.images import to_rgb


def minmax(grid: torch.Tensor) -> torch.Tensor:
    """``grid`` rescaled to [0, 1] (its minimum → 0, maximum → 1; all zeros when it is constant)."""
    g = grid.detach().float().cpu()
    span = g.max() - g.min()
    return (g - g.min()) / span if span > 0 else torch.zeros_like(g)


def overlay_grid(image: Image.Image, grid: torch.Tensor, *, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """``image`` blended with ``grid`` (h×w over the padded square) in a matplotlib colour map.

    Colours span the range of the part over the image (min → bottom of the map, max → top): the padding is
    cropped away, and a peak there (the paper's corner anchors lie in it on a non-square image) would leave the
    visible part uniformly cold. Each patch keeps the sharp-edged block it covers (nearest upsampling), so a
    block is one patch, not an interpolation.
    """
    import matplotlib

    w, h = image.size
    side = bx.square_side(w, h)
    dx, dy = bx.pad_offsets(w, h)
    square = F.interpolate(grid.detach().float().cpu()[None, None], size=(side, side), mode="nearest")[0, 0]
    heat = matplotlib.colormaps[cmap](minmax(square[dy : dy + h, dx : dx + w]).numpy())[..., :3]
    base = np.asarray(to_rgb(image), dtype=np.float32) / 255.0
    blended = (1.0 - alpha) * base + alpha * heat
    return Image.fromarray(np.round(blended * 255.0).astype(np.uint8))
