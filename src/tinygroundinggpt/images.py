"""Image loading, the geometric image operations the model needs (pad to square, crop a box), and the
drawing behind every picture the project makes (:func:`draw_boxes`, :func:`tile_sheet`).

Coordinates come from :mod:`tinygroundinggpt.boxes`; this module only moves pixels.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from tinygroundinggpt.boxes import (
    Box,
    BoxError,
    norm_to_pixel,
    pad_offsets,
    pixel_to_norm,
    square_side,
    to_inclusive_corners,
    to_int_box,
    validate_pixel_box,
)

# Decompression bombs: Pillow warns above this and errors above twice this. We make both an error
# with the file's name, and let callers lower the cap (the server does).
DEFAULT_MAX_PIXELS = 89_478_485
RGB = tuple[int, int, int]
TRUE_BOX_COLOUR: RGB = (0, 200, 0)
PREDICTED_BOX_COLOUR: RGB = (230, 0, 0)
CAPTION_LINE = 14  # px per caption line under a sheet's tiles


class ImageLoadError(ValueError):
    """An image that cannot be used, with its name and the reason."""


class ImageTooLargeError(ImageLoadError):
    """An image with more pixels than allowed (a server answers 413 rather than 400)."""


EXIF_ORIENTATION = 0x0112


def load_image(
    source: str | Path | bytes | Image.Image,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    formats: Sequence[str] | None = None,
    exif_orientation: bool = True,
) -> Image.Image:
    """Open an image from a path, bytes or PIL image and return it as 8-bit RGB, upright.

    Handles grayscale, 16-bit, palette, RGBA/LA (composited on white), CMYK and EXIF orientation. A dataset's image is
    loaded with ``exif_orientation=False``, as stored: its annotations (boxes, width and height) were made on the stored
    pixels, which is also what LLaVA, the refer API and lmms-eval read (plain PIL); a user's photo is turned upright.
    A missing, empty, corrupt or oversized image raises :class:`ImageLoadError` naming it
    (:class:`ImageTooLargeError` when it, or the square it is padded to, has more than ``max_pixels`` pixels).
    ``formats`` limits the decoders Pillow may try (e.g. a server accepts only common raster formats).
    """
    if name:
        label = name
    elif isinstance(source, (str, Path)):
        label = str(source)
    else:
        label = "<PIL image>" if isinstance(source, Image.Image) else "<image bytes>"
    if isinstance(source, Image.Image):
        img = source
        _check_pixels(img, max_pixels, label)
        try:  # a caller's lazily opened image may be returned as it is: its pixels must outlive the caller's file
            img.load()
        except Exception as exc:
            raise ImageLoadError(f"{label}: cannot read the image's pixels ({type(exc).__name__}: {exc})") from exc
    else:
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise ImageLoadError(f"{label}: no such image file")
            data = path.read_bytes()
        else:
            data = bytes(source)
        if not data:
            raise ImageLoadError(f"{label}: the image file is empty")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data), formats=formats)
                _check_pixels(img, max_pixels, label)
                img.load()
        except ImageLoadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLargeError(f"{label}: image too large ({exc})") from exc
        except UnidentifiedImageError as exc:  # its message names an in-memory buffer by address
            allowed = f" (one of {', '.join(formats)} is expected)" if formats else ""
            raise ImageLoadError(f"{label}: cannot decode image: not in a format that can be read{allowed}") from exc
        except Exception as exc:  # PIL raises many types for corrupt data
            raise ImageLoadError(f"{label}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a corrupt EXIF block says nothing about the pixels, which decoded: show them as stored
        orientation = 1
    if orientation != 1 and exif_orientation:  # exif_transpose copies even upright images
        img = ImageOps.exif_transpose(img)
    elif orientation != 1:
        # the stored pixels are the image now: without the tag, loading it again (as the pipeline does) keeps them
        img = img.copy()
        exif = img.getexif()
        del exif[EXIF_ORIENTATION]
        img.info["exif"] = exif.tobytes()
    return to_rgb(img)


def _check_pixels(img: Image.Image, max_pixels: int, label: str) -> None:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageLoadError(f"{label}: image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageTooLargeError(f"{label}: image has {w}x{h} = {w * h} pixels, more than the limit {max_pixels}")
    # The model pads every image to a square first: a few-byte 200000x1 image would ask for a 40-gigapixel canvas.
    side = square_side(w, h)
    if side * side > max_pixels:
        raise ImageTooLargeError(
            f"{label}: image of {w}x{h} padded to the square the model sees has {side}x{side} = {side * side} "
            f"pixels, more than the limit {max_pixels}"
        )


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB with the colours a viewer would show."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def mean_fill(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """An encoder's normalisation mean as an 8-bit fill colour (padding reads as zero after normalising)."""
    return tuple(int(round(m * 255)) for m in mean)  # type: ignore[return-value]


