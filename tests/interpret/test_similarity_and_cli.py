import json

import pytest
import torch
from PIL import Image

from tinygroundinggpt import boxes as bx
from tinygroundinggpt.cli import main
from tinygroundinggpt.demo import SHIPPED
from tinygroundinggpt.interpret import feature_similarity, similarity_panels
from tinygroundinggpt.interpret.cli import GIVEN_BOX_COLOUR


def test_similarity_is_one_at_the_query_and_differs_per_encoder(shipped, scene):
    model, proc = shipped
    image, _, box = scene
    point = (box[0] + 2, box[1] + 2)
    maps = feature_similarity(model, proc, image, point)
    assert set(maps) == {"clip", "dinov2"}
    row, col = bx.pixel_to_cell(*point, 8, *image.size)
    for grid in maps.values():
        assert grid.shape == (8, 8)
        assert grid[row, col] == pytest.approx(1.0, abs=1e-5)  # cosine of the patch with itself
        assert grid.max() <= 1.0 + 1e-5 and grid.min() >= -1.0 - 1e-5
    assert not torch.allclose(maps["clip"], maps["dinov2"], atol=0.05)
    # the two maps are the two halves of the vision tower's output, not two copies of the whole
    feats = model.vision_tower(proc.image_to_tensor(image)[None])[0]
    clip = torch.nn.functional.normalize(feats[:, : model.config.clip_config.hidden_size], dim=-1)
    torch.testing.assert_close(maps["clip"].flatten(), clip @ clip[row * 8 + col])
    panels = similarity_panels(image, maps, point, scale=2)
    assert panels.size == (2 * 2 * image.width, 2 * image.height + 14)
    with pytest.raises(bx.BoxError, match="outside"):
        feature_similarity(model, proc, image, (image.width, 0))


def test_cli_attend_and_similarity_write_pictures(scene, tmp_path, capsys):
    image, prompt, box = scene
    wide = Image.new("RGB", (64, 32), (226, 226, 222))
    wide.paste(image.crop((0, 8, 64, 40)), (0, 0))
    path = tmp_path / "scene.png"
    wide.save(path)
    out = tmp_path / "map.png"
    assert main(["attend", "--model", str(SHIPPED), "--image", str(path), prompt, "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Image.open(out).size == (64, 32)
    assert set(printed) >= {"answer", "boxes", "grid", "span", "tokens"} and len(printed["grid"]) == 8
    for b in printed["boxes"]:
        bx.validate_pixel_box(b, 64, 32)
    answer = "[0.250, 0.300, 0.500, 0.600]"
    args = ["attend", "--image", str(path), prompt, "--answer", answer, "--span", "boxes", "--out", str(out)]
    assert main([*args, "--scale", "3"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["answer"] == answer and printed["boxes"] == [pytest.approx([16.0, 3.2, 32.0, 22.4])]
    assert Image.open(out).size == (192, 96)
    args = ["attend", "--image", str(path), "What is at <box:0>?", "--box", "4", "6", "20", "24", "--answer", "A star."]
    assert main([*args, "--out", str(out)]) == 0  # the question's box is rendered into it and drawn in blue
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tokens"][0] == "A"
    assert Image.open(out).convert("RGB").getpixel((4, 6)) == GIVEN_BOX_COLOUR
    sim = tmp_path / "sim.png"
    assert main(["similarity", "--image", str(path), "--point", "20", "10", "--out", str(sim)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed["similarity"]) == {"clip", "dinov2"} and Image.open(sim).size == (128, 32 + 14)
