"""The pipeline against a real HTTP server on 127.0.0.1: outputs, statistics, retries, faults, cache."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from helpers import SCENES, write_corpus

from tinygroundinggpt.boxes import format_box, pixel_to_norm
from tinygroundinggpt.cli import main
from tinygroundinggpt.data.format import LoadReport, iter_jsonl
from tinygroundinggpt.synthesis.backends import CachedModels, OpenAIChatBackend, RetryCounter
from tinygroundinggpt.synthesis.cache import DiskCache
from tinygroundinggpt.synthesis.pipeline import Pipeline, merge_shards, read_manifest
from tinygroundinggpt.synthesis.stages import SynthConfig

# Without faults the corpus gives: 3 images, 7 objects; per object 2 text–coordinate and 1-2
# image–coordinate templates (14 + 7), 11 text–image QAs, and per image one conversation and one
# description: 45 samples, each judged once.
CLEAN = {"stage2_tc": 14, "stage2_ic": 14, "stage2_ti": 11, "stage3_conv": 3, "stage3_desc": 3}
FILES = [f"{stem}.jsonl" for stem in CLEAN]


def run(root: Path, url: str, out: str = "out", cache: str = "cache", concurrency: int = 2, config=None, **kw) -> dict:
    counter = RetryCounter()
    chat = OpenAIChatBackend("fake", base_url=url, timeout=0.5, max_retries=3, backoff=0.01, counter=counter)
    models = CachedModels(DiskCache(root / cache), chat, None, counter)
    pipe = Pipeline(root / out, models, config, image_root=root, concurrency=concurrency, progress=False, **kw)
    return pipe.run(read_manifest(root / "manifest.jsonl"))


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def judge_marker(box: tuple, w: int, h: int) -> str:
    return f"Question: Describe the object located within the region {format_box(pixel_to_norm(box, w, h))}."


def test_clean_run_outputs_valid_samples_and_rerun_hits_cache(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    with FakeOpenAI() as srv:
        rep = run(tmp_path, srv.url)
        assert rep["complete"] and rep["samples"] == CLEAN
        assert rep["failures"] == {} and rep["removed"] == {}
        # 3 relation calls, 4 generation calls per image, one judge call per sample.
        assert rep["calls"] == len(srv.requests) == 3 + 12 + 45
        assert rep["retries"] == 0 and rep["cache_hits"] == 0
        # The judge sees the global image plus one crop per object image in the sample.
        assert max(srv.images) == 3
        again = run(tmp_path, srv.url, out="out2")
        assert again["calls"] == 0 and again["cache_hits"] == 60 and len(srv.requests) == 60
    for name in FILES:
        assert (tmp_path / "out" / name).read_text() == (tmp_path / "out2" / name).read_text()
        report = LoadReport(name)
        samples = list(iter_jsonl(tmp_path / "out" / name, report))
        assert not report.skipped and len(samples) == CLEAN[name.removesuffix(".jsonl")]
        for s in samples:
            assert (tmp_path / "out" / s.image).is_file()


def test_faults_are_counted_exactly_and_never_fatal(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    with FakeOpenAI(timeout_sleep=1.0) as srv:
        srv.faults = {
            # transient: one rate limit and one timeout, each retried once
            "You are tasked with evaluating": [429],
            "Given a list of instances: [red box, blue box]": ["timeout"],
            # malformed replies
            "Given a list of instances: [green box, red box]": ["[(green box, above, yellow box)]"],
            "objects (including the objects present in the image): [red box, blue box], and a list of triples "
            "describing the relationships between the objects : [(red box, next to, blue box)]. You may include "
            "additional objects and relationships that you are confident about. Please generate 5 optimal QA "
            "pairs that accurately reflect the image. Each question": ["this is not JSON"],
            "image): [blue box, green box, red box], and a list of triples describing the relationships between "
            "the objects : [(blue box, next to, green box), (green box, next to, red box)]. You may include "
            "additional objects and relationships that you are confident about. Please generate 5 optimal QA "
            "pairs that accurately reflect the image. For each question": [
                '[{"question": "Which? A. <purple box> B. <red box>", "answer": "A"}, {"q": "x", "a": "y"}]'
            ],
            "You are an image description annotation assistant. I will provide you with an image: the attached "
            "image, a list of potential instances (including objects that may be present in the image): [green box": [
                "No boxes in this description."
            ],
            'for objects: {"blue box"': [
                '[{"question": "Where is <blue box> [0.1, 0.1, 1.5, 0.4]?", "answer": "there"},'
                ' {"question": "What colour is <red box> [0.600, 0.050, 0.950, 0.400]?", "answer": "red"}]'
            ],
            judge_marker((10, 10, 60, 60), 160, 120): ['"Quality": "2", "Correct": "Yes", "Justification": "vague"'],
            judge_marker((90, 50, 150, 110), 160, 120): ['"Quality": "5", "Correct": "No", "Justification": "wrong"'],
            judge_marker((60, 5, 95, 40), 100, 100): ["I cannot judge this."],
        }
        rep = run(tmp_path, srv.url)
        assert all(not v for v in srv.faults.values()), "every scripted fault was used"
        assert rep["complete"]
        assert rep["retries"] == 2 and rep["call_errors"] == 0
        # Two requests never got an answer (429, timeout); no answered request was ever repeated.
        assert len(srv.requests) == rep["calls"] + 2 == len(srv.answered) + 2
        assert len(set(srv.answered)) == len(srv.answered)
    assert rep["failures"] == {
        "generate/not_json": 1,  # img0 object_in_question
        "generate/wrong_keys": 1,  # img2 objects_as_options: the second item is dropped, the first kept...
        "postprocess/object_not_in_list": 1,  # ...until post-processing: <purple box> was not grounded
        "relate/object_not_in_list": 1,  # img1 "yellow box"
        "postprocess/no_box": 1,  # img1 description
        "postprocess/box_out_of_range": 1,  # img2 conversation, first QA
        "judge/wrong_keys": 1,
    }
    assert rep["removed"] == {"judge/low_quality": 1, "judge/incorrect": 1, "judge/judge_malformed": 1}
    # img0 loses its 2 object_in_question QAs and img2 its 2 objects_as_options QAs (text–image), the
    # judge 3 text–coordinate samples, img1 its description.
    assert rep["samples"] == {**CLEAN, "stage2_tc": 11, "stage2_ti": 7, "stage3_desc": 2}
    failures = read(tmp_path / "out" / "failures.jsonl")
    assert {f["image_id"] for f in failures} == {"img0", "img1", "img2"}
    bad = next(f for f in failures if f["kind"] == "not_json")
    assert bad["reply"] == "this is not JSON" and "QA pair generator" in bad["prompt"]
    removed = read(tmp_path / "out" / "removed.jsonl")
    assert {(r["id"], r["reason"]) for r in removed} == {
        ("img0-tc-0a", "low_quality"),
        ("img0-tc-1a", "incorrect"),
        ("img2-tc-2a", "judge_malformed"),
    }
    conv = next(s for s in read(tmp_path / "out" / "stage3_conv.jsonl") if s["id"] == "img2-conversation")
    assert len(conv["boxes"]) == 1 and len(conv["messages"]) == 4  # the kept QA plus one location turn


def test_exhausted_retries_leave_the_image_for_a_rerun(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    with FakeOpenAI() as srv:
        srv.faults = {
            "Given a list of instances: [green box, red box]": [429] * 4,  # more than 3 retries
            # not retried; a server's limit (vLLM's on images per request), not the image: left for a rerun
            "Given a list of instances: [blue box, green box, red box]": [
                (400, "At most 1 image(s) may be provided in one request.")
            ],
        }
        rep = run(tmp_path, srv.url)
        assert not rep["complete"] and rep["call_errors"] == 2 and rep["retries"] == 3
        assert rep["stages"]["relate"] == {"done": 1, "resumed": 0, "redone": 0, "unfinished": 2}
        assert not (tmp_path / "out" / "stage2_tc.jsonl").exists()
        rep = run(tmp_path, srv.url)
        assert rep["complete"] and rep["samples"] == CLEAN
        assert rep["stages"]["relate"] == {"done": 3, "resumed": 1, "redone": 0, "unfinished": 0}
        assert len(set(srv.answered)) == len(srv.answered)


def test_a_rejected_request_marks_its_image_unusable_and_the_run_completes(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    with FakeOpenAI() as srv:
        srv.faults = {
            # vLLM's too-long prompt: a 400 without OpenAI's code (its code is "context_length_exceeded")
            "Given a list of instances: [blue box, green box, red box]": [
                (400, "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.")
            ],
            # img0, mid-judge
            judge_marker((10, 10, 60, 60), 160, 120): [(400, "content policy violation", "content_policy_violation")],
            "Given a list of instances: [green box, red box]": [(408, "request timeout")],  # retried
        }
        rep = run(tmp_path, srv.url)
        assert not any(srv.faults.values())
        assert rep["complete"] and rep["unusable_images"] == 2
        assert rep["retries"] == 1 and rep["call_errors"] == 2
        assert rep["failures"] == {"relate/request_rejected": 1, "judge/request_rejected": 1}
        # Only img1 (2 objects) gives samples; img0's 13 samples, made before its judge call was refused, are
        # removed and counted.
        assert rep["samples"] == {"stage2_tc": 4, "stage2_ic": 4, "stage2_ti": 3, "stage3_conv": 1, "stage3_desc": 1}
        assert rep["removed"] == {"request/rejected": 13}
        failures = read(tmp_path / "out" / "failures.jsonl")
        assert {(f["image_id"], f["stage"]) for f in failures} == {("img0", "judge"), ("img2", "relate")}
        assert any("content policy violation" in f["error"] for f in failures)
        assert {s["meta"]["image_id"] for s in read(tmp_path / "out" / "stage2_tc.jsonl")} == {"img1"}
        # A rerun keeps the verdict and asks nothing again.
        n = len(srv.requests)
        again = run(tmp_path, srv.url)
        assert len(srv.requests) == n and again["samples"] == rep["samples"] and again["failures"] == rep["failures"]


def test_cut_off_and_chatty_replies_keep_their_complete_items(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    img0_object_in_question = (
        "present in the image): [red box, blue box], and a list of triples describing the relationships between "
        "the objects : [(red box, next to, blue box)]. You may include additional objects and relationships that "
        "you are confident about. Please generate 5 optimal QA pairs that accurately reflect the image. Each question"
    )
    with FakeOpenAI() as srv:
        srv.faults = {
            img0_object_in_question: [
                ("length", 'Here you go:\n[{"question": "What is <red box> next to?", "answer": "a shape"}, {"que')
            ],
            # Fig. 11's style: one Python dict per line, no list, prose around.
            "image): [green box, red box], and a list of triples describing the relationships between the objects "
            ": [(green box, next to, red box)]. You may include additional objects and relationships that you are "
            "confident about. Please generate 5 optimal QA pairs that accurately reflect the image. For each": [
                "Sure! The QA pairs:\n{ 'question' : 'Which is first? A. <green box> B. <red box>', 'answer' : 'A' }\n"
                "{ 'question' : \"Which one's lower? A. <green box> B. <red box>\", 'answer' : 'B' }\nHope this helps."
            ],
            "Given a list of instances: [blue box, green box, red box]": [
                ("length", "[(blue box, next to, green box), (green box, abo")
            ],
        }
        rep = run(tmp_path, srv.url)
        assert not any(srv.faults.values())
        assert rep["complete"]
        assert rep["failures"] == {"generate/truncated": 1, "generate/unterminated_item": 1, "relate/truncated": 1}
        assert rep["counts"]["relations"] == 1 + 1 + 1  # img2 keeps its one complete triple
        ti = {s["id"] for s in read(tmp_path / "out" / "stage2_ti.jsonl")}
        assert "img0-object_in_question-0" in ti and "img0-object_in_question-1" not in ti
        assert {"img1-objects_as_options-0", "img1-objects_as_options-1"} <= ti
        # The cut reply is cached as cut: a rerun from the cache reports the same and calls nothing.
        again = run(tmp_path, srv.url, out="out2")
        assert again["calls"] == 0 and again["failures"] == rep["failures"] and again["samples"] == rep["samples"]
    cached = [json.loads(p.read_text())["value"] for p in (tmp_path / "cache").rglob("*.json")]
    assert sum(isinstance(v, dict) and v["truncated"] for v in cached) == 2


def test_the_endpoint_is_part_of_the_cache_identity(tmp_path: Path) -> None:
    with FakeOpenAI(reply=lambda prompt: "one") as one, FakeOpenAI(reply=lambda prompt: "two") as two:
        replies = []
        for srv in (one, two, one):
            counter = RetryCounter()
            chat = OpenAIChatBackend("fake", base_url=srv.url, timeout=5, counter=counter)
            replies.append(CachedModels(DiskCache(tmp_path), chat, None, counter).chat("hello", []).text)
        assert replies == ["one", "two", "one"]
        assert len(one.requests) == len(two.requests) == 1


def test_unscored_boxes_are_dropped_unless_asked_to_keep_them(tmp_path: Path) -> None:
    write_corpus(tmp_path, SCENES[:1])
    with FakeOpenAI() as srv:
        # img0's conversation mentions a box that matches no grounded object.
        srv.faults = {
            'for objects: {"red box"': [
                '[{"question": "Where is <red box> [0.063, 0.083, 0.375, 0.500]?", '
                '"answer": "Beside <a yellow box> [0.700, 0.700, 0.900, 0.900]."}]'
            ]
        }
        reports = {}
        for keep in (False, True):
            out = tmp_path / f"keep-{keep}"
            args = ["synth", str(tmp_path / "manifest.jsonl"), "--out", str(out), "--cache", str(tmp_path / "cache"),
                    "--model", "fake", "--base-url", srv.url, "--no-judge", "--no-progress"]  # fmt: skip
            assert main(args + ["--keep-unscored-boxes"] * keep) == 0
            reports[keep] = json.loads((out / "report.json").read_text())
    assert reports[False]["removed"] == {"confidence/low_confidence": 1}
    assert reports[False]["samples"]["stage3_conv"] == 0
    assert reports[True]["removed"] == {} and reports[True]["samples"]["stage3_conv"] == 1


def test_shards_partition_the_corpus_and_merge_to_the_unsharded_output(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    with FakeOpenAI() as srv:
        # Once for the whole run, once for the shard holding img0 (each run has its own cache).
        srv.faults = {judge_marker((10, 10, 60, 60), 160, 120): ['"Quality": "1", "Correct": "No"'] * 2}
        whole = run(tmp_path, srv.url)
        parts = [run(tmp_path, srv.url, out=f"shard{i}", cache=f"cache{i}", shard=(i, 2)) for i in range(2)]
        assert not any(srv.faults.values())
    assert sum(p["images"] for p in parts) == 3 and all(p["images"] for p in parts)
    assert main(["synth-merge", str(tmp_path / "manifest.jsonl"), "--out", str(tmp_path / "merged"), "--shards",
                 str(tmp_path / "shard0"), str(tmp_path / "shard1")]) == 0  # fmt: skip
    for name in [*FILES, "removed.jsonl", "failures.jsonl"]:
        assert (tmp_path / "merged" / name).read_bytes() == (tmp_path / "out" / name).read_bytes(), name
    merged = json.loads((tmp_path / "merged" / "report.json").read_text())
    for key in ("images", "calls", "samples", "removed", "counts", "failures"):
        assert merged[key] == whole[key], key


def test_merge_refuses_shards_that_do_not_make_one_dataset(tmp_path: Path) -> None:
    # Shard 0/2 holds img0, shard 1/2 img1 and img2.
    write_corpus(tmp_path)
    records = read_manifest(tmp_path / "manifest.jsonl")
    with FakeOpenAI() as srv:
        for out, shard, config in [("s0", 0, None), ("s1", 1, None), ("s0-again", 0, None),
                                   ("s1-nojudge", 1, SynthConfig(judge=False))]:  # fmt: skip
            assert run(tmp_path, srv.url, out=out, shard=(shard, 2), config=config)["complete"]
        # img2's relation call fails past every retry: shard 1/2 ends with one of its two images unfinished.
        srv.faults = {"Given a list of instances: [blue box, green box, red box]": [429] * 4}
        assert not run(tmp_path, srv.url, out="s1-outage", cache="cache-outage", shard=(1, 2))["complete"]

    def merge(*shards: str, manifest: list = records) -> dict:
        return merge_shards(manifest, [tmp_path / s for s in shards], tmp_path / "merged")

    with pytest.raises(ValueError, match=r"shard 0/2 is in both .*s0 and .*s0-again: give each shard once"):
        merge("s0", "s1", "s0-again")
    with pytest.raises(ValueError, match=r"shard 1/2 \(.*s1-nojudge\) ran with other options than shard 0/2 \(judge\)"):
        merge("s0", "s1-nojudge")
    with pytest.raises(ValueError, match="image 'img0' of shard 0/2 .* is not in the manifest"):
        merge("s0", "s1", manifest=records[1:])
    extra = [*records, {"id": "img9", "image": "images/0.png"}]
    with pytest.raises(ValueError, match=r"manifest image 'img9' is in shard ./2's share, but .* lacks it"):
        merge("s0", "s1", manifest=extra)
    with pytest.raises(ValueError, match=r"shard 1/2 \(.*s1-outage\) is incomplete: 1 of its 2 images .*'img2'"):
        merge("s0", "s1-outage")
    assert not (tmp_path / "merged").exists()  # nothing is written before every check has passed
    # Asked to, the merge keeps the finished images and says how many are missing where.
    assert main(["synth-merge", str(tmp_path / "manifest.jsonl"), "--out", str(tmp_path / "merged"),
                 "--allow-incomplete", "--shards", str(tmp_path / "s0"), str(tmp_path / "s1-outage")]) == 0  # fmt: skip
    report = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert not report["complete"] and report["missing_images"] == {"1/2": 1}
    assert {s["meta"]["image_id"] for s in read(tmp_path / "merged" / "stage2_tc.jsonl")} == {"img0", "img1"}


def test_a_rerun_with_other_options_is_refused(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    with FakeOpenAI() as srv:
        run(tmp_path, srv.url)
        with pytest.raises(ValueError, match="min_quality"):
            run(tmp_path, srv.url, config=SynthConfig(min_quality=4))


def test_backoff_honours_retry_after() -> None:
    with FakeOpenAI(reply=lambda prompt: "fine") as srv:
        srv.faults = {"hello": [(429, 0.5), 429]}
        counter = RetryCounter()
        chat = OpenAIChatBackend("fake", base_url=srv.url, timeout=5, max_retries=2, backoff=0.01, counter=counter)
        start = time.monotonic()
        assert chat.chat("hello", []).text == "fine"
        assert time.monotonic() - start >= 0.5 and counter.retries == 2 and len(srv.requests) == 3


def test_a_reply_without_choices_leaves_the_image_for_a_rerun(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    with FakeOpenAI() as srv:
        srv.faults = {"Given a list of instances: [green box, red box]": ["no_choices"]}
        rep = run(tmp_path, srv.url)
        assert not rep["complete"] and rep["call_errors"] == 1
        assert rep["stages"]["relate"]["unfinished"] == 1
        rep = run(tmp_path, srv.url)
        assert rep["complete"] and rep["samples"] == CLEAN


def test_malformed_annotation_objects_are_reported_and_the_others_used(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path)
    records = read(manifest)
    records[0]["objects"] += ["a red box", {"box": [1, 1, 5, 5]}, {"name": "green box", "score": "high"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    with FakeOpenAI() as srv:
        rep = run(tmp_path, srv.url)
    assert rep["complete"] and rep["samples"] == CLEAN  # the well-formed objects give what they gave before
    assert rep["failures"] == {"load/bad_annotation": 3}
    errors = sorted(f["error"] for f in read(tmp_path / "out" / "failures.jsonl"))
    assert errors == [
        "objects[2] must be a JSON object, got str",
        "objects[3] needs a non-empty string 'name', got None",
        "objects[4].score must be a number, got 'high'",
    ]


def test_a_box_that_is_no_list_fails_its_object_and_the_run_goes_on(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path)
    records = read(manifest)
    records[1]["objects"][0]["box"] = 5
    records[2]["objects"][0]["box"] = {"x": 1}
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    with FakeOpenAI() as srv:
        rep = run(tmp_path, srv.url)
    assert rep["complete"] and rep["unusable_images"] == 0
    errors = sorted((f["image_id"], f["kind"], f["error"]) for f in read(tmp_path / "out" / "failures.jsonl")
                    if f["stage"] == "load")  # fmt: skip
    assert errors == [
        ("img1", "bad_annotation_box", "objects[0].box must be a list of 4 numbers [x1, y1, x2, y2], got int: 5"),
        (
            "img2",
            "bad_annotation_box",
            "objects[0].box must be a list of 4 numbers [x1, y1, x2, y2], got dict: {'x': 1}",
        ),
    ]
    # Each image goes on with its other objects.
    assert {s["meta"]["image_id"] for s in read(tmp_path / "out" / "stage2_tc.jsonl")} == {"img0", "img1", "img2"}


def test_an_unforeseen_error_in_a_stage_marks_only_that_image_unusable(tmp_path: Path, monkeypatch) -> None:
    from tinygroundinggpt.synthesis import pipeline

    relate = pipeline.STAGES["relate"]

    def failing_for_img2(state, image, ctx):
        if state["id"] == "img2":
            raise KeyError("name")  # a defect the stages did not foresee, for this image only
        relate(state, image, ctx)

    monkeypatch.setitem(pipeline.STAGES, "relate", failing_for_img2)
    write_corpus(tmp_path)
    with FakeOpenAI() as srv:
        rep = run(tmp_path, srv.url)
    assert rep["complete"] and rep["unusable_images"] == 1
    assert rep["failures"] == {"relate/stage_error": 1}
    (failure,) = read(tmp_path / "out" / "failures.jsonl")
    assert failure["image_id"] == "img2" and failure["error"] == "KeyError: 'name'"
    assert {s["meta"]["image_id"] for s in read(tmp_path / "out" / "stage2_tc.jsonl")} == {"img0", "img1"}


def test_a_record_changed_since_its_saved_states_is_redone(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path)
    records = read(manifest)
    box = records[1]["objects"][0]["box"]
    records[1]["objects"][0]["box"] = [box[2], box[1], box[0], box[3]]  # inverted: the object is refused
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    with FakeOpenAI() as srv:
        first = run(tmp_path, srv.url)
        assert first["failures"]["load/bad_annotation_box"] == 1 and first["samples"] != CLEAN
        records[1]["objects"][0]["box"] = box  # the user fixes the manifest and runs again into the same --out
        manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
        again = run(tmp_path, srv.url)
    assert again["complete"] and again["samples"] == CLEAN and not again["failures"]
    assert again["stages"]["recognise"] == {"done": 3, "resumed": 2, "redone": 1, "unfinished": 0}
