"""A synthesis manifest drawn from the built-in synthetic world, so ``tgg synth`` runs with no dataset.

The world's scene graph is the "existing annotation" of the paper's recognition step: every object is
named by its attributes (``small striped red circle``) with its pixel box, and the world's caption is
the image description material of Figs. 11-12. Scenes come from their own seeded stream, distinct
from the streams of the world's training and evaluation files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tqdm import tqdm

from tinygroundinggpt.world import caption, generate_scene
from tinygroundinggpt.world.language import descriptor_text


def write_world_manifest(
    out_dir: str | Path, n: int, *, seed: int = 0, image_size: int = 96, progress: bool = False
) -> Path:
    """Write ``out_dir/images/synth_XXXXXX.png`` and ``out_dir/manifest.jsonl``; returns the manifest."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in tqdm(range(n), desc="world scenes", disable=not progress):
        rng = random.Random(f"tgg-synth-world/{seed}/{i}")
        image, scene = generate_scene(rng, image_size)
        name = f"images/synth_{i:06d}.png"
        image.save(out / name)
        objects = [{"name": descriptor_text(o.attributes(), o.shape), "box": list(o.box)} for o in scene.objects]
        record = {"id": f"world-{seed}-{i}", "image": name, "width": scene.width, "height": scene.height,
                  "objects": objects, "captions": [caption(scene, rng)]}  # fmt: skip
        lines.append(json.dumps(record) + "\n")
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(lines), encoding="utf-8")
    return manifest
