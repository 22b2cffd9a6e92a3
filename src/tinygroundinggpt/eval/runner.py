"""Run tasks on a model: batched greedy generation, data-parallel, cached, resumable.

Each process (``accelerate launch`` starts several; a plain run is one) answers every world-size-th
item that has no cached answer yet and appends each answer to its own JSONL shard
``<out>/predictions/<task>/rank<r>.jsonl`` as soon as its batch is done. A rerun reads all shards,
skips what is there and answers the rest, so a killed run resumes where it stopped and no item is
answered or scored twice. Each answer is stored with a key of its prompt, generation length and image version (size and
modification time), so a rerun with another prompt (``--rec-prompt``), length or a rewritten (or copied) image
regenerates instead of reusing stale answers; scoring again needs the images in place,
and an output folder refuses answers of a different model. An item whose image is missing or corrupt
is listed as failed, not fatal, and is retried on the next run. The main process then scores every
cached answer once and writes ``results.json`` and ``results.md`` (see :mod:`tinygroundinggpt.eval.report`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from PIL import Image
from tqdm.auto import tqdm

from tinygroundinggpt.eval.task import Item, ScoreUnavailable, Task
from tinygroundinggpt.images import ImageLoadError, load_image


class Generator(Protocol):
    """What the runner needs from a model (``TinyGroundingGPTPipeline`` is one)."""

    def generate_batch(self, images: list[Image.Image], prompts: list[str], max_new_tokens: int = 64) -> list[str]: ...


class _SingleProcess:
    """Stands in for accelerate's ``PartialState`` when the caller runs without it."""

    process_index, num_processes, is_main_process = 0, 1, True

    def wait_for_everyone(self) -> None:
        pass


def _image_version(image: str | bytes | None) -> str:
    """Which image an answer was given for: a file's size and modification time (a stat, no read: a rerun over tens
    of thousands of cached images stays cheap), encoded bytes by their digest."""
    if image is None:
        return ""
    if isinstance(image, bytes):
        return hashlib.sha256(image).hexdigest()
    try:
        st = os.stat(image)
    except OSError:
        return "unreadable"  # the item fails at loading, with the reason, and is retried next run
    return f"{st.st_size}:{st.st_mtime_ns}"


def answer_key(item: Item, max_new_tokens: int) -> str:
    """What an answer depends on besides the model: the prompt, the generation length and the image's version (item
    ids and prompts recur across versions of a benchmark folder: a regenerated world must not reuse old answers)."""
    key = f"{item.prompt}\0{max_new_tokens}\0{_image_version(item.image)}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class PredictionCache:
    """Append-only answers of one task: ``<folder>/rank<r>.jsonl``, one ``{"id", "key", "answer", ...}`` a line."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def read(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every cached answer by (item id, answer key); the first one wins if a crash ever left two."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for shard in sorted(self.folder.glob("rank*.jsonl")):
            for line in shard.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the tail of a line a killed process did not finish
                rows.setdefault((str(row["id"]), row["key"]), row)
        return rows

    def writer(self, rank: int):
        """An append handle for this process's shard, after cutting any unfinished last line."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"rank{rank}.jsonl"
        if path.exists() and path.stat().st_size:
            data = path.read_bytes()
            if not data.endswith(b"\n"):
                with path.open("r+b") as fh:
                    fh.truncate(data.rfind(b"\n") + 1)
        return path.open("a", encoding="utf-8")


