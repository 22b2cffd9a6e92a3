"""The pipeline's stages (paper §3.2), each a function of one image's state.

A state is a JSON-able dict that each stage extends; the runner (:mod:`.pipeline`) persists it after
every stage, so each stage is a separate, restartable step. A stage raises
:class:`~tinygroundinggpt.synthesis.backends.ModelCallError` only for a call that failed after all
retries: the image is then left unfinished for that stage and a rerun tries it again. A malformed
reply is never an exception: it is recorded in ``state["failures"]`` with its prompt and reply, and
the stage goes on with what it could use.
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
from tinygroundinggpt.synthesis.backends import CachedModels
from tinygroundinggpt.synthesis.filters import FilterConfig, apply_filters, object_indices
from tinygroundinggpt.synthesis.postprocess import (
    conversation_sample,
    description_sample,
    template_samples,
    text_image_samples,
)
from tinygroundinggpt.synthesis.replies import (
    MalformedReply,
    normalise_name,
    parse_judgement,
    parse_object_list,
    parse_qa_list,
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
        "{" + ", ".join(f'"{g["name"]}": {format_box(pixel_to_norm(g["box"], w, h))}' for g in state["grounding"]) + "}"
    )


def recognise(state: dict[str, Any], image: Image.Image, ctx: StageContext) -> None:
    """L1: object names, from the annotation or from the MLLM (Fig. 7)."""
    if ctx.config.recogniser == "annotation":
        names: list[str] = []
        for obj in state.get("annotation", {}).get("objects", []):
            name, n = obj["name"], 2
            # Two objects with one name would make "<name>" ambiguous; number the later ones.
            while normalise_name(name) in map(normalise_name, names):
                name, n = f"{obj['name']} ({n})", n + 1
            names.append(name)
        state["objects"] = names
    else:
        reply = ctx.models.chat(prompts.OBJECT_RECOGNITION, [image])
        try:
            state["objects"] = parse_object_list(reply)
        except MalformedReply as exc:
            _fail(state, "recognise", exc, prompts.OBJECT_RECOGNITION, reply)
            state["objects"] = []
    _count(state, "objects", len(state["objects"]))


def ground(state: dict[str, Any], image: Image.Image, ctx: StageContext) -> None:
    """S1: one box per name, from the grounder (low-confidence ones dropped) or from the annotation."""
    names = state["objects"]
    if not names:
        state["grounding"] = []
    elif ctx.models.grounder is not None:
        dets = ctx.models.ground(image, names)
        kept = [d for d in dets if d.score >= ctx.config.box_threshold]
        _count(state, "ground_dropped_low_confidence", len(dets) - len(kept))
        state["grounding"] = [{"name": d.name, "box": list(d.box), "score": d.score} for d in kept]
    else:
        objs = state.get("annotation", {}).get("objects", [])
        state["grounding"] = [
            {"name": name, "box": list(obj["box"]), "score": float(obj.get("score", 1.0))}
            for name, obj in zip(names, objs, strict=False)
            if obj.get("box") is not None
        ]
    _count(state, "grounded", len(state["grounding"]))


def relate(state: dict[str, Any], image: Image.Image, ctx: StageContext) -> None:
    """L2: (instance, relation, instance) triples among the grounded objects (Fig. 7)."""
    names = [g["name"] for g in state["grounding"]]
    state["relations"] = []
    if len(names) < 2:
        return
    prompt = prompts.RELATION_EXTRACTION.format(objects=_names_text(names))
    reply = ctx.models.chat(prompt, [image])
    try:
        triples = parse_triples(reply)
    except MalformedReply as exc:
        _fail(state, "relate", exc, prompt, reply)
        return
    by_key = {normalise_name(n): n for n in names}
    for a, r, b in triples:
        if normalise_name(a) not in by_key or normalise_name(b) not in by_key:
            missing = a if normalise_name(a) not in by_key else b
            _fail(
                state, "relate", MalformedReply("object_not_in_list", f"{missing!r} is not in the list"), prompt, reply
            )
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
        "objects": _names_text([g["name"] for g in state["grounding"]]),
        "relations": _relations_text(state["relations"]),
        "grounding": _grounding_text(state),
        "annotation": " ".join(state.get("annotation", {}).get("captions", [])) or "none",
    }
    for task in ctx.config.tasks:
        prompt = GENERATION_TASKS[task].format(**fields)
        reply = ctx.models.chat(prompt, [image])
        try:
            if task == "description":
                if not reply.strip():
                    raise MalformedReply("empty", "empty description")
                state["generated"][task] = reply.strip()
            else:
                state["generated"][task] = parse_qa_list(reply)
        except MalformedReply as exc:
            _fail(state, "generate", exc, prompt, reply)
            continue
        _count(state, f"generated/{task}")


def postprocess(state: dict[str, Any], image: Image.Image, ctx: StageContext) -> None:
    """Replies → samples (Fig. 10 steps 1-3, Fig. 11 steps 1-3); step 4 is the object-IoU filter."""
    cfg, gen, grounding = ctx.config, state["generated"], state["grounding"]
    w, h, iid = state["width"], state["height"], state["id"]
    samples = template_samples(iid, grounding) if cfg.templates and grounding else []
    for task in ("object_in_question", "objects_as_options"):
        if task in gen:
            made, problems = text_image_samples(iid, task, gen[task], grounding)
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
        reply = ctx.models.chat(prompt, [image, *crops])
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
