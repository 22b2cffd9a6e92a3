"""End to end: the tiny model through the real pipeline on the synthetic world's REC and POPE files,
the prediction cache, failures, resume after a kill, and the frame handling of REC scoring."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tinygroundinggpt import boxes
from tinygroundinggpt.api import TinyGroundingGPTPipeline
from tinygroundinggpt.eval.runner import OutputConflict, PredictionCache, _claim, answers_of, checkpoint_id, evaluate
from tinygroundinggpt.eval.task import EvalOptions, get_task
from tinygroundinggpt.world.build import write_world


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("ckpt")
    model, processor = tiny_model
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    write_world(root, n_train=0, n_eval=4, n_compositional=0, progress=False)
    return root


def cache_rows(out: Path, task: str) -> list[dict]:
    lines = []
    for shard in sorted((out / "predictions" / task).glob("rank*.jsonl")):
        lines += [json.loads(x) for x in shard.read_text().splitlines()]
    return lines


def test_world_rec_and_pope_failures_listed_cache_reused(tmp_path, checkpoint, world):
    data = tmp_path / "world"
    (data / "images").mkdir(parents=True)
    for p in (world / "images").iterdir():
        (data / "images" / p.name).write_bytes(p.read_bytes())
    (data / "eval").symlink_to(world / "eval")
    (data / "images" / "eval_000001.png").write_bytes(b"not a png")  # corrupt
    (data / "images" / "eval_000002.png").unlink()  # missing
    pipe = TinyGroundingGPTPipeline.from_pretrained(checkpoint)
    tasks = [get_task("world_rec_val"), get_task("world_pope_adversarial")]
    out = tmp_path / "out"
    res = evaluate(pipe, tasks, data, out, model_id="tiny", batch_size=4, progress=False)

    rec = res["tasks"]["world_rec_val"]
    assert rec["n_failed"] > 0 and rec["n_scored"] + rec["n_failed"] == rec["n_items"]
    assert any("cannot decode" in f["error"] for f in rec["failed"])
    pope = res["tasks"]["world_pope_adversarial"]
    assert any("no such image file" in f["error"] for f in pope["failed"])
    assert {"accuracy", "precision", "recall", "f1", "yes_ratio"} <= set(pope["metrics"])
    for name in ("world_rec_val", "world_pope_adversarial"):
        rows = cache_rows(out, name)
        assert len(rows) == len({r["id"] for r in rows}) == res["tasks"][name]["n_scored"]
    md = (out / "results.md").read_text()
    assert "## Synthetic world" in md and "Failed items:" in md
    assert "Figures marked * leave out items that failed" in md and f"| {rec['metrics']['acc@0.5']:.2f}* |" in md
    assert json.loads((out / "results.json").read_text())["tasks"]["world_rec_val"]["metrics"] == rec["metrics"]
    scored = (out / "scores" / "world_rec_val.jsonl").read_text().splitlines()
    assert len(scored) == rec["n_scored"]

    # Rerun: nothing cached is generated again; the repaired image's items are retried and filled in.
    (data / "images" / "eval_000001.png").write_bytes((world / "images" / "eval_000001.png").read_bytes())
    again = evaluate(pipe, tasks[:1], data, out, model_id="tiny", batch_size=4, progress=False)
    rec2 = again["tasks"]["world_rec_val"]
    assert rec2["timing"]["answered"] == rec["n_failed"] and rec2["n_failed"] == 0
    assert len(cache_rows(out, "world_rec_val")) == rec2["n_items"]


def test_a_world_rewritten_into_the_same_folder_is_answered_afresh(tmp_path, checkpoint):
    # Item ids and prompts recur across worlds (POPE: "Is there a <shape> in the image?" for ids 1..N): the cache key
    # holds the image's bytes, and the REC files are read again once rewritten (in one process too).
    pipe = TinyGroundingGPTPipeline.from_pretrained(checkpoint)
    tasks = [get_task("world_rec_val"), get_task("world_pope_adversarial")]
    runs = []
    for seed in (1, 2):
        write_world(tmp_path / "world", n_train=0, n_eval=4, n_compositional=0, seed=seed, progress=False)
        runs.append(
            evaluate(pipe, tasks, tmp_path / "world", tmp_path / "out", model_id="tiny", batch_size=8, progress=False)
        )
    for name in ("world_rec_val", "world_pope_adversarial"):
        first, second = runs[0]["tasks"][name], runs[1]["tasks"][name]
        assert second["n_failed"] == 0 and second["timing"]["answered"] == second["n_items"] > 0
        assert len(cache_rows(tmp_path / "out", name)) == first["n_items"] + second["n_items"]
    rec_items = get_task("world_rec_val").load(tmp_path / "world")
    scores = (tmp_path / "out" / "scores" / "world_rec_val.jsonl").read_text().splitlines()
    scored = [json.loads(x)["id"] for x in scores]
    assert sorted(scored) == sorted(it.id for it in rec_items)
    # the same world again: everything comes from the cache
    again = evaluate(pipe, tasks, tmp_path / "world", tmp_path / "out", model_id="tiny", batch_size=8, progress=False)
    assert all(again["tasks"][t.name]["timing"]["answered"] == 0 for t in tasks)


def test_a_task_whose_every_item_failed_is_reported_not_raised(tmp_path, checkpoint):
    (tmp_path / "gqa").mkdir()  # the questions are there, the images are not
    gqa = {"1": {"imageId": "n1", "question": "Is it red?", "answer": "no"}}
    (tmp_path / "gqa" / "testdev_balanced_questions.json").write_text(json.dumps(gqa))
    pipe = TinyGroundingGPTPipeline.from_pretrained(checkpoint)
    res = evaluate(pipe, [get_task("gqa_testdev")], tmp_path, tmp_path / "out", model_id="tiny", progress=False)
    entry = res["tasks"]["gqa_testdev"]
    assert entry["n_failed"] == 1 and entry["metrics"] == {}
    md = (tmp_path / "out" / "results.md").read_text()
    assert "0 of 1 items scored, 1 failed" in md and "no such image file" in md


def _refer_on_non_square_images(root: Path, write_refcoco) -> None:
    """REC files on a 640x480 image, where the model frame differs from normalising by width/height."""
    write_refcoco(root)  # testA: two expressions for one box in a 640x480 image
    (root / "coco" / "train2014").mkdir(parents=True)
    Image.new("RGB", (640, 480), "white").save(root / "coco" / "train2014" / "COCO_train2014_000000000001.jpg")


class Oracle:
    """Answers each REC prompt with the ground-truth box written in a given frame (checks the runner's
    frame handling end to end, independently of any model)."""

    def __init__(self, items, frame):
        self.truth = {it.prompt: it.reference["box"] for it in items}
        self.frame = frame

    def generate_batch(self, images, prompts, max_new_tokens=64):
        out = []
        for img, prompt in zip(images, prompts, strict=True):
            box = self.truth[prompt]
            convert = boxes.pixel_to_model if self.frame == "model" else boxes.pixel_to_norm
            out.append(f"It is {boxes.format_box(convert(box, img.width, img.height))}.")
        return out


def test_rec_scores_model_frame_answers_in_the_original_image(tmp_path, write_refcoco):
    _refer_on_non_square_images(tmp_path, write_refcoco)
    task = get_task("refcoco_testA")
    items = task.load(tmp_path)
    right = evaluate(Oracle(items, "model"), [task], tmp_path, tmp_path / "a", model_id="oracle", progress=False)
    assert right["tasks"]["refcoco_testA"]["metrics"]["acc@0.5"] == 100.0
    # The same boxes normalised to width/height (the frame mix-up) do not score as hits.
    wrong = evaluate(Oracle(items, "norm"), [task], tmp_path, tmp_path / "b", model_id="oracle", progress=False)
    assert wrong["tasks"]["refcoco_testA"]["metrics"]["miou"] < 90.0


def test_prediction_cache_drops_a_line_cut_by_a_kill(tmp_path):
    cache = PredictionCache(tmp_path)
    with cache.writer(0) as fh:
        fh.write(json.dumps({"id": "a", "key": "k", "answer": "x", "width": 1, "height": 1}) + "\n")
        fh.write('{"id": "b", "key": "k", "answ')  # killed mid-write
    assert set(cache.read()) == {("a", "k")}
    with cache.writer(0) as fh:
        fh.write(json.dumps({"id": "b", "key": "k", "answer": "y", "width": 1, "height": 1}) + "\n")
    assert set(cache.read()) == {("a", "k"), ("b", "k")}
    assert (tmp_path / "rank0.jsonl").read_text().count("\n") == 2


def test_cached_answers_are_tied_to_their_prompt_and_model(tmp_path, write_refcoco):
    _refer_on_non_square_images(tmp_path, write_refcoco)
    paper, lmms = get_task("refcoco_testA"), get_task("refcoco_testA", EvalOptions(rec_prompt="lmms"))
    items = paper.load(tmp_path) + lmms.load(tmp_path)
    out = tmp_path / "out"
    first = evaluate(Oracle(items, "model"), [paper], tmp_path, out, model_id="ckpt-1", progress=False)
    assert first["tasks"]["refcoco_testA"]["timing"]["answered"] == 2
    # Another prompt is another answer: generated again, not read from the paper prompt's cache.
    other = evaluate(Oracle(items, "model"), [lmms], tmp_path, out, model_id="ckpt-1", progress=False)
    assert other["tasks"]["refcoco_testA"]["timing"]["answered"] == 2
    assert other["tasks"]["refcoco_testA"]["metrics"]["acc@0.5"] == 100.0
    with pytest.raises(OutputConflict, match="ckpt-1"):
        evaluate(Oracle(items, "model"), [paper], tmp_path, out, model_id="ckpt-2", progress=False)


class _Rank:
    """One of two processes, as threads meeting at a real barrier."""

    def __init__(self, index: int, barrier: threading.Barrier) -> None:
        self.process_index, self.num_processes, self.is_main_process = index, 2, index == 0
        self.barrier = barrier

    def wait_for_everyone(self) -> None:
        self.barrier.wait(timeout=30)


def _claim_on_two_ranks(out: Path, model_id: str) -> list[BaseException | None]:
    barrier, errors = threading.Barrier(2), [None, None]

    def run(i: int) -> None:
        try:
            _claim(out, model_id, _Rank(i, barrier))
        except BaseException as e:  # noqa: BLE001 - the test compares what each rank raised
            errors[i] = e
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a rank is still waiting"
    return errors


def test_two_processes_claim_an_output_folder_without_racing(tmp_path, monkeypatch):
    # A second process that read the marker while the first rewrote it saw it empty and refused the folder (a flaky
    # 2-process CI run). Writing is slowed here to widen that window: only the main process may write, and only after
    # every process has checked.
    writers, real_write = [], Path.write_text

    def slow_write(self, data, *args, **kwargs):
        writers.append(threading.current_thread().name)
        self.write_bytes(b"")
        time.sleep(0.2)
        return real_write(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", slow_write)
    out = tmp_path / "out"
    for _ in range(2):  # a fresh folder, then a rerun on the same model
        writers.clear()
        assert _claim_on_two_ranks(out, "ckpt-1") == [None, None]
        assert answers_of(out) == "ckpt-1" and len(writers) == 1
    refused = _claim_on_two_ranks(out, "ckpt-2")  # both refuse, neither waits at the barrier for the other
    assert all(isinstance(e, OutputConflict) for e in refused) and answers_of(out) == "ckpt-1"


def test_a_checkpoint_replaced_at_its_path_is_another_model(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"first weights")
    first = checkpoint_id(tmp_path)
    assert first.startswith(f"{tmp_path.resolve()}@") and checkpoint_id(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"other weights")  # a re-shipped model at the same path
    assert checkpoint_id(tmp_path) != first
    assert checkpoint_id("org/model-on-the-hub") == "org/model-on-the-hub"


def test_a_new_config_or_chat_template_makes_another_model_and_a_log_beside_it_does_not(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "config.json").write_text("{}")
    first = checkpoint_id(tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}")  # same weights, other prompts
    second = checkpoint_id(tmp_path)
    (tmp_path / "config.json").write_text('{"image_size": 128}')
    third = checkpoint_id(tmp_path)
    assert len({first, second, third}) == 3
    (tmp_path / "checkpoint-10").mkdir()  # a training run's leftovers do not answer
    (tmp_path / "checkpoint-10" / "model.safetensors").write_bytes(b"older weights")
    (tmp_path / "train.log").write_text("step 10")
    assert checkpoint_id(tmp_path) == third


def _tgg_eval(checkpoint, world, out, limit):
    cmd = [sys.executable, "-m", "tinygroundinggpt.cli", "eval", "--model", str(checkpoint), "--tasks", "world_rec_val"]
    return cmd + ["--data-root", str(world), "--out", str(out), "--batch-size", "1", "--limit", str(limit)]


@pytest.fixture(scope="module")
def larger_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("larger_world")
    write_world(root, n_train=0, n_eval=16, n_compositional=0, progress=False)
    return root


def test_tgg_eval_killed_midway_resumes_without_scoring_twice(tmp_path, checkpoint, larger_world):
    # Enough items (tens of ms each) that the kill, sent once the first answer is on disk, lands midway
    # even when the test process is slow to notice.
    world, limit = larger_world, 40
    task = get_task("world_rec_val")
    n_items = min(limit, len(task.load(world)))
    assert n_items >= 20
    out = tmp_path / "out"
    shard = out / "predictions" / "world_rec_val" / "rank0.jsonl"
    proc = subprocess.Popen(_tgg_eval(checkpoint, world, out, limit), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while (
        time.time() < deadline and proc.poll() is None and not (shard.exists() and shard.read_text().count("\n") >= 1)
    ):
        time.sleep(0.01)
    assert proc.poll() is None, f"tgg eval ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(cache_rows(out, "world_rec_val"))
    assert 1 <= done_before < n_items and not (out / "results.json").exists()

    # Rerun (in this process, the same code path as tgg eval after its argument parsing).
    pipe = TinyGroundingGPTPipeline.from_pretrained(checkpoint)
    evaluate(pipe, [task], world, out, model_id=checkpoint_id(checkpoint), batch_size=1, limit=limit, progress=False)
    rows = cache_rows(out, "world_rec_val")
    assert len(rows) == len({r["id"] for r in rows}) == n_items  # every item answered exactly once
    resumed = json.loads((out / "results.json").read_text())["tasks"]["world_rec_val"]
    assert resumed["timing"]["answered"] == n_items - done_before and resumed["n_scored"] == n_items

    # An uninterrupted run from scratch gives the same answers and metrics.
    fresh_out = tmp_path / "fresh"
    fresh = evaluate(pipe, [task], world, fresh_out, model_id="tiny", batch_size=1, limit=limit, progress=False)
    assert fresh["tasks"]["world_rec_val"]["metrics"] == resumed["metrics"]
    by_id = {r["id"]: r["answer"] for r in cache_rows(fresh_out, "world_rec_val")}
    assert {r["id"]: r["answer"] for r in rows} == by_id


@pytest.mark.slow
def test_data_parallel_over_two_processes_shards_without_overlap(tmp_path, checkpoint, world):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "tinygroundinggpt.cli"]
    cmd += ["eval", "--model", str(checkpoint), "--tasks", "world_pope_random", "--data-root", str(world)]
    res = subprocess.run([*cmd, "--out", str(out), "--limit", "8", "--batch-size", "2"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    shards = sorted((out / "predictions" / "world_pope_random").glob("rank*.jsonl"))
    ids = [[json.loads(x)["id"] for x in s.read_text().splitlines()] for s in shards]
    assert [s.name for s in shards] == ["rank0.jsonl", "rank1.jsonl"] and all(len(i) == 4 for i in ids)
    assert not set(ids[0]) & set(ids[1])
    res = json.loads((out / "results.json").read_text())["tasks"]["world_pope_random"]
    assert res["n_scored"] == 8 and res["n_failed"] == 0


def test_a_prompt_too_long_for_the_model_fails_alone(tmp_path, checkpoint, larger_world, monkeypatch):
    task = get_task("world_rec_val")
    items = task.load(larger_world)[:4]
    context = TinyGroundingGPTPipeline.from_pretrained(checkpoint).model.config.text_config.max_position_embeddings
    items[1].prompt = "Where is the red " + "very " * context + "square?"
    monkeypatch.setattr(task, "load", lambda root: items)
    pipe = TinyGroundingGPTPipeline.from_pretrained(checkpoint)
    res = evaluate(pipe, [task], larger_world, tmp_path / "out", model_id="tiny", batch_size=4, progress=False)
    rec = res["tasks"]["world_rec_val"]
    # the other three in its batch are answered; it is listed with the reason, not the end of the whole run
    assert (rec["n_scored"], rec["n_failed"]) == (3, 1) and rec["timing"]["answered"] == 3
    assert rec["failed"][0]["id"] == items[1].id and "tokens, more than" in rec["failed"][0]["error"]
