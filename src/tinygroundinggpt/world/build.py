"""Write a whole synthetic world to a folder.

Public API (stable): :func:`write_world` and :func:`contact_sheet`. ``write_world`` produces::

    out_dir/
      world.json                      manifest: parameters, vocabulary, held-out combinations, file counts
      images/train_000000.png ...     training scenes
      images/eval_000000.png ...      in-distribution evaluation scenes (REC + POPE)
      images/comp_000000.png ...      compositional scenes (each holds a held-out colour+shape object)
      stage1.jsonl  stage2_tc.jsonl  stage2_ic.jsonl  stage2_ti.jsonl
      stage3_conv.jsonl  stage3_desc.jsonl  stage3_instruct.jsonl  stage3_presence.jsonl
      scenes.jsonl                    scene graph of each training image: objects (attributes, pixel box),
                                      occlusion pairs, relation triples [a, relation, b] (object indices)
      eval/rec/refs(unc).p, eval/rec/instances.json                    splits "val" and "test"
      eval/rec_compositional/refs(unc).p, .../instances.json           splits "val" and "test"
      eval/pope/coco_pope_{random,popular,adversarial}.json
      contact_sheet.png               only with ``sheet`` > 0

Data-file image paths are relative to the data file's folder (``images/...``); the refer and POPE files
name images by file name, found in ``images/`` (``world.json`` says so as ``image_dir``).

Everything is a function of ``seed`` (and the other arguments): scene ``i`` of each part draws from its
own ``random.Random`` keyed by (seed, part, i), so the same call writes byte-identical files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from tinygroundinggpt.data.format import Sample
from tinygroundinggpt.images import draw_boxes, tile_sheet
from tinygroundinggpt.world.formats import (
    POPE_STRATEGIES,
    REFS_FILE,
    EvalImage,
    visible_polygons,
    write_pope,
    write_refer,
)
from tinygroundinggpt.world.language import KINDS, MAX_OBJECTS, referring_expressions, relation_triples
from tinygroundinggpt.world.scene import (
    BACKGROUNDS,
    COLOURS,
    DEFAULT_HELDOUT,
    PATTERNS,
    SHAPES,
    SIZES,
    Scene,
    SceneConfig,
    generate_scene,
    render_scene,
)
from tinygroundinggpt.world.stages import REC_EVAL_PROMPT, STAGE_FILES

FORMAT_VERSION = 1
SCENES_FILE = "scenes.jsonl"


def _rng(seed: int, part: str, i: int) -> random.Random:
    # String seeds are hashed with SHA-512 by random.Random: stable across runs and platforms.
    return random.Random(f"tgg-world/{seed}/{part}/{i}")


def _save_png(image: Image.Image, path: Path) -> None:
    image.save(path, format="PNG", compress_level=3)


def check_object_range(min_objects: int, max_objects: int) -> None:
    """Refuse a scene size the world cannot describe (counts are words up to nine) or an empty range."""
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise ValueError(
            f"objects per scene: need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got {min_objects} and "
            f"{max_objects}"
        )


def write_world(
    out_dir: str | Path,
    n_train: int,
    n_eval: int,
    seed: int = 0,
    image_size: int = 64,
    *,
    min_objects: int = 2,
    max_objects: int = 5,
    occlusion: float = 0.3,
    n_compositional: int | None = None,
    heldout: tuple[tuple[str, str], ...] = DEFAULT_HELDOUT,
    sheet: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate ``n_train`` training scenes, ``n_eval`` evaluation scenes and ``n_compositional``
    (default ``n_eval``) compositional scenes; write all files (see the module docstring) and return
    the manifest that is also written as ``world.json``.

    ``min_objects``/``max_objects`` set the curriculum (``1, 1`` gives one-object scenes). ``sheet`` > 0
    also writes ``contact_sheet.png`` showing that many of the first training scenes with their boxes.
    """
    check_object_range(min_objects, max_objects)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    held = frozenset(heldout)
    common = {"min_objects": min_objects, "max_objects": max_objects, "occlusion": occlusion, "heldout": held}
    n_comp = n_eval if n_compositional is None else n_compositional
    bar = tqdm(total=n_train + n_eval + n_comp, desc="world", unit="scene", disable=not progress)

    counts: dict[str, int] = {}
    shown: list[tuple[Image.Image, Scene]] = []
    handles = {name: (out / name).open("w", encoding="utf-8") for name in (*STAGE_FILES, SCENES_FILE)}
    try:
        config = SceneConfig(**common, heldout_mode="exclude")
        for i in range(n_train):
            image, scene = generate_scene(_rng(seed, "train", i), image_size, config)
            rel = f"images/train_{i:06d}.png"
            _save_png(image, out / rel)
            graph = {"image": rel, **scene.to_json(), "triples": [list(t) for t in relation_triples(scene)]}
            handles[SCENES_FILE].write(json.dumps(graph) + "\n")
            if i < sheet:
                shown.append((image, scene))
            text_rng = _rng(seed, "train-text", i)
            for name, build in STAGE_FILES.items():
                for sample in build(scene, rel, f"train-{i:06d}", text_rng):
                    handles[name].write(_jsonl(sample))
                    counts[name] = counts.get(name, 0) + 1
            bar.update()
    finally:
        for fh in handles.values():
            fh.close()

    eval_images = _eval_images(
        out, "eval", n_eval, seed, image_size, SceneConfig(**common, heldout_mode="exclude"), bar
    )
    comp_config = SceneConfig(**common, heldout_mode="require")
    comp_images = _eval_images(out, "comp", n_comp, seed, image_size, comp_config, bar)
    bar.close()
    if shown:
        contact_sheet(shown).save(out / "contact_sheet.png")
    rec = write_refer(out / "eval" / "rec", eval_images)
    rec_comp = write_refer(out / "eval" / "rec_compositional", comp_images)
    pope = write_pope(out / "eval" / "pope", eval_images, seed)

    manifest = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "image_size": image_size,
        "n_train": n_train,
        "n_eval": n_eval,
        "n_compositional": n_comp,
        "min_objects": min_objects,
        "max_objects": max_objects,
        "occlusion": occlusion,
        "image_dir": "images",
        "vocabulary": {
            "shapes": list(SHAPES),
            "colours": list(COLOURS),
            "patterns": list(PATTERNS),
            "sizes": list(SIZES),
            "backgrounds": list(BACKGROUNDS),
            "expression_kinds": list(KINDS),
        },
        "heldout_combinations": [list(c) for c in heldout],
        "rec_eval_prompt": REC_EVAL_PROMPT,
        "scenes": SCENES_FILE,
        "train_files": {name: counts.get(name, 0) for name in STAGE_FILES},
        "eval": {
            "rec": {"folder": "eval/rec", "refs": REFS_FILE, "sentences": rec},
            "rec_compositional": {"folder": "eval/rec_compositional", "refs": REFS_FILE, "sentences": rec_comp},
            "pope": {
                "folder": "eval/pope",
                "files": {s: f"coco_pope_{s}.json" for s in POPE_STRATEGIES},
                "questions": pope,
            },
        },
    }
    (out / "world.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _jsonl(sample: Sample) -> str:
    return json.dumps(sample.to_json(), ensure_ascii=False) + "\n"


def _eval_images(
    out: Path, part: str, n: int, seed: int, image_size: int, config: SceneConfig, bar: tqdm
) -> list[EvalImage]:
    """Scenes with expressions for REC/POPE; the first half is split "val", the rest "test"."""
    images = []
    compositional = config.heldout_mode == "require"
    for i in range(n):
        image, scene = generate_scene(_rng(seed, part, i), image_size, config)
        file_name = f"{part}_{i:06d}.png"
        _save_png(image, out / "images" / file_name)
        text_rng = _rng(seed, f"{part}-text", i)
        exprs = []
        for t, obj in enumerate(scene.objects):
            # The compositional split asks only about held-out objects, naming their colour and shape.
            if compositional and (obj.colour, obj.shape) not in config.heldout:
                continue
            exprs += referring_expressions(scene, t, text_rng, require_colour=compositional)
        split = "val" if i < (n + 1) // 2 else "test"
        polygons = visible_polygons(render_scene(scene)[1], len(scene.objects))
        images.append(EvalImage(i + 1, file_name, scene, polygons, exprs, split))
        bar.update()
    return images


def contact_sheet(scenes: list[tuple[Image.Image, Scene]], columns: int = 4, cell: int = 256) -> Image.Image:
    """Scenes side by side, each scaled to fit ``cell`` px, with every object's box and index drawn."""
    tiles = [
        draw_boxes(image, [o.box for o in scene.objects], colour=(255, 0, 255),
                   labels=[str(i) for i in range(len(scene.objects))], scale=cell / max(scene.width, scene.height))
        for image, scene in scenes
    ]  # fmt: skip
    return tile_sheet(tiles, columns=columns, cell=cell)
