import math
import random

import pytest

from tinygroundinggpt import boxes as bx


@pytest.mark.parametrize("size", [(640, 480), (300, 700), (256, 256), (1, 999)])
def test_pixel_model_round_trip_within_one_pixel(size):
    w, h = size
    rng = random.Random(0)
    for _ in range(200):
        x1, x2 = sorted(rng.uniform(0, w) for _ in range(2))
        y1, y2 = sorted(rng.uniform(0, h) for _ in range(2))
        model = bx.pixel_to_model((x1, y1, x2, y2), w, h)
        text = bx.format_box(model)
        back = bx.model_to_pixel(bx.parse_first_box(text), w, h)
        assert all(abs(a - b) <= 1.0 for a, b in zip(back, (x1, y1, x2, y2), strict=True))


def test_model_frame_is_centred_padded_square():
    # 200x100 image: padded to 200x200 with 50 px above and below.
    assert bx.pixel_to_model((0, 0, 200, 100), 200, 100) == (0.0, 0.25, 1.0, 0.75)
    # 100x200 image: 50 px left and right.
    assert bx.pixel_to_model((0, 0, 100, 200), 100, 200) == (0.25, 0.0, 0.75, 1.0)
    # A model box in the padding is clamped back into the image.
    assert bx.model_to_pixel((0.0, 0.0, 1.0, 1.0), 200, 100) == (0.0, 0.0, 200.0, 100.0)


def test_norm_frame_differs_from_model_frame_on_non_square():
    box = (50, 20, 150, 80)
    assert bx.pixel_to_norm(box, 200, 100) == (0.25, 0.2, 0.75, 0.8)
    assert bx.model_to_norm(bx.pixel_to_model(box, 200, 100), 200, 100) == pytest.approx((0.25, 0.2, 0.75, 0.8))


def test_format_three_decimals_and_parse_several():
    assert bx.format_box((0.1234, 0.5, 1.2, -0.1)) == "[0.123, 0.500, 1.000, 0.000]"
    text = "a [0.1, 0.2, 0.3, 0.4] and [ 0.5,0.6 , 0.7,0.8 ] but not [1, 2, 3] nor [a, b, c, d]"
    assert bx.parse_boxes(text) == [(0.1, 0.2, 0.3, 0.4), (0.5, 0.6, 0.7, 0.8)]
    assert bx.parse_first_box("no box here") is None
    assert bx.parse_first_box("[.5, 1., 0, 2]") == (0.5, 1.0, 0.0, 2.0)


def test_validation_names_the_problem_and_repair_is_explicit():
    with pytest.raises(bx.BoxError, match="inverted"):
        bx.validate_pixel_box((10, 10, 5, 20), 100, 100)
    with pytest.raises(bx.BoxError, match="outside"):
        bx.validate_pixel_box((10, 10, 120, 20), 100, 100)
    with pytest.raises(bx.BoxError, match="zero area"):
        bx.validate_pixel_box((10, 10, 10, 20), 100, 100)
    with pytest.raises(bx.BoxError, match="4 numbers"):
        bx.validate_pixel_box((1, 2, 3), 100, 100)
    with pytest.raises(bx.BoxError, match="non-finite"):
        bx.validate_pixel_box((1, 2, math.nan, 4), 100, 100)
    assert bx.validate_pixel_box((-5, 10, 50, 120), 100, 100, repair=True) == (0, 10, 50, 100)
    with pytest.raises(bx.BoxError, match="inverted") as inverted:  # never swapped into a box nobody drew
        bx.validate_pixel_box((50, 120, -5, 10), 100, 100, repair=True)
    assert inverted.value.kind == "inverted"
    with pytest.raises(bx.BoxError, match="entirely outside the 100x100 image") as away:  # not clamped to nothing
        bx.validate_pixel_box((150, 10, 170, 20), 100, 100, repair=True)
    assert away.value.kind == "outside"
    for flat in ((0, 0, 0, 10), (5, 10, 8, 10)):  # on the border, no area: that is what is wrong with them
        with pytest.raises(bx.BoxError, match="zero area"):
            bx.validate_pixel_box(flat, 20, 10, repair=True)
    assert bx.union_box([(10, 20, 30, 40), (5, 25, 20, 60)]) == (5, 20, 30, 60)
    with pytest.raises(bx.BoxError):
        bx.union_box([])
    # A dataset's box may overshoot by rounding, not by a frame or size mix-up.
    assert bx.validate_pixel_box((99.4, 0, 100.6, 5), 100, 100, repair=True, max_overshoot=1) == (99.4, 0, 100, 5)
    with pytest.raises(bx.BoxError, match="lies 460 px outside the 640x480 image") as far:
        bx.validate_pixel_box((600, 400, 1100, 620), 640, 480, repair=True, max_overshoot=1)
    assert far.value.kind == "outside"


def test_iou_and_helpers():
    assert bx.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert bx.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert bx.iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert bx.iou((10, 10, 0, 0), (0, 0, 10, 10)) == 0.0  # inverted prediction scores zero
    assert bx.xywh_to_xyxy((1, 2, 3, 4)) == (1, 2, 4, 6)
    assert bx.xyxy_to_xywh((1, 2, 4, 6)) == (1, 2, 3, 4)
    assert bx.center((0, 0, 10, 20)) == (5, 10)
    assert bx.to_int_box((1.2, 2.7, 3.1, 4.0)) == (1, 2, 4, 4)
    assert bx.to_inclusive_corners((1.2, 2.7, 3.1, 4.0)) == (1, 2, 3, 3)
    assert bx.expand_box((10, 10, 20, 20), 0.5, 100, 100) == (5, 5, 25, 25)
    assert bx.expand_box((0, 0, 20, 20), 0.5, 100, 100) == (0, 0, 30, 30)


