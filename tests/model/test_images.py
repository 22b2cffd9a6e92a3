import io

import numpy as np
import pytest
from PIL import Image

from tinygroundinggpt.images import (
    ImageLoadError,
    ImageTooLargeError,
    crop_box,
    draw_boxes,
    load_image,
    pad_to_square,
    tile_sheet,
)


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_modes_become_rgb(mode):
    base = Image.new("RGB", (8, 6), (255, 0, 0))
    img = base.convert(mode) if mode != "I;16" else Image.fromarray(np.full((6, 8), 65535, np.uint16))
    out = load_image(img)
    assert out.mode == "RGB" and out.size == (8, 6)
    if mode == "I;16":
        assert out.getpixel((0, 0)) == (255, 255, 255)  # 16-bit white stays white, not clipped garbage
    if mode in ("P", "RGBA", "CMYK"):
        r, g, b = out.getpixel((0, 0))
        assert r > 200 and g < 60 and b < 60


def test_transparent_pixels_composite_on_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(img).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = load_image(_png(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)
    assert load_image(out) is out  # an upright RGB image passes through uncopied: loading twice costs nothing
    rotated = Image.open(io.BytesIO(_png(img, "JPEG", exif=exif.tobytes())))
    assert load_image(rotated).size == (20, 40)  # an opened image still has its orientation applied
    (tmp_path / "blue.bmp").write_bytes(_png(img, "BMP"))
    with Image.open(tmp_path / "blue.bmp") as lazy:  # opened, pixels not read yet
        upright = load_image(lazy)
    assert upright.resize((4, 2)).getpixel((0, 0)) == (0, 0, 255)  # usable after the caller's file closed


def test_dataset_images_load_as_stored_so_their_annotations_still_fit(tmp_path):
    from tinygroundinggpt.eval.runner import _load
    from tinygroundinggpt.eval.task import Item

    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red on the stored left
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180° to display
    path = tmp_path / "photo.png"
    path.write_bytes(_png(img, "PNG", exif=exif.tobytes()))
    assert load_image(path).getpixel((35, 10)) == (255, 0, 0)  # a user's photo: upright, red now on the right
    stored = load_image(path, exif_orientation=False)
    assert stored.getpixel((5, 10)) == (255, 0, 0)
    # a benchmark item annotated on the stored pixels (as COCO's are, and as LLaVA / lmms-eval read them)
    loaded = _load(Item(id="1", image=str(path), prompt="", reference={}, width=40, height=20))
    assert loaded.getpixel((5, 10)) == (255, 0, 0)
    exif[0x0112] = 6  # a quarter turn: upright, the image would not even fit its annotated size
    path.write_bytes(_png(img, "PNG", exif=exif.tobytes()))
    loaded = _load(Item(id="1", image=str(path), prompt="", reference={}, width=40, height=20))
    assert loaded.size == (40, 20)
    assert load_image(loaded).size == (40, 20)  # loaded again (the pipeline does), it stays as stored


def test_corrupt_exif_keeps_the_decoded_pixels():
    # Pillow raises SyntaxError reading an EXIF block that is not TIFF; the pixels decoded fine.
    out = load_image(_png(Image.new("RGB", (5, 4), (1, 2, 3)), "PNG", exif=b"garbage!"))
    assert out.size == (5, 4) and out.getpixel((0, 0)) == (1, 2, 3)


def test_bad_images_name_the_input(tmp_path):
    with pytest.raises(ImageLoadError, match="missing.png: no such image file"):
        load_image(tmp_path / "missing.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty.png: the image file is empty"):
        load_image(empty)
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0garbage" * 10)
    with pytest.raises(ImageLoadError, match="corrupt.jpg: cannot decode"):
        load_image(bad)
    big = tmp_path / "bomb.png"
    big.write_bytes(_png(Image.new("L", (2000, 2000))))
    with pytest.raises(ImageTooLargeError, match="bomb.png: image has 2000x2000"):
        load_image(big, max_pixels=1_000_000)
    sliver = tmp_path / "sliver.png"  # a few hundred bytes whose padded square would take 10000² pixels
    sliver.write_bytes(_png(Image.new("L", (10_000, 1))))
    with pytest.raises(ImageTooLargeError, match="sliver.png: image of 10000x1 padded to the square"):
        load_image(sliver, max_pixels=1_000_000)
    truncated = tmp_path / "truncated.png"  # a header that opens, pixels that cannot be read
    truncated.write_bytes(_png(Image.new("RGB", (64, 64), (1, 2, 3)))[:60])
    with Image.open(truncated) as lazy, pytest.raises(ImageLoadError, match="<PIL image>: cannot read the image's"):
        load_image(lazy)
    with pytest.raises(ImageTooLargeError, match="<PIL image>: image has 2000x2000"):
        load_image(Image.new("L", (2000, 2000)), max_pixels=1_000_000)
    with pytest.raises(ImageLoadError, match=r"cannot decode image: not in a format .*one of JPEG") as refused:
        load_image(sliver.read_bytes(), formats=("JPEG",))  # a PNG where only JPEG is allowed
    assert "0x" not in str(refused.value)  # Pillow's own message names the in-memory buffer by its address


@pytest.mark.parametrize("size", [(30, 10), (10, 30)])
def test_pad_to_square_centres_and_crop_takes_box_pixels(size):
    w, h = size
    arr = np.arange(w * h * 3, dtype=np.uint32).reshape(h, w, 3) % 251
    img = Image.fromarray(arr.astype(np.uint8))
    sq = np.asarray(pad_to_square(img, (1, 2, 3)))
    side = max(w, h)
    dx, dy = (side - w) // 2, (side - h) // 2
    assert sq.shape == (side, side, 3)
    assert (sq[dy : dy + h, dx : dx + w] == arr).all()
    assert (sq[0, 0] == (1, 2, 3)).all() and (sq[-1, -1] == (1, 2, 3)).all()
    crop = np.asarray(crop_box(img, (2, 3, 7, 9)))
    assert (crop == arr[3:9, 2:7]).all()


def test_draw_boxes_outlines_edge_pixels_and_leaves_the_rest():
    grey = (128, 128, 128)
    img = Image.new("RGB", (20, 10), grey)
    out = np.asarray(draw_boxes(img, [(4, 2, 12, 9), (0, 0, 30, -5)], colour=(255, 0, 0), width=1))
    assert np.asarray(img).tolist() == np.asarray(Image.new("RGB", (20, 10), grey)).tolist()  # input untouched
    red = (out == (255, 0, 0)).all(axis=-1)
    edge = np.zeros_like(red)
    edge[2:9, [4, 11]] = True  # x2/y2 are exclusive: the last column and row inside are 11 and 8
    edge[[2, 8], 4:12] = True
    assert (red == edge).all()  # the empty second box is not drawn


def test_draw_boxes_scales_with_the_image_and_writes_labels():
    img = Image.new("RGB", (8, 6), (0, 0, 0))
    out = draw_boxes(img, [(2, 2, 6, 5)], colour=[(0, 255, 0)], labels=["0"], scale=10)
    arr = np.asarray(out)
    assert out.size == (80, 60)
    assert tuple(arr[20, 20]) == (0, 255, 0) and tuple(arr[49, 59]) == (0, 255, 0)  # corners of the scaled box
    assert tuple(arr[35, 40]) == (0, 0, 0) and tuple(arr[50, 60]) == (0, 0, 0)  # centre and just outside
    assert arr[22:40, 23:40, 1].max() > 100  # the label, inside the outline (anti-aliased: not pure green)
    with pytest.raises(ValueError, match="1 boxes but 1 colours and 2 labels"):
        draw_boxes(img, [(2, 2, 6, 5)], labels=["0", "1"])


def test_draw_boxes_outlines_inside_the_box_and_scales():
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    out = draw_boxes(img, [(2, 2, 6, 6), (0, 0, 0, 5)], colour=(255, 0, 0), scale=2, width=1)
    assert out.size == (40, 20) and img.getpixel((2, 2)) == (0, 0, 0)  # a copy; the empty box is skipped
    assert out.getpixel((4, 4)) == out.getpixel((11, 11)) == (255, 0, 0)  # first and last pixel of the box
    assert out.getpixel((12, 12)) == (0, 0, 0) and out.getpixel((8, 8)) == (0, 0, 0)


def test_tile_sheet_places_tiles_and_captions():
    tiles = [Image.new("RGB", (10, 5), (0, 0, 255))] * 3
    sheet = tile_sheet(tiles, columns=2, cell=10, captions=[["a"], ["b", "c"], []])
    assert sheet.size == (20, 2 * (10 + 2 * 14))
    assert sheet.getpixel((15, 2)) == (0, 0, 255) and sheet.getpixel((5, 38 + 2)) == (0, 0, 255)
    assert sheet.getpixel((15, 38 + 2)) == (255, 255, 255)
