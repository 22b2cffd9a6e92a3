"""Post-processing (Fig. 10 steps 1-4, Fig. 11 steps 1-3): model replies → samples in the project format.

Replies speak of objects as ``<name>`` and of boxes as ``[x1, y1, x2, y2]`` normalised to the
original width and height (the frame the prompts give them). Here every such box becomes a pixel
box in ``sample["boxes"]`` referenced as ``<box:i>``, and a highlighted object in a question becomes
``<object:i>``: the object image cut from its box at training time. Numbers still in brackets after that are
coordinates spelled otherwise (``[a b c d]``, ``(a, b, c, d)``, five numbers): text never holds coordinates, so
the QA or description holding them is dropped (``bad_box``). They are not read as boxes: boxes.py has one box
syntax, ``[a, b, c, d]``, the one the prompts show and the evaluators parse.

Several objects may share a name (three persons). Each grounded object then has a ``label`` that tells
them apart (``person (2)``, see :func:`instance_labels`): the models are shown labels, training text only
plain names, and no sample asks where "the person" is when several objects are persons.

Each sample's ``meta`` keeps ``task`` (see :data:`OUTPUT_FILES`), ``image_id`` and ``scores`` (the grounding
confidence of each box, ``None`` for a box the model wrote that matches no grounded object) — the
filters read them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tinygroundinggpt.boxes import (
    BoxError,
    iou,
    norm_to_pixel,
    number_groups,
    parse_first_box,
    round_box,
    validate_unit_box,
)
from tinygroundinggpt.synthesis.cache import hash_inputs
from tinygroundinggpt.synthesis.replies import MalformedReply, normalise_name

# Each task's output file: the names the stage-2 and stage-3 training recipes read (and the world writes).
OUTPUT_FILES = {
    "text_coordinate": "stage2_tc",
    "image_coordinate": "stage2_ic",
    "text_image": "stage2_ti",
    "conversation": "stage3_conv",
    "description": "stage3_desc",
}
DESCRIBE_PROMPT = "Describe this image in detail, giving the coordinates of the objects you mention."
# A highlighted object, optionally followed by its box; or a bare box.
_SPAN_RE = re.compile(r"<([^<>]+)>(\s*\[[^\[\]]*\])?|(\[[^\[\]]*\])")
_HIGHLIGHT_RE = re.compile(r"<([^<>]+)>")
_BARE_BOX_RE = re.compile(r"\[[^\[\]]*\]")
_ARTICLE_RE = re.compile(r"^(the|a|an) ")
_MATCH_IOU = 0.5  # a model-written box this close to a grounded one inherits its confidence


def instance_labels(names: Sequence[str]) -> list[str]:
    """One distinct label per object: its name, or ``name (k)`` for the k-th of several objects that share
    it (case and spacing ignored), so that a model can tell them apart and name each one."""
    keys = [normalise_name(n) for n in names]
    seen: dict[str, int] = {}
    labels = []
    for name, key in zip(names, keys, strict=True):
        seen[key] = seen.get(key, 0) + 1
        labels.append(f"{name} ({seen[key]})" if keys.count(key) > 1 else name)
    return labels


def label_of(obj: dict[str, Any]) -> str:
    """The grounded object's identity label (states written before labels existed have only a name)."""
    return obj.get("label", obj["name"])


def _bare(name: str) -> str:
    return _ARTICLE_RE.sub("", normalise_name(name))


def shared_names(grounding: Sequence[dict[str, Any]]) -> set[str]:
    """Plain names (normalised, article dropped) that more than one recognised object bears."""
    counts: dict[str, int] = {}
    for g in grounding:
        counts[_bare(g["name"])] = counts.get(_bare(g["name"]), 0) + 1
    return {k for k, n in counts.items() if n > 1} | {_bare(g["name"]) for g in grounding if label_of(g) != g["name"]}


