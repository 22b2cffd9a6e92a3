"""Shared by the eval tests: RefCOCO-family files in the refer API's layout."""

from __future__ import annotations

import json
import pickle

import pytest


@pytest.fixture
def write_refcoco():
    """``write(root, dataset, refs_name)``: one 640x480 image, ref 7 (testA, two expressions, COCO box
    [10, 20, 100, 50]) and ref 8 (val, one expression)."""

    def write_refcoco(root, dataset="refcoco", refs_name="refs(unc).p"):
        folder = root / dataset
        folder.mkdir(parents=True)
        refs = [
            {"ref_id": 7, "ann_id": 70, "image_id": 1, "split": "testA", "category_id": 1, "file_name": "x",
             "sentences": [{"sent_id": 100, "sent": "left man", "raw": "Left man", "tokens": ["left", "man"]},
                           {"sent_id": 101, "sent": "man on left", "raw": "man on left", "tokens": []}]},
            {"ref_id": 8, "ann_id": 71, "image_id": 1, "split": "val", "category_id": 1, "file_name": "x",
             "sentences": [{"sent_id": 102, "sent": "dog", "raw": "dog", "tokens": ["dog"]}]},
        ]  # fmt: skip
        with (folder / refs_name).open("wb") as fh:
            pickle.dump(refs, fh, protocol=2)
        instances = {
            "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 640, "height": 480}],
            "annotations": [
                {"id": 70, "image_id": 1, "bbox": [10, 20, 100, 50]},
                {"id": 71, "image_id": 1, "bbox": [0, 0, 5, 5]},
            ],
        }
        (folder / "instances.json").write_text(json.dumps(instances))

    return write_refcoco