def test_jitter_stays_valid_and_is_seeded():
    a = bx.jitter_box((10, 10, 50, 40), random.Random(1), 0.1, 60, 50)
    b = bx.jitter_box((10, 10, 50, 40), random.Random(1), 0.1, 60, 50)
    assert a == b
    assert bx.validate_pixel_box(a, 60, 50)
    assert bx.iou(a, (10, 10, 50, 40)) > 0.6


def test_box_spans_locate_the_parsed_boxes():
    text = "left [0.1, 0.2, 0.3, 0.4] then [0.5,0.6,0.7,0.8]."
    spans = bx.box_spans(text)
    assert [bx.parse_first_box(text[a:b]) for a, b in spans] == bx.parse_boxes(text)
    assert text[spans[1][1] :] == "."


def test_a_number_too_long_to_be_finite_is_no_box():
    huge = "9" * 400  # float() of it is inf: a degenerate answer, not a box to convert
    text = f"[{huge}, 0.1, 0.2, 0.3] then [0.5, 0.6, 0.7, 0.8]"
    assert bx.parse_boxes(text) == [(0.5, 0.6, 0.7, 0.8)] and bx.parse_first_box(text) == (0.5, 0.6, 0.7, 0.8)
    assert len(bx.box_spans(text)) == 1


def test_model_text_to_norm_rewrites_only_the_boxes():
    # 200x100 image: model-frame y 0.25..0.75 is the whole height; lmms-eval normalises by 200 and 100.
    text = "It is [0.250, 0.250, 0.750, 0.750], not [0.000, 0.500, 1.000, 0.750]."
    assert (
        bx.model_text_to_norm(text, 200, 100) == "It is [0.250, 0.000, 0.750, 1.000], not [0.000, 0.500, 1.000, 1.000]."
    )
    assert bx.model_text_to_norm("no box", 200, 100) == "no box"
    # a box reaching into the padding is written past 0 or 1, as the model said it: scorers do not clamp
    assert bx.model_text_to_norm("[0.000, 0.000, 1.000, 0.500]", 200, 100) == "[0.000, -0.500, 1.000, 0.500]"
    assert bx.model_to_norm((0.0, 0.0, 1.0, 0.5), 200, 100) == (0.0, -0.5, 1.0, 0.5)
    assert bx.model_text_to_norm("[3, 5, 7, 9] and [0.250, 0.250, 0.750, 0.750]", 200, 100) == (
        "[3, 5, 7, 9] and [0.250, 0.000, 0.750, 1.000]"
    )


def test_grid_cells_map_through_the_padded_square():
    # 64x32 image on a 64 px square: 16 px of padding above and below, 8 px cells of an 8x8 grid.
    assert bx.grid_cell_box(2, 3, 8, 64, 32) == (24.0, 0.0, 32.0, 8.0)
    assert bx.area(bx.grid_cell_box(1, 3, 8, 64, 32)) == 0.0  # entirely in the top padding
    assert bx.pixel_to_cell(25.0, 0.0, 8, 64, 32) == (2, 3)
    assert bx.pixel_to_cell(63.9, 31.9, 8, 64, 32) == (5, 7)
    with pytest.raises(bx.BoxError, match="outside"):
        bx.pixel_to_cell(10, 32, 8, 64, 32)


def test_inclusive_corners_are_the_last_pixels_touched():
    assert bx.to_inclusive_corners((3, 4, 6, 8)) == (3, 4, 5, 7)
    assert bx.to_inclusive_corners((3.5, 4.2, 5.1, 7.9)) == (3, 4, 5, 7)


@pytest.mark.parametrize(("box", "shown"), [(5, "int: 5"), ({"x": 1}, "dict: {'x': 1}"), ("1234", "str: '1234'")])
def test_a_value_that_is_no_list_of_numbers_is_a_box_error_naming_it(box, shown):
    # A manifest can hold anything where a box belongs; "1234" must not read as four digits.
    with pytest.raises(bx.BoxError, match=f"must be a list of 4 numbers .*got {shown}$") as err:
        bx.validate_pixel_box(box, 100, 100, what="objects[0].box")
    assert err.value.kind == "malformed" and str(err.value).startswith("objects[0].box ")


def test_number_groups_find_coordinates_in_any_spelling():
    text = "a [0.1, 0.2, 0.3, 0.4], [0.1 0.2 0.3 0.4], (0.1, 0.2, 0.3, 0.4), [1, 2, 3, 4, 5] and (0.5; 0.6)"
    assert bx.number_groups(text) == [
        "[0.1, 0.2, 0.3, 0.4]",
        "[0.1 0.2 0.3 0.4]",
        "(0.1, 0.2, 0.3, 0.4)",
        "[1, 2, 3, 4, 5]",
        "(0.5; 0.6)",
    ]
    # One number in brackets, words or a range are ordinary text: an instance label, a footnote, years.
    assert bx.number_groups("person (2) [1] [red box, blue box] (1990-2000) <box:0>") == []
