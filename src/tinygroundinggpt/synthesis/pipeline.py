"""The synthesis runner: stages over a corpus of images, restartable, sharded, concurrent.

Input is a manifest, one JSON object per line::

    {"id": "img-1", "image": "images/1.png",              # relative to the manifest (or --image-root)
     "objects": [{"name": "red circle", "box": [x1, y1, x2, y2]}, ...],   # optional annotation, pixels
     "captions": ["A red circle left of ..."]}             # optional image description material

After each stage every image's state is appended to ``out/state/<stage>.jsonl``; a rerun reads
those files, skips what is done and truncates a half-written last line, and all model calls are
served from the disk cache, so a run killed at any point resumes to exactly the output of an
uninterrupted run. A state saved from another version of an image's manifest record (a box fixed since) is
redone, not reused (``redone`` in the report's per-stage counts); a changed image file under the same name is
not noticed. An image the server refuses a request for (a 4xx such as a content-policy
refusal) is marked unusable with the reason, like an unreadable image, and the run goes on; one whose
call failed after every retry is left unfinished for a rerun.
Outputs are written in manifest order once every image has passed every stage:
one file per task named as the training recipes read them (``stage2_tc.jsonl``, ``stage2_ic.jsonl``,
``stage2_ti.jsonl``, ``stage3_conv.jsonl``, ``stage3_desc.jsonl``; project sample format, images
relative to ``out``),
``removed.jsonl``, ``failures.jsonl`` and ``report.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from tinygroundinggpt.boxes import BoxError, validate_pixel_box
from tinygroundinggpt.images import ImageLoadError, load_image
from tinygroundinggpt.synthesis.backends import CachedModels, ModelCallError, RequestRejected
from tinygroundinggpt.synthesis.cache import hash_inputs
from tinygroundinggpt.synthesis.postprocess import OUTPUT_FILES
from tinygroundinggpt.synthesis.replies import MalformedReply
from tinygroundinggpt.synthesis.stages import STAGES, StageContext, SynthConfig, merge_counts

log = logging.getLogger(__name__)


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """The manifest's records; ids must be unique (they key every stage's state)."""
    records, seen = [], set()
    with Path(path).open("rb") as fh:  # decoded per line, so that a bad byte is reported with its line
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line.decode("utf-8"))
            except ValueError as exc:  # bad JSON or bad UTF-8
                raise ValueError(f"{path}:{lineno}: not a JSON object in UTF-8: {exc}") from exc
            if not isinstance(rec, dict) or "id" not in rec or "image" not in rec:
                raise ValueError(f"{path}:{lineno}: a record needs 'id' and 'image'")
            rec["id"] = str(rec["id"])
            if rec["id"] in seen:
                raise ValueError(f"{path}:{lineno}: duplicate id {rec['id']!r}")
            seen.add(rec["id"])
            records.append(rec)
    return records


def in_shard(image_id: str, shard: int, num_shards: int) -> bool:
    """Shards split by a hash of the id, so a shard's images do not depend on manifest order."""
    return int(hash_inputs(image_id)[:12], 16) % num_shards == shard


def shard_file(out: Path, stem: str, ext: str, shard: int, num_shards: int) -> Path:
    """Where shard ``shard/num_shards`` of a run into ``out`` keeps ``stem`` (an unsharded run: no tail)."""
    tail = "" if num_shards == 1 else f".{shard}-of-{num_shards}"
    return out / f"{stem}{tail}.{ext}"