def _batches(items: list[Item], size: int) -> Iterable[list[Item]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _load(item: Item) -> Image.Image | str:
    """The item's image, or the reason it cannot be used."""
    if item.image is None:
        return "item has no image"
    try:
        # as stored: benchmark annotations are in the stored pixels' frame (see load_image)
        img = load_image(
            item.image, name=item.image if isinstance(item.image, str) else f"item {item.id}", exif_orientation=False
        )
    except ImageLoadError as exc:
        return str(exc)
    if item.width is not None and (img.width, img.height) != (item.width, item.height):
        # The ground truth is in the annotated frame; scoring against another frame would be silently wrong.
        return f"image is {img.width}x{img.height} but the annotation says {item.width}x{item.height}"
    return img


def answers_or_refusals(
    generate: Callable[[list[Any], list[str]], list[str]], images: list[Any], prompts: list[str]
) -> list[str | ValueError]:
    """``generate(images, prompts)`` for a batch. A prompt the model cannot take (over its ``max_length``, or its
    context with the answer length asked) must not cost the others their answers: the batch is then answered item by
    item, and that item's error (a ``TruncationError``) stands in its answer's place."""
    from tinygroundinggpt.model.processing_tinygroundinggpt import TruncationError

    try:
        return list(generate(images, prompts))
    except TruncationError as exc:
        if len(prompts) == 1:
            return [exc]
        return [a for i, p in zip(images, prompts, strict=True) for a in answers_or_refusals(generate, [i], [p])]


def generate(
    generator: Generator,
    task: Task,
    items: list[Item],
    cache: PredictionCache,
    *,
    state: Any,
    batch_size: int,
    max_new_tokens: int | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, str]], dict[str, float]]:
    """Answer this process's share of the uncached items; returns (failures, timing)."""
    n_tokens = max_new_tokens or task.max_new_tokens
    done = cache.read()
    state.wait_for_everyone()  # every process must see the same cache before anyone appends to it
    pending = [it for it in items if (it.id, answer_key(it, n_tokens)) not in done]
    mine = pending[state.process_index :: state.num_processes]
    failures: list[dict[str, str]] = []
    answered, seconds = 0, 0.0
    bar = tqdm(total=len(mine), desc=task.name, unit="item", disable=not (progress and state.is_main_process))
    with cache.writer(state.process_index) as out, ThreadPoolExecutor(max_workers=4) as pool:
        batches = list(_batches(mine, batch_size))
        # Decode the next batch's images while the model works on this one (one batch ahead, no more).
        ahead = [pool.submit(_load, it) for it in batches[0]] if batches else []
        for i, batch in enumerate(batches):
            loaded = [f.result() for f in ahead]
            ahead = [pool.submit(_load, it) for it in batches[i + 1]] if i + 1 < len(batches) else []
            ok = [(it, img) for it, img in zip(batch, loaded, strict=True) if isinstance(img, Image.Image)]
            failures += [
                {"id": it.id, "error": img} for it, img in zip(batch, loaded, strict=True) if isinstance(img, str)
            ]
            if ok:
                start = time.perf_counter()
                answers = answers_or_refusals(
                    lambda imgs, prompts: generator.generate_batch(imgs, prompts, n_tokens),
                    [img for _, img in ok], [it.prompt for it, _ in ok],
                )  # fmt: skip
                seconds += time.perf_counter() - start
                for (it, img), answer in zip(ok, answers, strict=True):
                    if not isinstance(answer, str):  # fails with the reason, and again on a rerun
                        failures.append({"id": it.id, "error": str(answer)})
                        continue
                    answered += 1
                    key = answer_key(it, n_tokens)
                    row = {"id": it.id, "key": key, "answer": answer, "width": img.width, "height": img.height}
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                out.flush()
            bar.update(len(batch))
    bar.close()
    return failures, {"answered": answered, "generate_seconds": seconds}


def score(
    task: Task, items: list[Item], cache: PredictionCache, failures: list[dict[str, str]], max_new_tokens: int
) -> dict[str, Any]:
    """Score every cached answer once; items without one are listed as failed."""
    rows = cache.read()
    reasons = {f["id"]: f["error"] for f in failures}
    per_item, failed = [], []
    for it in items:
        row = rows.get((it.id, answer_key(it, max_new_tokens)))
        if row is None:
            failed.append({"id": it.id, "error": reasons.get(it.id, "no answer was produced")})
            continue
        it.width, it.height = row["width"], row["height"]
        try:
            item_score = task.score(row["answer"], it)
        except ScoreUnavailable as exc:  # a judge outage: not a wrong answer; marked partial, scored again next run
            failed.append({"id": it.id, "error": f"not scored: {exc}"})
            continue
        per_item.append({"id": it.id, "answer": row["answer"], "score": item_score})
    return {
        "protocol": task.protocol,
        "headline": task.headline,
        "family": task.family,
        "n_items": len(items),
        "n_scored": len(per_item),
        "n_failed": len(failed),
        "metrics": task.aggregate([p["score"] for p in per_item]),
        "failed": failed,
        "_per_item": per_item,
    }


