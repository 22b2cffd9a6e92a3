"""The pipeline's stages (paper §3.2), each a function of one image's state.

A state is a JSON-able dict that each stage extends; the runner (:mod:`.pipeline`) persists it after
every stage, so each stage is a separate, restartable step. A stage raises
:class:`~tinygroundinggpt.synthesis.backends.ModelCallError` only for a call that failed after all
retries: the image is then left unfinished for that stage and a rerun tries it again; and
:class:`~tinygroundinggpt.synthesis.backends.RequestRejected` when the server refused a request for
its content: the runner then marks the image unusable. A malformed or truncated reply is never an
exception: it is recorded in ``state["failures"]`` with its prompt and reply, and the stage goes on
with what it could use.

``state["objects"]`` holds the recognised names as they are (several objects may share one); each
grounded object also has a distinct ``label`` (``person (2)``), which is what the models are shown.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from tinygroundinggpt.boxes import format_box, pixel_to_norm
from tinygroundinggpt.data.format import BOX_REF_RE, OBJECT_REF_RE, Sample, SampleError
from tinygroundinggpt.images import crop_box
from tinygroundinggpt.synthesis import prompts
from tinygroundinggpt.synthesis.backends import CachedModels, ChatReply
from tinygroundinggpt.synthesis.filters import FilterConfig, apply_filters, object_indices
from tinygroundinggpt.synthesis.postprocess import (
    conversation_sample,
    description_sample,
    instance_labels,
    label_of,
    template_samples,
    text_image_samples,
)
from tinygroundinggpt.synthesis.replies import (
    MalformedReply,
    normalise_name,
    parse_judgement,
    parse_object_list,
    parse_qa_reply,
    parse_triples,
)

GENERATION_TASKS = {
    "object_in_question": prompts.FINE_GRAINED_OBJECT_IN_QUESTION,
    "objects_as_options": prompts.FINE_GRAINED_OBJECTS_AS_OPTIONS,
    "conversation": prompts.GROUNDING_CONVERSATION,
    "description": prompts.GROUNDING_DESCRIPTION,
}


@dataclass
class SynthConfig:
    recogniser: str = "annotation"  # "annotation": the record's objects; "mllm": the Fig. 7 prompt
    box_threshold: float = 0.3  # grounding: detections below this are dropped (GroundingDINO's usual range)
    tasks: tuple[str, ...] = tuple(GENERATION_TASKS)
    templates: bool = True  # Fig. 10 steps 1-2: text–coordinate and image–coordinate pairs
    object_rate: float = 0.5  # Fig. 11 step 3: share of named boxes in questions shown as object images
    max_location_turns: int = 3  # Fig. 11 step 1
    filters: FilterConfig = field(default_factory=FilterConfig)
    judge: bool = True
    min_quality: int = 3  # Table 7: quality below this is removed

    def __post_init__(self) -> None:
        if self.recogniser not in ("annotation", "mllm"):
            raise ValueError(f"recogniser must be 'annotation' or 'mllm', got {self.recogniser!r}")
        unknown = set(self.tasks) - set(GENERATION_TASKS)
        if unknown:
            raise ValueError(f"unknown generation task(s) {sorted(unknown)}; known: {list(GENERATION_TASKS)}")


@dataclass
class StageContext:
    models: CachedModels
    config: SynthConfig


def _fail(state: dict[str, Any], stage: str, exc: MalformedReply, prompt: str = "", reply: str = "") -> None:
    state.setdefault("failures", []).append(
        {"stage": stage, "kind": exc.kind, "error": str(exc), "image_id": state["id"], "prompt": prompt, "reply": reply}
    )


def _note_truncated(state: dict[str, Any], stage: str, prompt: str, reply: ChatReply) -> None:
    if reply.truncated:
        msg = "the reply hit max_tokens; only its complete items are used"
        _fail(state, stage, MalformedReply("truncated", msg), prompt, reply.text)


def _count(state: dict[str, Any], key: str, n: int = 1) -> None:
    counts = state.setdefault("counts", {})
    counts[key] = counts.get(key, 0) + n


def _names_text(names: list[str]) -> str:
    return "[" + ", ".join(names) + "]"


def _relations_text(relations: list[list[str]]) -> str:
    return "[" + ", ".join(f"({a}, {r}, {b})" for a, r, b in relations) + "]"


def _grounding_text(state: dict[str, Any]) -> str:
    w, h = state["width"], state["height"]
    return (
        "{"
        + ", ".join(f'"{label_of(g)}": {format_box(pixel_to_norm(g["box"], w, h))}' for g in state["grounding"])
        + "}"
    )


def recognise(state: dict[str, Any], image: Image.Image, ctx: StageContext) -> None:
    """L1: object names, from the annotation or from the MLLM (Fig. 7)."""
    if ctx.config.recogniser == "annotation":
        # Names as annotated, repeats kept: the grounding stage labels the instances apart.
        state["objects"] = [obj["name"] for obj in state.get("annotation", {}).get("objects", [])]
    else:
        reply = ctx.models.chat(prompts.OBJECT_RECOGNITION, [image])
        _note_truncated(state, "recognise", prompts.OBJECT_RECOGNITION, reply)
        try:
            state["objects"] = parse_object_list(reply.text, partial=reply.truncated)
        except MalformedReply as exc:
            _fail(state, "recognise", exc, prompts.OBJECT_RECOGNITION, reply.text)
            state["objects"] = []
    _count(state, "objects", len(state["objects"]))


def ground(state: dict[str, Any], image: Image.Image, ctx: StageContext) -> None:
    """S1: one box per object, from the grounder (low-confidence ones dropped) or from the annotation.

    Each grounded object keeps its plain ``name`` and gets its instance ``label`` (see ``instance_labels``)."""
    names = state["objects"]
    labels = instance_labels(names)
    if not names:
        state["grounding"] = []
    elif ctx.models.grounder is not None:
        dets = ctx.models.ground(image, names)  # a repeated name gets one box per listing
        # The k-th detection of a name is its k-th instance (instances of one name are interchangeable).
        unused: dict[str, list[str]] = {}
        for name, label in zip(names, labels, strict=True):
            unused.setdefault(name, []).append(label)
        found = [
            {"name": d.name, "label": unused[d.name].pop(0), "box": list(d.box), "score": d.score}
            for d in dets
            if unused.get(d.name)
        ]
        state["grounding"] = [g for g in found if g["score"] >= ctx.config.box_threshold]
        _count(state, "ground_dropped_low_confidence", len(found) - len(state["grounding"]))
    else:
        objs = state.get("annotation", {}).get("objects", [])
        state["grounding"] = [
            {"name": name, "label": label, "box": list(obj["box"]), "score": float(obj.get("score", 1.0))}
            for name, label, obj in zip(names, labels, objs, strict=False)
            if obj.get("box") is not None
        ]
    _count(state, "grounded", len(state["grounding"]))


def relate(state: dict[str, Any], image: Image.Image, ctx: StageContext) -> None:
    """L2: (instance, relation, instance) triples among the grounded objects (Fig. 7)."""
    names = [label_of(g) for g in state["grounding"]]
    state["relations"] = []
    if len(names) < 2:
        return
    prompt = prompts.RELATION_EXTRACTION.format(objects=_names_text(names))
    reply = ctx.models.chat(prompt, [image])
    _note_truncated(state, "relate", prompt, reply)
    try:
        triples, dropped = parse_triples(reply.text, partial=reply.truncated)
    except MalformedReply as exc:
        _fail(state, "relate", exc, prompt, reply.text)
        return
    for p in dropped:  # the reply's other triples are kept
        _fail(state, "relate", p, prompt, reply.text)
    by_key = {normalise_name(n): n for n in names}
    for a, r, b in triples:
        if normalise_name(a) not in by_key or normalise_name(b) not in by_key:
            missing = a if normalise_name(a) not in by_key else b
            problem = MalformedReply("object_not_in_list", f"{missing!r} is not in the list")
            _fail(state, "relate", problem, prompt, reply.text)
            continue
        state["relations"].append([by_key[normalise_name(a)], r, by_key[normalise_name(b)]])
    _count(state, "relations", len(state["relations"]))


def generate(state: dict[str, Any], image: Image.Image, ctx: StageContext) -> None:
    """QA generation with the task prompts of Figs. 10, 11 and 12."""
    state["generated"] = {}
    if not state["grounding"]:
        return
    fields = {
        "image": prompts.IMAGE_REF,
        "objects": _names_text([label_of(g) for g in state["grounding"]]),
        "relations": _relations_text(state["relations"]),
        "grounding": _grounding_text(state),
        "annotation": " ".join(state.get("annotation", {}).get("captions", [])) or "none",
    }
    for task in ctx.config.tasks:
        prompt = GENERATION_TASKS[task].format(**fields)
        reply = ctx.models.chat(prompt, [image])
        try:
            if task == "description":
                if reply.truncated:
                    raise MalformedReply("truncated", "the description hit max_tokens: dropped, not cut mid-sentence")
                if not reply.text.strip():
                    raise MalformedReply("empty", "empty description")
                state["generated"][task] = reply.text.strip()
            else:
                _note_truncated(state, "generate", prompt, reply)
                items, dropped = parse_qa_reply(reply.text)
                for p in dropped:  # the reply's other items are kept
                    _fail(state, "generate", p, prompt, reply.text)
                state["generated"][task] = items
        except MalformedReply as exc:
            _fail(state, "generate", exc, prompt, reply.text)
            continue
        _count(state, f"generated/{task}")


def postprocess(state: dict[str, Any], image: Image.Image, ctx: StageContext) -> None:
    """Replies → samples (Fig. 10 steps 1-3, Fig. 11 steps 1-3); step 4 is the object-IoU filter."""
    cfg, gen, grounding = ctx.config, state["generated"], state["grounding"]
    w, h, iid = state["width"], state["height"], state["id"]
    samples = template_samples(iid, grounding) if cfg.templates and grounding else []
    for task in ("object_in_question", "objects_as_options"):
        if task in gen:
            made, problems = text_image_samples(iid, task, gen[task], grounding, w, h)
            samples += made
            for p in problems:
                _fail(state, "postprocess", p, reply=str(gen[task]))
    if "conversation" in gen:
        made, problems = conversation_sample(
            iid,
            gen["conversation"],
            grounding,
            w,
            h,
            object_rate=cfg.object_rate,
            max_location_turns=cfg.max_location_turns,
        )
        samples += [made] if made else []
        for p in problems:
            _fail(state, "postprocess", p, reply=str(gen["conversation"]))
    if "description" in gen:
        try:
            samples.append(description_sample(iid, gen["description"], grounding, w, h))
        except MalformedReply as exc:
            _fail(state, "postprocess", exc, reply=gen["description"])
    state["samples"] = []
    for s in samples:
        s.update(image=state["image"], width=w, height=h)
        try:
            Sample.from_json(s)
        except SampleError as exc:
            _fail(state, "postprocess", MalformedReply("invalid_sample", str(exc)), reply=str(s))
            continue
        state["samples"].append(s)
        _count(state, f"postprocessed/{s['meta']['task']}")


def filter_samples(state: dict[str, Any], image: Image.Image, ctx: StageContext) -> None:
    kept, removed, counts = apply_filters(state["samples"], state["width"], state["height"], ctx.config.filters)
    state["samples"] = kept
    state.setdefault("removed", []).extend({**r, "image_id": state["id"]} for r in removed)
    for k, n in counts.items():
        _count(state, f"removed/{k}", n)


def judge_text(sample: dict[str, Any], width: int, height: int) -> str:
    """The QA as the judge reads it: boxes in the prompts' normalised frame, object images numbered."""
    objs = object_indices(sample)
    lines = []
    for m in sample["messages"]:
        text = m["content"].replace("<image>\n", "")
        text = BOX_REF_RE.sub(
            lambda r: format_box(pixel_to_norm(sample["boxes"][int(r.group(1))], width, height)), text
        )
        text = OBJECT_REF_RE.sub(lambda r: f"<object image {objs.index(int(r.group(1))) + 1}>", text)
        lines.append(("Question: " if m["role"] == "user" else "Answer: ") + text)
    return "\n".join(lines)


