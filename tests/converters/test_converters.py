"""Each converter reads a small file in its dataset's published layout and writes the expected samples."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from tinygroundinggpt.cli import main
from tinygroundinggpt.data.converters import common
from tinygroundinggpt.data.converters.common import iter_json_array
from tinygroundinggpt.data.converters.refcoco import load_refs
from tinygroundinggpt.data.format import LoadReport, iter_jsonl


def read(path: Path) -> list[dict]:
    report = LoadReport(str(path))
    samples = [s.to_json() for s in iter_jsonl(path, report)]
    assert not report.skipped
    return samples


def test_iter_json_array_streams_across_chunk_borders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = [{"a": "x" * 20, "b": [1, 2, {"c": "]"}]}, 3, "s,]", [], {"u": "é"}]
    path = tmp_path / "a.json"
    path.write_text(" \n" + json.dumps(data, indent=1, ensure_ascii=False))
    monkeypatch.setattr(common, "_CHUNK", 5)
    assert list(iter_json_array(path)) == data
    path.write_text("[1, 2")
    with pytest.raises(ValueError):
        list(iter_json_array(path))


def test_refcoco(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    refs = [
        {"ref_id": 7, "ann_id": 100, "image_id": 1, "split": "train", "category_id": 1, "sent_ids": [70, 71],
         "file_name": "COCO_train2014_000000000001_100.jpg",
         "sentences": [{"sent_id": 70, "sent": "man on left", "raw": "Man on left.", "tokens": ["man", "on", "left"]},
                       {"sent_id": 71, "sent": "guy in red", "raw": "guy in red", "tokens": ["guy", "in", "red"]}]},
        {"ref_id": 8, "ann_id": 101, "image_id": 1, "split": "testA", "category_id": 1, "sent_ids": [80],
         "file_name": "COCO_train2014_000000000001_101.jpg",
         "sentences": [{"sent_id": 80, "sent": "right man", "raw": "right man", "tokens": ["right", "man"]}]},
    ]  # fmt: skip
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    instances = {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 640, "height": 480}],
        "annotations": [
            {"id": 100, "image_id": 1, "bbox": [10.5, 20.0, 100.0, 200.0], "category_id": 1, "area": 1, "iscrowd": 0},
            {"id": 101, "image_id": 1, "bbox": [600.0, 0.0, 40.2, 50.0], "category_id": 1, "area": 1, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    }
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    out = tmp_path / "rc.jsonl"
    args = [
        "convert",
        "refcoco+",
        "--refs",
        str(tmp_path / "refs(unc).p"),
        "--instances",
        str(tmp_path / "instances.json"),
    ]
    assert main([*args, "--split", "train", "--out", str(out), "--image-prefix", "train2014/", "--no-progress"]) == 0
    assert "4 samples written" in capsys.readouterr().out
    samples = read(out)
    assert [s["id"] for s in samples] == [
        "refcoco+-7-70-rec",
        "refcoco+-7-70-reg",
        "refcoco+-7-71-rec",
        "refcoco+-7-71-reg",
    ]
    assert samples[0] == {
        "id": "refcoco+-7-70-rec",
        "image": "train2014/COCO_train2014_000000000001.jpg",
        "width": 640, "height": 480,
        "boxes": [[10.5, 20.0, 110.5, 220.0]],  # COCO xywh → pixel corners
        "messages": [{"role": "user", "content": "<image>\nOutput the coordinate of man on left"},
                     {"role": "assistant", "content": "<box:0>"}],
        "meta": {"source": "refcoco+", "split": "train", "ref_id": 7},
    }  # fmt: skip
    assert samples[1]["messages"][1]["content"] == "man on left"
    main([*args, "--split", "testA", "--tasks", "rec", "--out", str(out), "--no-progress"])
    (s,) = read(out)
    assert s["boxes"] == [[600.0, 0.0, 640.0, 50.0]]  # 0.2 px past the border: clamped


def test_refs_loader_refuses_code(tmp_path: Path) -> None:
    (tmp_path / "evil.p").write_bytes(pickle.dumps([Path("x")]))
    with pytest.raises(ValueError, match=r"evil\.p: not a refer API refs file .UnpicklingError: refusing pathlib"):
        load_refs(tmp_path / "evil.p")
    (tmp_path / "cut.p").write_bytes(pickle.dumps([{"ref_id": 1}])[:-3])  # a download cut short
    with pytest.raises(ValueError, match=r"cut\.p: not a refer API refs file"):
        load_refs(tmp_path / "cut.p")


def _vg_files(tmp_path: Path) -> None:
    image_data = [
        {"image_id": 1, "width": 800, "height": 600, "url": "https://cs.stanford.edu/people/rak248/VG_100K/1.jpg",
         "coco_id": None, "flickr_id": None},
        {"image_id": 2, "width": 400, "height": 300, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/2.jpg",
         "coco_id": 5, "flickr_id": None},
    ]  # fmt: skip
    regions = [
        {"id": 1, "regions": [
            {"region_id": 11, "width": 100, "height": 50, "image_id": 1, "phrase": "a  white clock", "y": 10, "x": 20},
            {"region_id": 12, "width": 0, "height": 50, "image_id": 1, "phrase": "nothing", "y": 10, "x": 20}]},
        {"id": 2, "regions": [
            {"region_id": 21, "width": 120, "height": 80, "image_id": 2, "phrase": "green tree", "y": 250, "x": 300}]},
    ]  # fmt: skip
    relationships = [
        {"image_id": 1, "relationships": [
            {"relationship_id": 5, "predicate": "ON", "synsets": ["along.r.01"],
             "subject": {"object_id": 1, "x": 0, "y": 0, "w": 50, "h": 60, "name": "clock", "synsets": []},
             "object": {"object_id": 2, "x": 10, "y": 40, "w": 300, "h": 100, "names": ["wall"], "synsets": []}}]},
        {"image_id": 9, "relationships": [
            {"relationship_id": 6, "predicate": "has", "subject": {"x": 0, "y": 0, "w": 5, "h": 5, "name": "a"},
             "object": {"x": 0, "y": 0, "w": 5, "h": 5, "name": "b"}}]},
    ]  # fmt: skip
    for name, data in (("image_data", image_data), ("region_descriptions", regions), ("relationships", relationships)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))


def test_visual_genome_regions_and_relationships(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _vg_files(tmp_path)
    common_args = ["--image-data", str(tmp_path / "image_data.json"), "--no-progress"]
    main(["convert", "vg-regions", str(tmp_path / "region_descriptions.json"), "--out", str(tmp_path / "r.jsonl"),
          *common_args])  # fmt: skip
    assert "skipped: box zero_area 1" in capsys.readouterr().out  # region 21, 20 px past the border, is clamped
    samples = read(tmp_path / "r.jsonl")
    assert [s["id"] for s in samples] == ["vg-region-11-0", "vg-region-11-1", "vg-region-21-0", "vg-region-21-1"]
    assert samples[0]["image"] == "VG_100K/1.jpg" and samples[0]["boxes"] == [[20.0, 10.0, 120.0, 60.0]]
    assert samples[0]["messages"][1]["content"] == "a white clock"
    assert samples[1]["messages"][0]["content"] == "<image>\nIn this image, where is a white clock located?"
    assert samples[2]["image"] == "VG_100K_2/2.jpg"
    assert samples[2]["boxes"] == [[300.0, 250.0, 400.0, 300.0]]  # crosses the border: clamped
    main(["convert", "vg-relationships", str(tmp_path / "relationships.json"), "--out", str(tmp_path / "rel.jsonl"),
          *common_args])  # fmt: skip
    (rel,) = read(tmp_path / "rel.jsonl")
    assert rel["boxes"] == [[0.0, 0.0, 50.0, 60.0], [10.0, 40.0, 310.0, 140.0]]
    assert rel["messages"][1]["content"] == "clock <box:0> on wall <box:1>."


FLICKR_SENTENCES = (
    "[/EN#1/people Two young guys] with [/EN#3/bodyparts shaggy hair] look at [/EN#5/bodyparts their hands] "
    "while hanging out in [/EN#8/scene the yard] .\n"
    "[/EN#1/people Two friends] enjoy time spent together .\n"
    "A photo in [/EN#8/scene the yard] .\n"
)
FLICKR_XML = """<annotation>
<filename>1000092795.jpg</filename>
<size><width>500</width><height>375</height><depth>3</depth></size>
<object><name>1</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>100</xmax><ymax>200</ymax></bndbox></object>
<object><name>1</name><bndbox><xmin>201</xmin><ymin>11</ymin><xmax>300</xmax><ymax>375</ymax></bndbox></object>
<object><name>3</name><name>5</name><bndbox><xmin>51</xmin><ymin>11</ymin><xmax>80</xmax><ymax>40</ymax></bndbox></object>
<object><name>3</name><bndbox><xmin>400</xmin><ymin>11</ymin><xmax>900</xmax><ymax>40</ymax></bndbox></object>
<object><name>8</name><nobndbox>0</nobndbox><scene>1</scene></object>
</annotation>
"""


def test_flickr30k_entities(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "Sentences").mkdir()
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Sentences" / "1000092795.txt").write_text(FLICKR_SENTENCES)
    (tmp_path / "Annotations" / "1000092795.xml").write_text(FLICKR_XML)
    (tmp_path / "train.txt").write_text("1000092795\n")
    args = ["convert", "flickr30k", "--sentences", str(tmp_path / "Sentences"), "--annotations",
            str(tmp_path / "Annotations"), "--ids", str(tmp_path / "train.txt"), "--image-prefix", "flickr30k-images/",
            "--no-progress"]  # fmt: skip
    main([*args, "--out", str(tmp_path / "f.jsonl")])
    # entity 3's second box reaches 400 px past the 500 px image: left out, the image and its other boxes kept
    assert "2 samples written; skipped: box outside 1, sentence without a boxed phrase 1" in capsys.readouterr().out
    first, second = read(tmp_path / "f.jsonl")
    # 1-based inclusive xml corners → 0-based exclusive pixels; one entity may have several boxes.
    assert first["boxes"] == [[0.0, 0.0, 100.0, 200.0], [200.0, 10.0, 300.0, 375.0], [50.0, 10.0, 80.0, 40.0]]
    assert first["messages"][1]["content"] == (
        "Two young guys <box:0> <box:1> with shaggy hair <box:2> look at their hands <box:2> "
        "while hanging out in the yard ."
    )
    assert first["image"] == "flickr30k-images/1000092795.jpg" and (first["width"], first["height"]) == (500, 375)
    assert second["messages"][1]["content"] == "Two friends <box:0> <box:1> enjoy time spent together ."
    main([*args, "--manifest", "--out", str(tmp_path / "m.jsonl")])
    (rec,) = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    # One object per entity: "two young guys" names its two boxes together, not either one (synthesis would ask
    # "Describe the object located within the region <box:0>" of one guy and answer "two young guys").
    assert rec["objects"] == [
        {"name": "two young guys", "box": [0.0, 0.0, 300.0, 375.0]},
        {"name": "shaggy hair", "box": [50.0, 10.0, 80.0, 40.0]},
        {"name": "their hands", "box": [50.0, 10.0, 80.0, 40.0]},
    ]
    assert rec["captions"][1] == "Two friends enjoy time spent together ."


def test_llava_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    records = [
        {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
            {"from": "gpt", "value": "The bus in the image is white and red."},
            {"from": "human", "value": "Where is the man? Give [x1, y1, x2, y2]."},
            {"from": "gpt", "value": "[0.12, 0.30, 0.56, 0.91]"}]},
        {"id": "text-1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"id": "GCC_1", "image": "GCC_1.jpg", "conversations": [
            {"from": "human", "value": "Describe the image.\n<image>"}, {"from": "gpt", "value": "a dog"}]},
        {"id": "noimg", "image": "a.jpg", "conversations": [
            {"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "a cat"}]},
        {"id": "bad", "conversations": [{"from": "human", "value": "<image>\nx"}, {"from": "gpt", "value": "y"}]},
        {"id": "bad2", "image": "b.jpg", "conversations": [{"from": "robot", "value": "x"}]},
        {"id": "two-images", "image": ["a.jpg", "b.jpg"], "conversations": [
            {"from": "human", "value": "<image>\nx"}, {"from": "gpt", "value": "y"}]},
        {"id": "object", "image": "a.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is <object>?"}, {"from": "gpt", "value": "y"}]},
        {"id": "eot", "conversations": [
            {"from": "human", "value": "x"}, {"from": "gpt", "value": "y<|im_end|>"}]},
    ]  # fmt: skip
    (tmp_path / "mix.json").write_text(json.dumps(records, indent=2))
    main(["convert", "llava-mix665k", str(tmp_path / "mix.json"), "--out", str(tmp_path / "l.jsonl"), "--no-progress"])
    assert (
        "skipped: 'image' is not a string 1, <image> without an image 1, "
        "text holds [x1, y1, x2, y2] boxes in an unknown frame (--keep-box-text keeps them) 1, "
        "text holds a bare <object>, which no object image backs (write <object:i>) 1, "
        "text holds the chat control token <|im_end|> 1, turn with an unknown speaker or no text 1"
    ) in capsys.readouterr().out
    samples = read(tmp_path / "l.jsonl")
    assert [s["id"] for s in samples] == ["llava-mix665k-text-1", "llava-mix665k-GCC_1", "llava-mix665k-noimg"]
    assert "image" not in samples[0]
    assert samples[1]["messages"][0]["content"] == "Describe the image.\n<image>"
    assert samples[2]["messages"][0]["content"] == "<image>\nWhat is it?"
    main(["convert", "llava-mix665k", str(tmp_path / "mix.json"), "--out", str(tmp_path / "k.jsonl"), "--no-progress",
          "--keep-box-text"])  # fmt: skip
    kept = read(tmp_path / "k.jsonl")[0]
    assert kept["messages"][3] == {"role": "assistant", "content": "[0.12, 0.30, 0.56, 0.91]"}  # stays text
    assert kept["boxes"] == [] and kept["image"] == "coco/train2017/000000033471.jpg"


def test_coco_manifest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    instances = {
        "images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": 640, "height": 480},
                   {"id": 10, "file_name": "COCO_train2014_000000000010.jpg", "width": 100, "height": 100}],
        "annotations": [
            {"id": 2, "image_id": 9, "bbox": [1.0, 2.0, 30.0, 40.0], "category_id": 18, "iscrowd": 0},
            {"id": 1, "image_id": 9, "bbox": [100.0, 50.0, 20.0, 20.0], "category_id": 1, "iscrowd": 0},
            {"id": 3, "image_id": 9, "bbox": [0.0, 0.0, 640.0, 480.0], "category_id": 1, "iscrowd": 1},
            {"id": 4, "image_id": 10, "bbox": [5.0, 5.0, 0.0, 10.0], "category_id": 1, "iscrowd": 0},
            {"id": 6, "image_id": 9, "bbox": [600.0, 400.0, 500.0, 500.0], "category_id": 1, "iscrowd": 0},  # far out
            {"id": 7, "image_id": 9, "bbox": [620.0, 10.0, 20.4, 10.0], "category_id": 18, "iscrowd": 0},  # 0.4 px
            {"id": 8, "image_id": 9, "bbox": [50.0, 50.0, -10.0, 10.0], "category_id": 1, "iscrowd": 0},  # negative
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 18, "name": "dog", "supercategory": "animal"}],
    }  # fmt: skip
    captions = {
        "images": instances["images"],
        "annotations": [{"id": 5, "image_id": 9, "caption": "A man  and a dog."}],
    }
    (tmp_path / "instances_train2014.json").write_text(json.dumps(instances))
    (tmp_path / "captions_train2014.json").write_text(json.dumps(captions))
    main(["convert", "coco-manifest", str(tmp_path / "instances_train2014.json"), "--captions",
          str(tmp_path / "captions_train2014.json"), "--out", str(tmp_path / "m.jsonl"), "--no-progress"])  # fmt: skip
    out = capsys.readouterr().out
    assert (
        "1 sample written; skipped: box inverted 1, box outside 1, box zero_area 1, crowd annotation 1, "
        "image without objects 1" in out
    )
    # each reason says where, so that the record can be looked up
    assert "box outside: instances_train2014.json annotation 6" in out
    assert "image without objects: instances_train2014.json image 10" in out
    (rec,) = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert rec == {
        "id": "coco-9", "image": "COCO_train2014_000000000009.jpg", "width": 640, "height": 480,
        "objects": [{"name": "person", "box": [100.0, 50.0, 120.0, 70.0]},
                    {"name": "dog", "box": [1.0, 2.0, 31.0, 42.0]},
                    {"name": "dog", "box": [620.0, 10.0, 640.0, 20.0]}],
        "captions": ["A man and a dog."],
    }  # fmt: skip


def _ref(ref_id: int, image_id: int, split: str, ann_id: int) -> dict:
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": 1,
            "sentences": [{"sent_id": ref_id * 10, "sent": f"thing {ref_id}", "raw": "", "tokens": []}]}  # fmt: skip


def _refer_root(tmp_path: Path) -> Path:
    """refer/data as published: RefCOCO (unc) uses COCO images 1 (train), 2 (val), 3 (testA); RefCOCOg (umd)
    trains on images 2 (RefCOCO's val: a cross-dataset leak) and 4, and tests on 5."""
    root = tmp_path / "refer"
    files = {
        "refcoco/refs(unc).p": [_ref(1, 1, "train", 100), _ref(2, 2, "val", 101), _ref(3, 3, "testA", 102)],
        "refcocog/refs(umd).p": [_ref(4, 2, "train", 101), _ref(5, 4, "train", 103), _ref(6, 5, "test", 104)],
        # RefCOCOg's Google split divides objects, not images, and is no benchmark: its val image 4 stays in
        "refcocog/refs(google).p": [_ref(7, 4, "val", 103)],
    }
    images = [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "width": 100, "height": 100} for i in range(1, 6)]
    anns = [{"id": 99 + i, "image_id": i, "bbox": [1.0, 2.0, 30.0, 40.0], "category_id": 1, "iscrowd": 0}
            for i in range(1, 6)]  # fmt: skip
    instances = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}
    for rel, refs in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(pickle.dumps(refs, protocol=2))
        (root / rel).with_name("instances.json").write_text(json.dumps(instances))
    return root