class OutputConflict(RuntimeError):
    """The output folder already holds another model's answers."""


# The files from_pretrained reads (weights; model, generation, processor and tokenizer configs; a chat template;
# a tokenizer's vocabulary): a change to any of them can change the answers.
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".json", ".jinja", ".model", ".txt")


def checkpoint_id(model: str | Path) -> str:
    """Who answered: a local checkpoint's resolved path and a digest of the files that make its answers (a checkpoint
    replaced at the same path, as a re-shipped model is, or given another chat template, must not reuse its
    predecessor's answers); a Hub id as given."""
    path = Path(model)
    if not path.exists():
        return str(model)
    digest = hashlib.sha256()
    for file in sorted(f for f in path.iterdir() if f.is_file() and f.suffix in CHECKPOINT_SUFFIXES):
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as f:  # streamed: a multi-GB shard is never held in memory whole
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return f"{path.resolve()}@{digest.hexdigest()[:16]}"


def answers_of(out_dir: str | Path) -> str | None:
    """The model id whose answers ``out_dir`` holds (None when it records none)."""
    marker = Path(out_dir) / "predictions" / "model.txt"
    return marker.read_text().strip() if marker.is_file() else None


def _claim(out_dir: Path, model_id: str, state: Any) -> None:
    # Every process checks before any writes, so all refuse together (none is left waiting at a barrier), and only
    # the main one writes: a process reading the marker while another rewrote it once saw it empty and refused.
    held = answers_of(out_dir)
    if held is not None and held != model_id:
        raise OutputConflict(f"{out_dir} holds answers of {held}, not {model_id}; choose another --out")
    state.wait_for_everyone()
    if state.is_main_process:
        marker = out_dir / "predictions" / "model.txt"
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(model_id + "\n")
        tmp.replace(marker)
    state.wait_for_everyone()  # no answers in the folder before its marker: a kill in between would leave them unowned


def evaluate(
    generator: Generator,
    tasks: list[Task],
    data_root: str | Path,
    out_dir: str | Path,
    *,
    model_id: str,
    model_name: str = "model",
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    limit: int | None = None,
    state: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``generator`` on ``tasks``; returns the results (on the main process; ``{}`` elsewhere).

    ``model_id`` says who answers (for a checkpoint, :func:`checkpoint_id`): it is recorded in ``out_dir`` and a later
    run with another one is refused, so answers of two models never mix in one cache (a cached answer is keyed by its
    prompt, length and image, not by the model). ``limit`` keeps the first N items of each task (quick checks; results
    say so).
    """
    from accelerate.utils import gather_object

    from tinygroundinggpt.eval.report import write_reports

    state = state or _SingleProcess()
    out_dir = Path(out_dir)
    _claim(out_dir, model_id, state)
    results: dict[str, Any] = {"model": model_name, "limit": limit, "tasks": {}}
    for task in tasks:
        items = task.load(Path(data_root))[:limit]
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{task.name}: item ids are not unique")
        cache = PredictionCache(out_dir / "predictions" / task.name)
        failures, timing = generate(
            generator,
            task,
            items,
            cache,
            state=state,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            progress=progress,
        )
        failures = gather_object(failures) if state.num_processes > 1 else failures
        state.wait_for_everyone()
        if state.is_main_process:
            res = score(task, items, cache, failures, max_new_tokens or task.max_new_tokens)
            res["timing"] = timing
            results["tasks"][task.name] = res
    if not state.is_main_process:
        return {}
    write_reports(results, out_dir)
    return results