def pad_to_square(img: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Centre ``img`` on a square canvas of colour ``fill`` (LLaVA's ``expand2square``)."""
    w, h = img.size
    side = square_side(w, h)
    if w == h:
        return img
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(img, pad_offsets(w, h))
    return canvas


def crop_box(img: Image.Image, box: Box) -> Image.Image:
    """The pixels of a pixel-frame box (validated against the image; fractional edges rounded outward)."""
    validate_pixel_box(box, img.width, img.height, what="object box")
    return img.crop(to_int_box(box))


def draw_boxes(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    *,
    colour: RGB | Sequence[RGB] = PREDICTED_BOX_COLOUR,
    labels: Sequence[str] | None = None,
    scale: float = 1.0,
    width: int = 2,
) -> Image.Image:
    """A copy of ``image`` scaled by ``scale`` with ``boxes`` (pixel frame of ``image``) outlined.

    ``colour`` is one colour for every box or one per box. The outline lies on each box's own edge
    pixels, inside the box; ``labels[i]`` is written inside box ``i``'s top-left corner. Scaling is
    nearest-neighbour so tiny images stay crisp when enlarged. A box that is empty once clamped to
    the image, or inverted (a model can write either), is not drawn. ``image`` is left unchanged.
    """
    colours = [colour] * len(boxes) if colour and isinstance(colour[0], int) else list(colour)
    if len(colours) != len(boxes) or (labels is not None and len(labels) != len(boxes)):
        raise ValueError(f"{len(boxes)} boxes but {len(colours)} colours and {len(labels or boxes)} labels")
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    out = to_rgb(image).resize(size, Image.NEAREST)
    draw = ImageDraw.Draw(out)
    for i, box in enumerate(boxes):
        try:
            box = validate_pixel_box(box, image.width, image.height, repair=True)
        except BoxError:
            continue
        x1, y1, x2, y2 = to_inclusive_corners(norm_to_pixel(pixel_to_norm(box, image.width, image.height), *size))
        draw.rectangle((x1, y1, x2, y2), outline=colours[i], width=width)
        if labels is not None:
            draw.text((x1 + 3, y1 + 2), labels[i], fill=colours[i])
    return out


def tile_sheet(
    tiles: Sequence[Image.Image],
    *,
    columns: int = 4,
    cell: int | tuple[int, int] = 224,
    captions: Sequence[Sequence[str]] | None = None,
) -> Image.Image:
    """Tiles (each at most ``cell`` px a side, or (width, height)) on a white sheet, row by row, each with its
    caption lines under it."""
    cell_w, cell_h = (cell, cell) if isinstance(cell, int) else cell
    lines = max((len(c) for c in captions), default=0) if captions else 0
    row_h = cell_h + CAPTION_LINE * lines
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * cell_w, rows * row_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, tile in enumerate(tiles):
        ox, oy = (k % columns) * cell_w, (k // columns) * row_h
        sheet.paste(tile, (ox, oy))
        for j, text in enumerate(captions[k] if captions else ()):
            draw.text((ox + 2, oy + cell_h + 2 + (CAPTION_LINE - 2) * j), text, fill=(0, 0, 0))
    return sheet