def test_refcoco_converts_the_train_split_unless_asked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _refer_root(tmp_path)
    args = ["convert", "refcoco", "--refs", str(root / "refcoco/refs(unc).p"), "--instances",
            str(root / "refcoco/instances.json"), "--tasks", "rec", "--no-progress"]  # fmt: skip
    main([*args, "--out", str(tmp_path / "train.jsonl")])
    assert [s["meta"]["split"] for s in read(tmp_path / "train.jsonl")] == ["train"]
    with pytest.warns(UserWarning, match="evaluation data"):
        main([*args, "--split", "val", "--out", str(tmp_path / "val.jsonl")])
    assert [s["meta"]["ref_id"] for s in read(tmp_path / "val.jsonl")] == [2]


def test_refcocog_train_leaves_out_refcoco_eval_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _refer_root(tmp_path)
    main(["convert", "refcocog", "--refs", str(root / "refcocog/refs(umd).p"), "--instances",
          str(root / "refcocog/instances.json"), "--exclude-refer-eval", str(root), "--out",
          str(tmp_path / "g.jsonl"), "--no-progress"])  # fmt: skip
    assert "2 samples written; skipped: on a RefCOCO/+/g val/test image 2 (1 RefCOCO/+/g val/test images excluded)" in (
        capsys.readouterr().out
    )
    assert {s["meta"]["ref_id"] for s in read(tmp_path / "g.jsonl")} == {5}


def test_coco_leaves_out_refer_eval_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _refer_root(tmp_path)
    main(["convert", "coco-manifest", str(root / "refcoco/instances.json"), "--exclude-refer-eval", str(root),
          "--out", str(tmp_path / "m.jsonl"), "--no-progress"])  # fmt: skip
    assert (
        "skipped: on a RefCOCO/+/g val/test image 3 (3 RefCOCO/+/g val/test images excluded)" in capsys.readouterr().out
    )
    assert [json.loads(x)["id"] for x in (tmp_path / "m.jsonl").read_text().splitlines()] == ["coco-1", "coco-4"]


def test_visual_genome_leaves_out_refer_eval_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _vg_files(tmp_path)  # VG image 2 is COCO image 5: RefCOCOg's test
    root = _refer_root(tmp_path)
    args = ["--image-data", str(tmp_path / "image_data.json"), "--exclude-refer-eval", str(root), "--no-progress"]
    main(["convert", "vg-regions", str(tmp_path / "region_descriptions.json"), "--out", str(tmp_path / "r.jsonl"),
          *args])  # fmt: skip
    assert "on a RefCOCO/+/g val/test image 2 (1 RefCOCO/+/g val/test images excluded)" in capsys.readouterr().out
    assert {s["image"] for s in read(tmp_path / "r.jsonl")} == {"VG_100K/1.jpg"}
    image_data = json.loads((tmp_path / "image_data.json").read_text())
    image_data[0]["coco_id"] = 3  # now VG image 1, the one with a relationship, is RefCOCO's testA
    (tmp_path / "image_data.json").write_text(json.dumps(image_data))
    main(["convert", "vg-relationships", str(tmp_path / "relationships.json"), "--out", str(tmp_path / "rel.jsonl"),
          *args])  # fmt: skip
    out = capsys.readouterr().out
    assert "0 samples written; skipped: " in out and "on a RefCOCO/+/g val/test image 1 " in out


def test_llava_leaves_out_refer_eval_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _refer_root(tmp_path)
    turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]
    images = ["coco/train2017/000000000002.jpg", "train2014/COCO_train2014_000000000003.jpg",
              "coco/train2017/000000000001.jpg", "ocr_vqa/images/000000000002.jpg", "gqa/images/2.jpg"]  # fmt: skip
    records = [{"id": str(i), "image": im, "conversations": turns} for i, im in enumerate(images)]
    (tmp_path / "mix.json").write_text(json.dumps(records))
    main(["convert", "llava-mix665k", str(tmp_path / "mix.json"), "--exclude-refer-eval", str(root), "--out",
          str(tmp_path / "l.jsonl"), "--no-progress"])  # fmt: skip
    out = capsys.readouterr().out
    assert "3 samples written; skipped: on a RefCOCO/+/g val/test image 2 " in out
    assert "excluding 3 images of the val/test splits of " in out and "refs(google)" not in out
    assert [s["image"] for s in read(tmp_path / "l.jsonl")] == images[2:]  # not COCO: not matched
    assert "warning: 1 records on Visual Genome images (gqa/, VG_100K/) were not checked" in out
    # with VG's image_data.json, GQA's and VG's images (VG ids) are matched through their COCO ids
    image_data = [{"image_id": 2, "coco_id": 3, "width": 8, "height": 8}, {"image_id": 7, "coco_id": None}]
    (tmp_path / "image_data.json").write_text(json.dumps(image_data))
    records += [{"id": "7", "image": "vg/VG_100K/7.jpg", "conversations": turns}]
    (tmp_path / "mix.json").write_text(json.dumps(records))
    main(["convert", "llava-mix665k", str(tmp_path / "mix.json"), "--exclude-refer-eval", str(root), "--out",
          str(tmp_path / "l.jsonl"), "--no-progress", "--vg-image-data", str(tmp_path / "image_data.json"),
          ])  # fmt: skip
    out = capsys.readouterr().out
    assert "3 samples written; skipped: on a RefCOCO/+/g val/test image 3 " in out and "warning" not in out
    assert [s["image"] for s in read(tmp_path / "l.jsonl")] == [*images[2:4], "vg/VG_100K/7.jpg"]
    # LLaVA-Instruct's bare names are COCO names once the prefix is on
    bare = [{"id": str(i), "image": f"{i:012d}.jpg", "conversations": turns} for i in (1, 2, 4)]
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    main(["convert", "llava", str(tmp_path / "bare.json"), "--image-prefix", "coco/train2017/", "--exclude-refer-eval",
          str(root), "--out", str(tmp_path / "b.jsonl"), "--no-progress"])  # fmt: skip
    assert [s["image"] for s in read(tmp_path / "b.jsonl")] == ["coco/train2017/000000000001.jpg",
                                                                 "coco/train2017/000000000004.jpg"]  # fmt: skip


def test_refer_eval_root_without_refs_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"no refs\(unc\)\.p or refs\(umd\)\.p"):
        main(["convert", "coco-manifest", str(tmp_path / "x.json"), "--exclude-refer-eval", str(tmp_path), "--out",
              str(tmp_path / "m.jsonl")])  # fmt: skip


def test_llava_record_with_an_image_but_no_human_turn_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    turns = [{"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "A cat."}]
    records = [
        {"id": "a", "image": "a.jpg", "conversations": turns},
        {"id": "gpt-only", "image": "b.jpg", "conversations": [{"from": "gpt", "value": "A dog."}]},
        {"id": "c", "image": "c.jpg", "conversations": turns},
    ]
    (tmp_path / "chat.json").write_text(json.dumps(records))
    main(["convert", "llava", str(tmp_path / "chat.json"), "--out", str(tmp_path / "l.jsonl"), "--no-progress"])
    out = capsys.readouterr().out
    assert "2 samples written; skipped: an image but no human turn to put it in 1" in out
    assert "\n  an image but no human turn to put it in: chat.json[1]" in out  # where the record is
    assert [s["id"] for s in read(tmp_path / "l.jsonl")] == ["llava-a", "llava-c"]


def test_visual_genome_skips_incomplete_records_and_says_where(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _vg_files(tmp_path)
    image_data = json.loads((tmp_path / "image_data.json").read_text())
    image_data.append({"image_id": 3, "height": 300, "url": "https://cs.stanford.edu/people/rak248/VG_100K/3.jpg"})
    (tmp_path / "image_data.json").write_text(json.dumps(image_data))
    regions = json.loads((tmp_path / "region_descriptions.json").read_text())
    regions[0]["regions"].append({"region_id": 13, "width": 10, "image_id": 1, "phrase": "no height", "y": 1, "x": 2})
    # no image_id, and no entry id to fall back on
    regions.append({"regions": [{"region_id": 31, "width": 5, "height": 5, "phrase": "cat", "x": 0, "y": 0}]})
    regions.append({"id": 3, "regions": [{"region_id": 32, "width": 5, "height": 5, "phrase": "cat", "x": 0, "y": 0,
                                          "image_id": 3}]})  # fmt: skip
    (tmp_path / "region_descriptions.json").write_text(json.dumps(regions))
    relationships = json.loads((tmp_path / "relationships.json").read_text())
    rel = relationships[0]["relationships"][0]
    relationships[0]["relationships"].insert(0, {**rel, "relationship_id": 4, "subject": {"name": "clock"}})
    (tmp_path / "relationships.json").write_text(json.dumps(relationships))
    common_args = ["--image-data", str(tmp_path / "image_data.json"), "--no-progress"]
    main(["convert", "vg-regions", str(tmp_path / "region_descriptions.json"), "--out", str(tmp_path / "r.jsonl"),
          *common_args])  # fmt: skip
    out = capsys.readouterr().out
    assert (
        "4 samples written; skipped: box zero_area 1, image not in image_data.json 1, "
        "image_data entry without a number 'width' 1, region without a number 'height' 1, "
        "region without an integer 'image_id' 1"
    ) in out
    assert "image_data entry without a number 'width': image_data.json[2]" in out
    assert "region without a number 'height': region_descriptions.json[0].regions[2]" in out
    assert "region without an integer 'image_id': region_descriptions.json[2].regions[0]" in out
    assert "image not in image_data.json: region_descriptions.json[3].regions[0]" in out  # image 3 had no width
    assert [s["id"] for s in read(tmp_path / "r.jsonl")][::2] == ["vg-region-11-0", "vg-region-21-0"]
    main(["convert", "vg-relationships", str(tmp_path / "relationships.json"), "--out", str(tmp_path / "rel.jsonl"),
          *common_args])  # fmt: skip
    out = capsys.readouterr().out
    assert "subject without a number 'x': relationships.json[0].relationships[0]" in out
    assert [s["id"] for s in read(tmp_path / "rel.jsonl")] == ["vg-relation-5"]


def test_visual_genome_box_entirely_outside_the_image_counts_as_outside(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _vg_files(tmp_path)
    regions = [
        {
            "id": 1,
            "regions": [
                {"region_id": 14, "width": 100, "height": 50, "image_id": 1, "phrase": "far right", "y": 10, "x": 5000}
            ],
        }
    ]
    (tmp_path / "region_descriptions.json").write_text(json.dumps(regions))
    main(["convert", "vg-regions", str(tmp_path / "region_descriptions.json"), "--out", str(tmp_path / "r.jsonl"),
          "--image-data", str(tmp_path / "image_data.json"), "--no-progress"])  # fmt: skip
    assert "0 samples written; skipped: box outside 1" in capsys.readouterr().out  # on an 800 px wide image


@pytest.mark.parametrize("dataset", ["refcoco", "coco-manifest", "vg-regions"])
def test_malformed_json_file_is_an_error_naming_the_file(tmp_path: Path, dataset: str) -> None:
    root = _refer_root(tmp_path)
    _vg_files(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1, "regions": []},\n{"id": 2, "regions": [}\n]')
    args = {
        "refcoco": ["refcoco", "--refs", str(root / "refcoco/refs(unc).p"), "--instances", str(bad)],
        "coco-manifest": ["coco-manifest", str(bad)],
        "vg-regions": ["vg-regions", str(bad), "--image-data", str(tmp_path / "image_data.json")],
    }[dataset]
    with pytest.raises(SystemExit, match=r"bad\.json.* not valid JSON") as exc:
        main(["convert", *args, "--out", str(tmp_path / "o.jsonl"), "--no-progress"])
    assert str(bad) in str(exc.value)


def test_refcoco_split_the_file_does_not_hold_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _refer_root(tmp_path)
    args = ["convert", "refcoco", "--refs", str(root / "refcoco/refs(unc).p"), "--instances",
            str(root / "refcoco/instances.json"), "--tasks", "rec", "--no-progress",
            "--out", str(tmp_path / "o.jsonl")]  # fmt: skip
    for split in ("test", "testa"):  # RefCOCO has testA and testB; split names are case-sensitive
        with pytest.raises(SystemExit, match=rf"has no split '{split}'; its splits: testA, train, val"):
            main([*args, "--split", split])
    assert not (tmp_path / "o.jsonl").exists()
    with pytest.warns(UserWarning, match="split 'all'"):
        main([*args, "--split", "all"])
    assert [s["meta"]["split"] for s in read(tmp_path / "o.jsonl")] == ["train", "val", "testA"]
