"""Small hand-made images and manifests for the synthesis tests."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60)}
# (width, height, [(colour, box)]) per image; boxes in pixels, far apart so object images barely overlap.
SCENES = [
    (160, 120, [("red", (10, 10, 60, 60)), ("blue", (90, 50, 150, 110))]),
    (120, 160, [("green", (20, 20, 100, 70)), ("red", (30, 90, 90, 150))]),
    (100, 100, [("blue", (5, 5, 45, 45)), ("green", (55, 55, 95, 95)), ("red", (60, 5, 95, 40))]),
]


def write_corpus(root: Path, scenes: list = SCENES) -> Path:
    """Images under ``root/images`` and ``root/manifest.jsonl`` with annotation boxes and a caption."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (w, h, objs) in enumerate(scenes):
        img = Image.new("RGB", (w, h), (230, 230, 225))
        draw = ImageDraw.Draw(img)
        for colour, box in objs:
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=COLOURS[colour])
        img.save(root / "images" / f"{i}.png")
        lines.append(
            {
                "id": f"img{i}",
                "image": f"images/{i}.png",
                "objects": [{"name": f"{c} box", "box": list(b)} for c, b in objs],
                "captions": [" and ".join(f"a {c} box" for c, _ in objs) + "."],
            }
        )
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest
