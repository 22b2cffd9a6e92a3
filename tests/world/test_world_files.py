"""write_world: byte-identical output per seed, loadable sample files, refer/POPE files as their
readers expect, no held-out combination in any training file, and the CLI."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from world_resolver import resolve

from tinygroundinggpt.boxes import xywh_to_xyxy
from tinygroundinggpt.cli import main
from tinygroundinggpt.data.format import SHORT_ANSWER_PROMPT, LoadReport, iter_jsonl
from tinygroundinggpt.world import cli as world_cli
from tinygroundinggpt.world.build import write_world
from tinygroundinggpt.world.formats import visible_polygons
from tinygroundinggpt.world.language import plural, referring_expressions
from tinygroundinggpt.world.scene import DEFAULT_HELDOUT, SHAPES, Scene, WorldObject, generate_scene, render_scene
from tinygroundinggpt.world.stages import REC_EVAL_PROMPT, REC_PROMPTS, STAGE_FILES

N_TRAIN, N_EVAL = 40, 16
# pycocotools' mask decoding trips a numpy 2 deprecation inside pycocotools itself; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(out, N_TRAIN, N_EVAL, seed=3, image_size=64, progress=False)
    return out


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_world(world, tmp_path):
    # Another process with another string-hash seed: no output may depend on set or dict hashing order.
    args = f"{str(tmp_path / 'again')!r}, {N_TRAIN}, {N_EVAL}, 3, 64, progress=False"
    code = f"from tinygroundinggpt.world import write_world; write_world({args})"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert _digest(world) == _digest(tmp_path / "again")
    write_world(tmp_path / "other", 4, 2, seed=4, image_size=64, progress=False)
    assert _digest(tmp_path / "other")["stage1.jsonl"] != _digest(world)["stage1.jsonl"]


# `tgg demo --train` trains on worlds these builders write, and benchmarks/results/demo.md records what that chain
# scored: a change to any of these files (a new random draw before the last builder, another wording) means the
# command no longer makes the recorded chain. Change the digests only together with a re-trained, re-recorded chain.
# stage3_presence.jsonl (stage3_again's and stage3_presence's) and stage2_compare.jsonl (the last two pairs') are pinned
# too; new files go last.
PINNED = {
    "scenes.jsonl": "acd1409b37058af9",
    "stage1.jsonl": "3146f767fd0ce4d0",
    "stage2_tc.jsonl": "c40827cd3778d135",
    "stage2_ic.jsonl": "83cab8fabefd9227",
    "stage2_ti.jsonl": "6414ed9af5aaacc3",
    "stage3_conv.jsonl": "6692aaf1d563c793",
    "stage3_desc.jsonl": "3930639977ce32aa",
    "stage3_instruct.jsonl": "57472444ed6fcc90",
    "stage3_presence.jsonl": "ec335f4eb3913dee",
    "stage2_compare.jsonl": "8b4e57f60eefe6e8",
}


def test_files_the_recorded_chain_was_trained_on_are_unchanged(world):
    got = {name: hashlib.sha256((world / name).read_bytes()).hexdigest()[:16] for name in PINNED}
    assert got == PINNED


def test_training_files_load_and_point_at_their_images(world):
    manifest = json.loads((world / "world.json").read_text())
    tasks: Counter[str] = Counter()
    for name in STAGE_FILES:
        report = LoadReport(name)
        samples = list(iter_jsonl(world / name, report))
        assert not report.skipped and len(samples) == manifest["train_files"][name] > 0
        for s in samples:
            with Image.open(world / s.image) as im:
                assert im.size == (s.width, s.height)
            s.check_boxes(s.width, s.height)
            assert "[" not in "".join(m["content"] for m in s.messages)  # no coordinates in text, only <box:i>
            tasks[s.meta["task"].split("/")[0]] += 1
    assert {"caption", "rec", "region", "locate", "region_pick", "name_object", "match_object", "object_relation",
            "conversation", "grounded_description", "instruction", "presence"} <= set(tasks)  # fmt: skip
    prompts = [
        s.messages[0]["content"] for s in iter_jsonl(world / "stage2_tc.jsonl") if s.meta["task"].startswith("rec")
    ]
    assert any(p.startswith("<image>\n" + REC_EVAL_PROMPT.split("{")[0]) for p in prompts)


def test_written_rec_samples_box_the_object_their_expression_denotes(world):
    graphs = {}
    for line in (world / "scenes.jsonl").read_text().splitlines():
        g = json.loads(line)
        objects = [
            WorldObject(o["shape"], o["colour"], o["pattern"], o["size"], 0, 0, 0, 0, tuple(o["box"]))
            for o in g["objects"]
        ]
        graphs[g["image"]] = Scene(g["width"], g["height"], g["background"], "flat", 0, objects)
    templates = [re.compile("^" + re.escape(t).replace(re.escape("{expression}"), "(.+)") + "$") for t in REC_PROMPTS]
    checked: Counter[str] = Counter()
    compared = set()
    for name in ("stage2_tc.jsonl", "stage2_compare.jsonl"):
        for s in iter_jsonl(world / name):
            if not s.meta["task"].startswith("rec/"):
                continue
            prompt = s.messages[0]["content"].removeprefix("<image>\n")
            expression = next(m.group(1) for t in templates if (m := t.match(prompt)))
            scene = graphs[s.image]
            assert [scene.objects[i].box for i in resolve(scene, expression)] == [s.boxes[0]], (s.id, expression)
            checked[name] += 1
            if name == "stage2_compare.jsonl":
                compared.add((s.image, tuple(s.boxes[0]), s.meta["task"]))
    assert checked["stage2_tc.jsonl"] >= N_TRAIN
    # the comparison file holds every ordinal and size expression the scenes have, one per object and kind
    expected = {
        (image, tuple(scene.objects[t].box), f"rec/{e.kind}")
        for image, scene in graphs.items()
        for t in range(len(scene.objects))
        for e in referring_expressions(scene, t, random.Random(0), ("ordinal", "size"))
    }
    assert compared == expected and checked["stage2_compare.jsonl"] == len(expected) > 0


def test_no_heldout_combination_leaks_into_training(world):
    banned = [f"{c} {s}" for c, s in DEFAULT_HELDOUT] + [f"{c} {plural(s)}" for c, s in DEFAULT_HELDOUT]
    for name in STAGE_FILES:
        text = (world / name).read_text().lower()
        for phrase in banned:
            assert not re.search(rf"\b{phrase}\b", text), (name, phrase)
    for line in (world / "scenes.jsonl").read_text().splitlines():
        graph = json.loads(line)
        assert not any((o["colour"], o["shape"]) in DEFAULT_HELDOUT for o in graph["objects"])
    comp = pickle.load(open(world / "eval" / "rec_compositional" / "refs(unc).p", "rb"))
    sents = [s["sent"] for r in comp for s in r["sentences"]]
    assert sents and all(any(f"{c} {s}" in t for c, s in DEFAULT_HELDOUT) for t in sents)


@pytest.mark.parametrize("folder", ["rec", "rec_compositional"])
def test_refer_files_as_the_refer_api_reads_them(world, folder):
    data_dir = world / "eval" / folder
    refs = pickle.load(open(data_dir / "refs(unc).p", "rb"))  # exactly as refer.py's REFER.__init__
    instances = json.load(open(data_dir / "instances.json"))
    assert isinstance(refs, list) and refs
    anns = {a["id"]: a for a in instances["annotations"]}
    imgs = {i["id"]: i for i in instances["images"]}
    cats = {c["id"]: c["name"] for c in instances["categories"]}
    sent_ids = set()
    for ref in refs:
        assert {"ref_id", "ann_id", "image_id", "split", "sentences", "category_id", "file_name", "sent_ids"} <= set(
            ref
        )
        ann = anns[ref["ann_id"]]  # refer.py: refToAnn[ref_id] = Anns[ann_id]
        assert ann["image_id"] == ref["image_id"] and ann["category_id"] == ref["category_id"] in cats
        assert imgs[ref["image_id"]]["file_name"] == ref["file_name"]
        assert ref["split"] in ("val", "test")
        for s in ref["sentences"]:
            assert {"tokens", "raw", "sent_id", "sent"} <= set(s) and s["tokens"] == s["sent"].split()
            assert s["sent_id"] not in sent_ids
            sent_ids.add(s["sent_id"])
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
    coco = COCO(str(data_dir / "instances.json"))
    for ann in coco.loadAnns(coco.getAnnIds()):
        img = coco.loadImgs(ann["image_id"])[0]
        assert (world / "images" / img["file_name"]).is_file()
        mask = coco.annToMask(ann)
        ys, xs = mask.nonzero()
        assert xywh_to_xyxy(ann["bbox"]) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert ann["area"] == mask.sum()
        # refer.py's getMask: polygons if segmentation[0] is a list, decoded masks summed over their third axis
        assert isinstance(ann["segmentation"][0], list)
        rle = mask_utils.frPyObjects(ann["segmentation"], img["height"], img["width"])
        assert np.array_equal(np.sum(mask_utils.decode(rle), axis=2), mask)
        assert sum(mask_utils.area(rle)) == ann["area"]


def test_mask_polygons_rasterise_to_exactly_the_visible_pixels():
    rng = random.Random(5)
    labels = [render_scene(generate_scene(rng, 64)[1])[1] for _ in range(30)]
    labels.append(np.array([[0, 0, -1, 1], [-1, 0, 1, 1], [0, 0, -1, 0]]))  # holes, image edges, a lone pixel
    for lab in labels:
        n = int(lab.max()) + 1
        for i, polygons in enumerate(visible_polygons(lab, n)):
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, *lab.shape))
            assert np.array_equal(mask_utils.decode(rle), (lab == i).astype(np.uint8))


def test_instruct_file_asks_short_answer_questions_as_pope_does(world):
    """LLaVA-1.5's two forms: a sentence answer, or the short-answer instruction and one word; the
    existence questions in the short form are exactly POPE's prompt, with the scene's true answer."""
    scenes = {json.loads(line)["image"]: json.loads(line) for line in (world / "scenes.jsonl").open()}
    forms: Counter[str] = Counter()
    for s in iter_jsonl(world / "stage3_instruct.jsonl"):
        question = s.messages[0]["content"].removeprefix("<image>\n")
        answer = s.messages[1]["content"]
        if question.endswith(SHORT_ANSWER_PROMPT):
            forms["short"] += 1
            assert " " not in answer and not answer.endswith(".")
            exists = re.fullmatch(r"Is there a (\w+) in the image\?", question.removesuffix(SHORT_ANSWER_PROMPT))
            if exists:
                present = exists.group(1) in {o["shape"] for o in scenes[s.image]["objects"]}
                assert answer == ("Yes" if present else "No")
                forms["pope"] += 1
        else:
            forms["sentence"] += 1
            assert answer.endswith(".")
    assert forms["pope"] > 0 and 0.3 < forms["short"] / (forms["short"] + forms["sentence"]) < 0.7


def test_presence_file_asks_every_shape_present_and_as_many_absent(world):
    """One conversation per scene: each shape the scene holds answered "Yes", as many absent ones "No", in POPE's
    short-answer form, the image only before the first question."""
    scenes = {json.loads(line)["image"]: json.loads(line) for line in (world / "scenes.jsonl").open()}
    samples = list(iter_jsonl(world / "stage3_presence.jsonl"))
    assert len(samples) == len(scenes)
    for s in samples:
        shapes = {o["shape"] for o in scenes[s.image]["objects"]}
        users, answers = s.messages[0::2], [m["content"] for m in s.messages[1::2]]
        assert [m["role"] for m in users] == ["user"] * len(users)
        assert users[0]["content"].startswith("<image>\n") and all("<image>" not in m["content"] for m in users[1:])
        asked = []
        for m, answer in zip(users, answers, strict=True):
            question = m["content"].removeprefix("<image>\n").removesuffix(SHORT_ANSWER_PROMPT)
            q = re.fullmatch(r"Is there a (\w+) in the image\?", question)
            assert q and m["content"].endswith(SHORT_ANSWER_PROMPT)
            assert answer == ("Yes" if q.group(1) in shapes else "No")
            asked.append(q.group(1))
        assert len(set(asked)) == len(asked) and shapes <= set(asked)
        assert answers.count("Yes") == len(shapes)
        assert answers.count("No") == min(len(shapes), len(SHAPES) - len(shapes))


def test_pope_files(world):
    instances = json.load(open(world / "eval" / "rec" / "instances.json"))
    cats = {c["id"]: c["name"] for c in instances["categories"]}
    by_file = {i["file_name"]: i["id"] for i in instances["images"]}
    present: dict[str, set[str]] = {f: set() for f in by_file}
    id_to_file = {v: k for k, v in by_file.items()}
    for a in instances["annotations"]:
        present[id_to_file[a["image_id"]]].add(cats[a["category_id"]])
    cooc = Counter((a, b) for p in present.values() for a in p for b in p if a != b)
    negatives, pairs = {}, {}
    for strategy in ("random", "popular", "adversarial"):
        lines = (world / "eval" / "pope" / f"coco_pope_{strategy}.json").read_text().splitlines()
        qs = [json.loads(line) for line in lines]
        assert [q["question_id"] for q in qs] == list(range(1, len(qs) + 1))
        assert all(set(q) == {"question_id", "image", "text", "label"} for q in qs)
        assert Counter(q["label"] for q in qs)["yes"] == len(qs) / 2
        for q in qs:
            obj = re.fullmatch(r"Is there a (\w+) in the image\?", q["text"]).group(1)
            assert (obj in present[q["image"]]) == (q["label"] == "yes")
        negatives[strategy] = [
            (q["image"], re.search(r"a (\w+) in", q["text"]).group(1)) for q in qs if q["label"] == "no"
        ]
        pairs[strategy] = [(qs[i], qs[i + 1]) for i in range(0, len(qs), 2)]  # each positive, then its negative
    # Adversarial, as POPE's code: each positive's negative co-occurs with it at least as often as any absent shape
    # not already asked about in that image.
    used: dict[str, set[str]] = {}
    for pos, neg in pairs["adversarial"]:
        assert pos["label"] == "yes" and neg["label"] == "no" and pos["image"] == neg["image"]
        image, shape = pos["image"], re.search(r"a (\w+) in", pos["text"]).group(1)
        chosen = re.search(r"a (\w+) in", neg["text"]).group(1)
        left = {c for c in cats.values() if c not in present[image] and c not in used.setdefault(image, set())}
        assert cooc[(shape, chosen)] == max(cooc[(shape, c)] for c in left)
        used[image].add(chosen)
    assert negatives["random"] != negatives["popular"] != negatives["adversarial"]


def test_cli_writes_world_and_contact_sheet(tmp_path):
    parser = argparse.ArgumentParser()
    world_cli.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["world", "--out", str(tmp_path), "--n-train", "4", "--n-eval", "2", "--sheet", "4", "--quiet"]
    )
    assert args.func(args) == 0
    manifest = json.loads((tmp_path / "world.json").read_text())
    assert manifest["n_train"] == 4 and (tmp_path / "eval" / "pope" / "coco_pope_adversarial.json").is_file()
    with Image.open(tmp_path / "contact_sheet.png") as sheet:
        assert sheet.size == (4 * 256, 256)


@pytest.mark.parametrize(("low", "high"), [(0, 3), (4, 3), (2, 10)])
def test_cli_refuses_object_counts_the_world_cannot_describe(tmp_path, low, high):
    # ten or more objects crashed midway (counts are written as words, up to nine)
    argv = ["world", "--out", str(tmp_path / "w"), "--min-objects", str(low), "--max-objects", str(high), "--quiet"]
    with pytest.raises(SystemExit, match="tgg world: objects per scene: need 1 <= min_objects <= max_objects <= 9"):
        main(argv)
    assert not (tmp_path / "w").exists()
    write_world(tmp_path / "nine", n_train=3, n_eval=0, min_objects=9, max_objects=9, progress=False)