def _changed_options(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


class StateFile:
    """Append-only JSONL of per-image states for one stage; survives a kill mid-line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self, *, truncate: bool = True) -> dict[str, dict[str, Any]]:
        """The complete states, last one per id; a half-written last line is cut off the file, unless
        ``truncate`` is false (a reader that must not touch a file another process may still append to)."""
        if not self.path.exists():
            return {}
        states, good_end = {}, 0
        with self.path.open("rb") as fh:
            for number, line in enumerate(fh, 1):
                if not line.endswith(b"\n"):
                    break  # the writer was killed mid-line: that state was never complete
                try:
                    state = json.loads(line)
                    states[state["id"]] = state
                except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:  # edited or damaged
                    raise ValueError(
                        f"{self.path}:{number}: not a saved state ({type(exc).__name__}: {exc}); remove that line "
                        "(its image is then redone) or the file"
                    ) from exc
                good_end += len(line)
        if truncate and good_end != self.path.stat().st_size:
            with self.path.open("r+b") as fh:
                fh.truncate(good_end)
        return states

    def append(self, state: dict[str, Any]) -> None:
        line = (json.dumps(state, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock, self.path.open("ab") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


def _write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


class Pipeline:
    def __init__(
        self,
        out_dir: str | Path,
        models: CachedModels,
        config: SynthConfig | None = None,
        *,
        image_root: str | Path = ".",
        concurrency: int = 4,
        shard: tuple[int, int] = (0, 1),
        progress: bool = True,
    ) -> None:
        self.out = Path(out_dir)
        self.models = models
        self.config = config or SynthConfig()
        self.image_root = Path(image_root)
        self.concurrency = max(1, concurrency)
        self.shard, self.num_shards = shard
        if not 0 <= self.shard < self.num_shards:
            raise ValueError(f"shard must be i/N with 0 <= i < N, got {self.shard}/{self.num_shards}")
        self.progress = progress
        self.ctx = StageContext(models, self.config)
        if models.chat_backend is None:
            raise ValueError("relation extraction, QA generation and the judge need a chat model (--model)")
        if self.config.recogniser == "mllm" and models.grounder is None:
            raise ValueError("MLLM recognition gives names without boxes: a grounder is needed")

    def _name(self, stem: str, ext: str) -> Path:
        return shard_file(self.out, stem, ext, self.shard, self.num_shards)

    def _initial_state(self, rec: dict[str, Any]) -> dict[str, Any]:
        path = (self.image_root / rec["image"]).resolve()
        given = {
            "image": os.path.relpath(path, self.out.resolve()),
            "annotation": {"objects": rec.get("objects", []), "captions": rec.get("captions", [])},
            "expected_size": [rec["width"], rec["height"]] if "width" in rec and "height" in rec else None,
        }
        return {
            "id": rec["id"],
            # every later state carries it: a state saved from another version of the record is redone
            "input": hash_inputs(given),
            **given,
            "objects": [],
            "grounding": [],
            "relations": [],
            "generated": {},
            "samples": [],
        }

    def _load(self, state: dict[str, Any]) -> Image.Image | None:
        """The image, or None after recording why it cannot be used (then every stage passes it through)."""
        if state.get("unusable"):
            return None
        try:
            # as stored, the frame of the manifest's boxes and of the samples' images when training reads them
            image = load_image(self.out / state["image"], exif_orientation=False)
        except ImageLoadError as exc:
            problem = MalformedReply("image_unreadable", str(exc))
        else:
            size = list(image.size)
            if state["expected_size"] in (None, size):
                state["width"], state["height"] = size
                return image
            problem = MalformedReply("size_mismatch", f"manifest says {state['expected_size']}, image is {size}")
        state["unusable"] = True
        state.setdefault("failures", []).append(
            {"stage": "load", "kind": problem.kind, "error": str(problem), "image_id": state["id"]}
        )
        return None

    def _check_annotation(self, state: dict[str, Any]) -> None:
        """Keep the annotation's objects the stages can use; record each other one (and why) as a failure."""
        objects = state["annotation"]["objects"]
        if not isinstance(objects, list):
            objects = [objects]  # reported below as one malformed object
        kept = []
        for i, obj in enumerate(objects):
            what, kind = f"objects[{i}]", "bad_annotation"
            if not isinstance(obj, dict):
                problem = f"{what} must be a JSON object, got {type(obj).__name__}"
            elif not isinstance(obj.get("name"), str) or not obj["name"].strip():
                problem = f"{what} needs a non-empty string 'name', got {obj.get('name')!r}"
            elif isinstance(obj.get("score", 0.0), bool) or not isinstance(obj.get("score", 0.0), (int, float)):
                problem = f"{what}.score must be a number, got {obj['score']!r}"
            else:
                problem = None
                if obj.get("box") is not None:
                    try:
                        validate_pixel_box(obj["box"], state["width"], state["height"], what=f"{what}.box")
                    except BoxError as exc:
                        problem, kind = str(exc), "bad_annotation_box"
            if problem is None:
                kept.append(obj)
            else:
                state.setdefault("failures", []).append(
                    {"stage": "load", "kind": kind, "error": problem, "image_id": state["id"]}
                )
        state["annotation"]["objects"] = kept

    @staticmethod
    def _reject(state: dict[str, Any], stage: str, kind: str, reason: str, error: str) -> None:
        """Mark the image unusable: its samples so far are removed (counted under ``reason``), the failure recorded."""
        state["unusable"] = True
        for s in state.get("samples", []):
            state.setdefault("removed", []).append(
                {"id": s["id"], "filter": "request", "reason": reason, "image_id": state["id"]}
            )
            counts = state.setdefault("counts", {})
            counts[f"removed/request/{reason}"] = counts.get(f"removed/request/{reason}", 0) + 1
        state["samples"] = []
        state.setdefault("failures", []).append({"stage": stage, "kind": kind, "error": error, "image_id": state["id"]})

    def _work(self, stage: str, prev: dict[str, Any]) -> dict[str, Any]:
        state = copy.deepcopy(prev)
        image = self._load(state)
        if image is not None:
            try:
                if stage == "recognise":  # inside the try: an annotation no check foresaw fails its image alone
                    self._check_annotation(state)
                STAGES[stage](state, image, self.ctx)
            except RequestRejected as exc:
                state = copy.deepcopy(prev)  # nothing of the refused stage is kept
                self._reject(state, stage, "request_rejected", "rejected", str(exc))
            except ModelCallError:
                raise  # the image is left unfinished, for a rerun
            except Exception as exc:  # noqa: BLE001 - one image's unforeseen failure must not end a run of thousands
                log.exception("%s %s: unexpected error; the image is marked unusable", state["id"], stage)
                state = copy.deepcopy(prev)
                self._reject(state, stage, "stage_error", "error", f"{type(exc).__name__}: {exc}")
        for f in state.get("failures", [])[len(prev.get("failures", [])) :]:
            log.warning("%s %s: %s (%s)", f["image_id"], f["stage"], f["kind"], f["error"])
        return state

    def _run_stage(self, stage: str, todo: list[dict[str, Any]], store: StateFile) -> tuple[dict[str, Any], int]:
        done, unfinished = {}, 0
        items: Iterator[dict[str, Any]] = iter(todo)
        bar = tqdm(total=len(todo), desc=stage, disable=not self.progress, unit="img")
        with ThreadPoolExecutor(self.concurrency) as pool:
            pending: dict[Future, str] = {}
            while True:
                # Keep a bounded window in flight so a huge corpus is not submitted all at once.
                while len(pending) < 2 * self.concurrency:
                    nxt = next(items, None)
                    if nxt is None:
                        break
                    pending[pool.submit(self._work, stage, nxt)] = nxt["id"]
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    iid = pending.pop(fut)
                    try:
                        state = fut.result()
                    except ModelCallError as exc:
                        log.error("%s %s: left unfinished, a rerun retries it: %s", iid, stage, exc)
                        unfinished += 1
                    else:
                        store.append(state)
                        done[iid] = state
                    bar.update(1)
        bar.close()
        return done, unfinished

    def _check_options(self) -> None:
        """Saved states are only valid for the options that made them: refuse to mix two settings."""
        options = json.loads(json.dumps(dataclasses.asdict(self.config)))  # tuples → lists, as stored
        options["grounder"] = self.models.grounder.name if self.models.grounder else None
        options["chat"] = self.models.chat_backend.name if self.models.chat_backend else None
        path = self._name("state/options", "json")
        if path.exists():
            try:
                before = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc}); remove it to take this run's options") from exc
            if before != options:
                changed = _changed_options(options, before)
                raise ValueError(
                    f"{self.out} holds a run with other options ({', '.join(changed)}); use a new --out "
                    "(the model-call cache can be shared)"
                )
        else:  # written whole or not at all: a kill mid-write must not leave a file the next run cannot read
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(options, indent=2) + "\n", encoding="utf-8")
            tmp.replace(path)

    def run(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        (self.out / "state").mkdir(parents=True, exist_ok=True)
        self._check_options()
        mine = [r for r in records if in_shard(r["id"], self.shard, self.num_shards)]
        order = [r["id"] for r in mine]
        current = {r["id"]: self._initial_state(r) for r in mine}
        inputs = {i: st["input"] for i, st in current.items()}
        stage_report = {}
        for stage in STAGES:
            store = StateFile(self._name(f"state/{stage}", "jsonl"))
            done = store.load()
            stale = [i for i in order if i in done and done[i].get("input") != inputs[i]]
            if stale:  # the manifest's record changed since (a box fixed, a caption added): not reused
                log.warning("%s: %d images' records changed since their saved states; redone", stage, len(stale))
                for i in stale:
                    del done[i]
            resumed = sum(1 for i in order if i in done)
            todo = [current[i] for i in order if i in current and i not in done]
            new, unfinished = self._run_stage(stage, todo, store)
            done.update(new)
            current = {i: done[i] for i in order if i in done}
            stage_report[stage] = {
                "done": len(current), "resumed": resumed, "redone": len(stale), "unfinished": unfinished
            }  # fmt: skip
        complete = len(current) == len(order)
        final = [current[i] for i in order if i in current]
        report = self._report(len(order), stage_report, final, complete)
        if complete:
            for stem, rows in _output_rows(final).items():
                _write_jsonl_atomic(self._name(stem, "jsonl"), rows)
        tmp = self._name("report", "json.tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self._name("report", "json"))
        return report

    def _report(
        self, n_images: int, stage_report: dict[str, Any], final: list[dict[str, Any]], complete: bool
    ) -> dict[str, Any]:
        failures = Counter(f"{f['stage']}/{f['kind']}" for st in final for f in st.get("failures", []))
        counts = merge_counts(final)
        return {
            "complete": complete,
            "shard": f"{self.shard}/{self.num_shards}",
            "images": n_images,
            "calls": self.models.counter.calls,
            "cache_hits": self.models.cache.hits,
            "retries": self.models.counter.retries,
            "call_errors": self.models.counter.errors,
            "unusable_images": sum(1 for st in final if st.get("unusable")),
            "stages": stage_report,
            "counts": counts,
            "removed": {k[len("removed/") :]: v for k, v in counts.items() if k.startswith("removed/")},
            "failures": dict(sorted(failures.items())),
            "samples": {
                stem: sum(1 for st in final for s in st["samples"] if s["meta"]["task"] == task)
                for task, stem in OUTPUT_FILES.items()
            },
        }


def _sum_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Numbers add up; nested dicts add up key by key."""
    out: dict[str, Any] = {}
    for rep in reports:
        for k, v in rep.items():
            if isinstance(v, dict):
                out[k] = _sum_reports([out.get(k, {}), v])
            elif isinstance(v, bool):
                out[k] = out.get(k, True) and v
            elif isinstance(v, int | float):
                out[k] = out.get(k, 0) + v
    return out


def _output_rows(final: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each output file's rows (by stem) from the images' final states, in the states' order."""
    rows = {
        stem: [s for st in final for s in st["samples"] if s["meta"]["task"] == task]
        for task, stem in OUTPUT_FILES.items()
    }
    rows["removed"] = [r for st in final for r in st.get("removed", [])]
    rows["failures"] = [f for st in final for f in st.get("failures", [])]
    return rows


def merge_shards(
    records: list[dict[str, Any]],
    shard_dirs: list[str | Path],
    out_dir: str | Path,
    *,
    allow_incomplete: bool = False,
) -> dict[str, Any]:
    """Join the ``--shard i/N`` runs of ``records`` (one folder each, or one shared folder) into ``out_dir``, in
    manifest order with image paths made relative to ``out_dir``: the files an unsharded run writes.
    Returns the summed report (``calls``, ``cache_hits`` and ``retries`` are the shards' totals).

    Refuses, before writing anything, a shard found in two folders, a missing shard, shards run with other
    options, shards that do not match the manifest, and a shard whose images have not all passed every stage
    unless ``allow_incomplete``: then its finished images are merged and ``missing_images`` counts the others.
    """
    out = Path(out_dir)
    rank = {r["id"]: k for k, r in enumerate(records)}
    found: dict[tuple[int, int], tuple[Path, dict[str, Any]]] = {}
    for folder in dict.fromkeys(Path(d).resolve() for d in shard_dirs):
        for path in sorted(folder.glob("report.*-of-*.json")):
            report = json.loads(path.read_text(encoding="utf-8"))
            i, n = (int(v) for v in report["shard"].split("/"))
            if (i, n) in found:  # its rows would be merged twice
                raise ValueError(f"shard {i}/{n} is in both {found[i, n][0]} and {folder}: give each shard once")
            found[i, n] = (folder, report)
    num_shards = {n for _, n in found}
    if len(num_shards) != 1 or len(found) != next(iter(num_shards)):
        raise ValueError(
            f"need the reports of every shard i/N of one N, found {[f'{i}/{n}' for i, n in sorted(found)]}"
        )
    options = {
        key: json.loads(shard_file(folder, "state/options", "json", *key).read_text(encoding="utf-8"))
        for key, (folder, _) in found.items()
    }
    first = min(found)
    for key in sorted(found):
        changed = _changed_options(options[key], options[first])
        if changed:
            raise ValueError(
                f"shard {key[0]}/{key[1]} ({found[key][0]}) ran with other options than shard {first[0]}/{first[1]} "
                f"({', '.join(changed)}): their samples do not make one dataset; rerun it with the same options"
            )
    final, missing = [], {}
    for (i, n), (folder, report) in sorted(found.items()):
        states = StateFile(shard_file(folder, f"state/{list(STAGES)[-1]}", "jsonl", i, n)).load(truncate=False)
        unknown = [iid for iid in states if iid not in rank]
        share = [iid for iid in rank if in_shard(iid, i, n)]
        lacking = [iid for iid in share if iid not in states]
        hint = "merge with the manifest the shards ran on"
        if unknown:
            raise ValueError(f"image {unknown[0]!r} of shard {i}/{n} ({folder}) is not in the manifest: {hint}")
        if lacking and report["complete"]:
            raise ValueError(
                f"manifest image {lacking[0]!r} is in shard {i}/{n}'s share, but {folder} lacks it: {hint}"
            )
        if len(share) != report["images"]:
            raise ValueError(
                f"shard {i}/{n} ({folder}) ran on {report['images']} images, the manifest gives it {len(share)}: {hint}"
            )
        if lacking:
            if not allow_incomplete:
                raise ValueError(
                    f"shard {i}/{n} ({folder}) is incomplete: {len(lacking)} of its {len(share)} images have not "
                    f"passed every stage (first {lacking[0]!r}); rerun it to finish them, or merge with "
                    "--allow-incomplete to leave them out"
                )
            log.warning("shard %d/%d: %d unfinished images left out of the merge", i, n, len(lacking))
            missing[f"{i}/{n}"] = len(lacking)
        for state in states.values():
            for s in state["samples"]:
                s["image"] = os.path.relpath(folder / s["image"], out.resolve())
            final.append(state)
    final.sort(key=lambda st: rank[st["id"]])
    out.mkdir(parents=True, exist_ok=True)
    for stem, rows in _output_rows(final).items():
        _write_jsonl_atomic(out / f"{stem}.jsonl", rows)
    reports = [report for _, report in found.values()]
    merged = {**_sum_reports(reports), "complete": not missing, "shard": f"merged {len(reports)}"}
    if missing:
        merged["missing_images"] = missing
    (out / "report.json").write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
    return merged