def judge(state: dict[str, Any], image: Image.Image, ctx: StageContext) -> None:
    """Table 7 LLM judge: quality below ``min_quality`` or "Correct: No" is removed."""
    if not ctx.config.judge:
        return
    kept = []
    for s in state["samples"]:
        prompt = prompts.QA_JUDGE + "\n\n" + judge_text(s, state["width"], state["height"])
        crops = [crop_box(image, tuple(s["boxes"][i])) for i in object_indices(s)]
        reply = ctx.models.chat(prompt, [image, *crops]).text  # a cut-off verdict still parses or is malformed
        try:
            quality, correct = parse_judgement(reply)
        except MalformedReply as exc:
            _fail(state, "judge", exc, prompt, reply)
            reason = "judge_malformed"
        else:
            reason = "low_quality" if quality < ctx.config.min_quality else None if correct else "incorrect"
        if reason is None:
            kept.append(s)
            continue
        state.setdefault("removed", []).append(
            {"id": s["id"], "filter": "judge", "reason": reason, "image_id": state["id"]}
        )
        _count(state, f"removed/judge/{reason}")
    state["samples"] = kept


Stage = Callable[[dict[str, Any], Image.Image, StageContext], None]
STAGES: dict[str, Stage] = {
    "recognise": recognise,
    "ground": ground,
    "relate": relate,
    "generate": generate,
    "postprocess": postprocess,
    "filter": filter_samples,
    "judge": judge,
}


def merge_counts(states: list[dict[str, Any]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for s in states:
        total.update(s.get("counts", {}))
    return dict(sorted(total.items()))