def plain_text(text: str, grounding: Sequence[dict[str, Any]]) -> str:
    """``text`` with every instance label written as its plain name (``person (2)`` → ``person``)."""
    for g in grounding:
        label, name = label_of(g), g["name"]
        if label != name and label.startswith(name):
            suffix = re.escape(label[len(name) :].strip())
            text = re.sub(rf"(?<!\w)({re.escape(name)})\s*{suffix}", r"\1", text, flags=re.I)
    return text


def seeded_rng(*parts: Any) -> random.Random:
    """A generator that depends only on ``parts``: reruns and resumes make the same choices."""
    return random.Random(int(hash_inputs(list(parts))[:16], 16))


@dataclass
class _Builder:
    """Accumulates one sample's boxes (deduplicated) and their grounding scores."""

    grounding: Sequence[dict[str, Any]]
    boxes: list[list[float]] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)

    def add(self, box: Sequence[float], score: float | None = None, *, dedupe: bool = True) -> int:
        """Index of ``box`` in the sample. ``dedupe=False`` for boxes of *different* objects: two
        objects grounded to one box then stay two, and the object-IoU filter removes the ambiguity."""
        box = list(round_box(box, 2))
        if dedupe and box in self.boxes:
            return self.boxes.index(box)
        if score is None:
            matches = [(iou(box, g["box"]), g["score"]) for g in self.grounding]
            best = max(matches, default=(0.0, None))
            score = best[1] if best[0] >= _MATCH_IOU else None
        self.boxes.append(box)
        self.scores.append(score)
        return len(self.boxes) - 1

    def sample(self, sid: str, image_id: str, task: str, turns: list[tuple[str, str]]) -> dict[str, Any]:
        messages = []
        for n, (q, a) in enumerate(turns):
            q, a = plain_text(q, self.grounding), plain_text(a, self.grounding)
            messages.append({"role": "user", "content": ("<image>\n" + q) if n == 0 else q})
            messages.append({"role": "assistant", "content": a})
        return {
            "id": sid,
            "boxes": self.boxes,
            "messages": messages,
            "meta": {"task": task, "image_id": image_id, "scores": self.scores},
        }


def find_object(name: str, grounding: Sequence[dict[str, Any]]) -> int | None:
    """Index of the grounded object labelled ``name`` (case and spacing ignored; a leading article may
    differ). A name several objects share matches none of them: only their labels do."""
    key = normalise_name(name)
    for i, g in enumerate(grounding):
        gk = normalise_name(label_of(g))
        if key == gk or _bare(key) == _bare(gk):
            return i
    return None


def _names_shared_object(name: str, grounding: Sequence[dict[str, Any]], shared: set[str]) -> bool:
    """Whether ``name`` (a plain name or a label) refers to one of several objects with one name."""
    i = find_object(name, grounding)
    return _bare(name) in shared or (i is not None and _bare(grounding[i]["name"]) in shared)


# Fig. 10 steps 1 (text–coordinate, both directions) and 2 (image–coordinate), one object each.
SINGLE_OBJECT_TEMPLATES = (
    ("tc-{i}a", "text_coordinate", "Describe the object located within the region <box:0>.", "{name}"),
    ("tc-{i}b", "text_coordinate", "In this image, where is {name} located?", "<box:0>"),
    ("ic-{i}a", "image_coordinate", "What is the location of <object:0>?", "<box:0>"),
)
OPTION_TEMPLATE = ("Which is the item in region <box:0>? a. <object:{a}>; b. <object:{b}>.", "The answer is {letter}.")


