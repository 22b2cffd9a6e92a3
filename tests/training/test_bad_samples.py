"""A bad sample costs itself, named by file and line; training goes on with the others."""

import json

from PIL import Image

from tinygroundinggpt.training.data import MixtureDataset
from tinygroundinggpt.training.recipe import DataSource


def test_bad_samples_are_skipped_or_replaced_and_named_by_file_and_line(tiny_model, tmp_path):
    _, proc = tiny_model
    Image.new("RGB", (200, 100), (200, 10, 10)).save(tmp_path / "a.png")

    def line(sample_id, question="<image>\nWhere is it?", **size):
        msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": "<box:0>"}]
        return json.dumps({"id": sample_id, "image": "a.png", **size, "boxes": [[10, 10, 50, 50]], "messages": msgs})

    path = tmp_path / "d.jsonl"
    lines = [
        line("good-1", width=200, height=100),
        line("wrong-size", width=640, height=480),  # found when its image is read: replaced by the next sample
        line("good-2"),
        line("literal-object", "<image>\nIs <object> red?"),  # found when the file is read: skipped
    ]
    path.write_text("\n".join(lines) + "\n")
    dataset = MixtureDataset([DataSource(str(path), 1.0)], proc)
    ((file, lineno, problem),) = dataset.report.skipped
    assert (file, lineno) == (str(path), 4) and "bare <object>" in problem
    fetched = dataset[1]
    ((where, sample_id, problem),) = fetched.replaced
    assert (where, sample_id) == (f"{path}:2", "wrong-size")
    assert problem.endswith("a.png: the sample says 640x480 but the image is 200x100")
    assert fetched.encoded.input_ids == proc.encode_sample(dataset.sample_at(0, 2)[0], str(tmp_path)).input_ids