def template_samples(image_id: str, grounding: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fig. 10 steps 1 and 2: text–coordinate and image–coordinate pairs from the grounded objects alone.

    "Where is {name}" is left out for a name that several objects share: it would have several answers."""
    out = []
    shared = shared_names(grounding)
    for i, obj in enumerate(grounding):
        for suffix, task, q, a in SINGLE_OBJECT_TEMPLATES:
            if "{name}" in q and _bare(obj["name"]) in shared:
                continue
            b = _Builder(grounding)
            b.add(obj["box"], obj["score"])
            turn = (q.format(name=obj["name"]), a.format(name=obj["name"]))
            out.append(b.sample(f"{image_id}-{suffix.format(i=i)}", image_id, task, [turn]))
        others = [g for g in grounding if g is not obj]
        if not others:
            continue
        # The distractor overlaps the target least, so the two object images are easy to tell apart.
        other = min(others, key=lambda g: iou(g["box"], obj["box"]))
        b = _Builder(grounding)
        b.add(obj["box"], obj["score"])
        b.add(other["box"], other["score"], dedupe=False)
        target_first = seeded_rng(image_id, "ic-option", i).random() < 0.5
        q, a = OPTION_TEMPLATE  # box 0 is the target, box 1 the distractor
        turn = (
            q.format(a=0, b=1) if target_first else q.format(a=1, b=0),
            a.format(letter="a" if target_first else "b"),
        )
        out.append(b.sample(f"{image_id}-ic-{i}b", image_id, "image_coordinate", [turn]))
    return out


def text_image_samples(
    image_id: str,
    task: str,
    qas: Sequence[dict[str, str]],
    grounding: Sequence[dict[str, Any]],
    width: int,
    height: int,
) -> tuple[list[dict[str, Any]], list[MalformedReply]]:
    """Fig. 10 step 3: each ``<name>`` in a question becomes that object's image; in answers, plain text.
    A bare ``[x1, y1, x2, y2]`` (prompt frame) becomes a ``<box:i>`` like every other box.

    A QA whose question highlights nothing, names an object that was not grounded or that several objects
    share, or holds a malformed box (coordinates in any other spelling included), is dropped and returned as a
    :class:`MalformedReply` for the log.
    """
    samples, problems = [], []
    shared = shared_names(grounding)
    for n, qa in enumerate(qas):
        b = _Builder(grounding)
        try:
            names = _HIGHLIGHT_RE.findall(qa["question"])
            if not names:
                raise MalformedReply("no_highlight", f"question highlights no <object>: {qa['question']!r}")
            refs, slots = {}, {}  # name → box index; grounded object → box index
            for name in names:
                g = find_object(name, grounding)
                if g is None and _bare(name) in shared:
                    raise MalformedReply("ambiguous_object", f"<{name}> names several objects")
                if g is None:
                    raise MalformedReply("object_not_in_list", f"<{name}> is not a grounded object")
                if g not in slots:
                    slots[g] = b.add(grounding[g]["box"], grounding[g]["score"], dedupe=False)
                refs[name] = slots[g]
            question = _HIGHLIGHT_RE.sub(lambda m, refs=refs: f"<object:{refs[m.group(1)]}>", qa["question"])
            answer = _HIGHLIGHT_RE.sub(lambda m: m.group(1), qa["answer"])
            question, answer = (_no_coordinates(_bare_boxes(t, b, width, height)) for t in (question, answer))
        except MalformedReply as exc:
            problems.append(exc)
            continue
        samples.append(b.sample(f"{image_id}-{task}-{n}", image_id, "text_image", [(question, answer)]))
    return samples, problems


def _bare_boxes(text: str, b: _Builder, width: int, height: int) -> str:
    """Every ``[x1, y1, x2, y2]`` in ``text`` (prompt frame) as a ``<box:i>`` of ``b``; other brackets kept
    (see :func:`_no_coordinates` for those that hold numbers)."""

    def repl(m: re.Match[str]) -> str:
        if parse_first_box(m.group(0)) is None:
            return m.group(0)  # brackets that hold no box are ordinary text
        return f"<box:{b.add(_reply_box(m.group(0), width, height))}>"

    return _BARE_BOX_RE.sub(repl, text)


def _no_coordinates(text: str) -> str:
    """``text`` once its boxes are ``<box:i>``; numbers still in brackets are coordinates written some other way
    (``[a b c d]``, ``(a, b, c, d)``, five numbers), which would teach the prompt's frame as text: the QA goes."""
    left = number_groups(text)
    if left:
        raise MalformedReply("bad_box", f"{left[0]!r} is not [x1, y1, x2, y2] and cannot stay in the text")
    return text


def _reply_box(text: str, width: int, height: int) -> list[float]:
    box = parse_first_box(text)
    if box is None:
        raise MalformedReply("bad_box", f"{text.strip()!r} is not [x1, y1, x2, y2]")
    try:
        return list(norm_to_pixel(validate_unit_box(box, what="reply box"), width, height))
    except BoxError as exc:
        raise MalformedReply("box_out_of_range", str(exc)) from exc


def _ground_text(
    text: str,
    b: _Builder,
    width: int,
    height: int,
    rng: random.Random | None,
    object_rate: float,
    mentioned: dict[str, int],
) -> str:
    """Rewrite ``<name> [box]``, ``<name>`` and ``[box]`` in ``text``; with ``rng`` (questions only) some
    named boxes become object images (Fig. 11 step 3)."""

    def repl(m: re.Match[str]) -> str:
        name, named_box, bare_box = m.group(1), m.group(2), m.group(3)
        if bare_box is not None:
            return _bare_boxes(bare_box, b, width, height)
        if named_box is None:
            return name
        k = b.add(_reply_box(named_box, width, height))
        mentioned.setdefault(name, k)
        if rng is not None and rng.random() < object_rate:
            return f"<object:{k}>"
        return f"{name} <box:{k}>"

    return _no_coordinates(_SPAN_RE.sub(repl, text))


def conversation_sample(
    image_id: str,
    qas: Sequence[dict[str, str]],
    grounding: Sequence[dict[str, Any]],
    width: int,
    height: int,
    *,
    object_rate: float = 0.5,
    max_location_turns: int = 3,
) -> tuple[dict[str, Any] | None, list[MalformedReply]]:
    """Fig. 11: one multi-round sample per image. A QA with a malformed box is dropped (and returned)."""
    b = _Builder(grounding)
    rng = seeded_rng(image_id, "conversation")
    turns, problems, mentioned = [], [], {}
    for qa in qas:
        snapshot = (list(b.boxes), list(b.scores), dict(mentioned))
        try:
            q = _ground_text(qa["question"], b, width, height, rng, object_rate, mentioned)
            a = _ground_text(qa["answer"], b, width, height, None, object_rate, mentioned)
        except MalformedReply as exc:
            b.boxes, b.scores, mentioned = snapshot  # forget boxes of the dropped QA
            problems.append(exc)
            continue
        turns.append((q, a))
    if not turns:
        return None, problems
    # Fig. 11 step 1: extra location turns for objects the conversation grounded, but not for a name that
    # several objects share ("What is the person?" would have several answers).
    shared = shared_names(grounding)
    located = [(name, k) for name, k in mentioned.items() if not _names_shared_object(name, grounding, shared)]
    for name, k in located[:max_location_turns]:
        turns.append((f"What is {name}? Specify the location.", f"It's {name} <box:{k}>."))
    return b.sample(f"{image_id}-conversation", image_id, "conversation", turns), problems


def description_sample(
    image_id: str, description: str, grounding: Sequence[dict[str, Any]], width: int, height: int
) -> dict[str, Any]:
    """Fig. 12: the grounded description as the answer to a describe-the-image request.

    Raises :class:`MalformedReply` when a box is malformed or the description holds no box at all.
    """
    b = _Builder(grounding)
    text = _ground_text(description.strip(), b, width, height, None, 0.0, {})
    if not b.boxes:
        raise MalformedReply("no_box", "description grounds no object")
    return b.sample(f"{image_id}-description", image_id, "description", [(DESCRIBE_PROMPT, text)])
