"""Training samples of every stage, built from one scene, in the project's sample format.

Public API (stable): :data:`STAGE_FILES` maps each training file's name to its builder
``builder(scene, image, sample_id, rng) -> list[Sample]``; ``image`` is the image path as the data file
will hold it. Boxes are stored in original pixels and referenced as ``<box:i>``; object images as
``<object:i>`` (cropped from ``boxes[i]``). The families follow the paper:

* ``stage1.jsonl`` – short captions, object lists and relation sentences (no boxes);
* ``stage2_tc.jsonl`` – text↔coordinate: REC (``Output the coordinate of <exp>`` among the prompts) and
  region description (Fig. 10, post-process 1);
* ``stage2_ic.jsonl`` – object image↔coordinate: locate an ``<object>``; pick the object image of a region
  (post-process 2);
* ``stage2_ti.jsonl`` – text↔object image: pick the object image matching a description, name an object
  image, relations between object images (post-process 3);
* ``stage3_conv.jsonl`` – multi-round grounding conversations (Fig. 11);
* ``stage3_desc.jsonl`` – grounded descriptions with a box after each phrase (Fig. 12);
* ``stage3_instruct.jsonl`` – plain instruction-style QAs (counting, existence, attributes), half of them in
  LLaVA-1.5's short-answer form (the instruction POPE and VQAv2 append, a one-word answer);
* ``stage3_presence.jsonl`` – existence questions, one multi-round conversation per scene: every shape it
  holds and as many it lacks (as far as there are), in the short-answer form (the VQA share of LLaVA-1.5's
  mixture, in miniature);
* ``stage2_compare.jsonl`` – REC by comparison with look-alikes: every ordinal (``the second circle from the left``)
  and size (``the small blue square``) expression a scene has. ``stage2_tc.jsonl`` draws one kind for two objects a
  scene, so these two kinds, the hardest, are rarer there than in the held-out split.

Options in multiple-choice questions are objects whose boxes overlap little
(IoU ≤ :data:`MAX_OPTION_IOU`, the paper's filter).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from tinygroundinggpt.boxes import iou
from tinygroundinggpt.data.format import IMAGE_TOKEN, SHORT_ANSWER_PROMPT, Sample
from tinygroundinggpt.world.formats import POPE_QUESTION
from tinygroundinggpt.world.language import (
    INVERSE,
    KINDS,
    RELATIONS,
    Expression,
    caption,
    count_phrase,
    holds,
    join_list,
    nameable,
    nameable_triples,
    object_phrase,
    plural,
    referring_expressions,
    relation_triples,
    triple_text,
    unique_name,
)
from tinygroundinggpt.world.scene import COLOURS, SHAPES, Scene

REC_EVAL_PROMPT = "Output the coordinate of {expression}"  # the paper's REC prompt, used by the evaluator
REC_PROMPTS = (
    REC_EVAL_PROMPT,
    REC_EVAL_PROMPT,  # listed twice: half of the REC training prompts are the evaluation prompt itself
    "In this image, where is {expression} located?",
    "Where is {expression}? Give its box.",
    "Find {expression}.",
)
REGION_PROMPTS = (
    "Describe the object located within the region {box}.",
    "What is in the region {box}?",
)
CAPTION_PROMPTS = ("Describe the image briefly.", "Give a short caption for the image.", "What is in the image?")
MAX_OPTION_IOU = 0.3
LETTERS = "ab"

Builder = Callable[[Scene, str, str, random.Random], list[Sample]]


def _sample(
    sample_id: str, scene: Scene, image: str, boxes: list[int], turns: list[tuple[str, str]], task: str
) -> Sample:
    """``turns`` are (user, assistant) pairs; ``<image>`` is put before the first question."""
    messages = []
    for k, (user, assistant) in enumerate(turns):
        messages.append({"role": "user", "content": f"{IMAGE_TOKEN}\n{user}" if k == 0 else user})
        messages.append({"role": "assistant", "content": assistant})
    return Sample(
        id=sample_id,
        messages=messages,
        image=image,
        boxes=[scene.objects[i].box for i in boxes],
        width=scene.width,
        height=scene.height,
        meta={"task": task},
    )


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _distractor(scene: Scene, target: int, rng: random.Random) -> int | None:
    """Another object, overlapping the target little, preferably of the same shape (a harder choice)."""
    ok = [
        i
        for i in range(len(scene.objects))
        if i != target and iou(scene.objects[i].box, scene.objects[target].box) <= MAX_OPTION_IOU
    ]
    same = [i for i in ok if scene.objects[i].shape == scene.objects[target].shape]
    pool = same or ok
    return rng.choice(pool) if pool else None


def _expression(scene: Scene, t: int, rng: random.Random) -> Expression | None:
    """An expression of a random kind for object ``t``, else of any kind it has (None if it has none)."""
    kinds = list(KINDS)
    rng.shuffle(kinds)
    for kind in kinds:
        found = referring_expressions(scene, t, rng, (kind,))
        if found:
            return found[0]
    return None


def stage1(scene: Scene, image: str, sample_id: str, rng: random.Random) -> list[Sample]:
    out = [
        _sample(f"{sample_id}-cap", scene, image, [], [(rng.choice(CAPTION_PROMPTS), caption(scene, rng))], "caption")
    ]
    triples = [t for t in nameable_triples(scene) if t[0] < t[2]]
    if triples:
        picked = rng.sample(triples, min(3, len(triples)))
        text = ". ".join(_capitalise(triple_text(scene, t)) for t in picked) + "."
        out.append(_sample(f"{sample_id}-rel", scene, image, [], [("How are the objects placed?", text)], "relations"))
    else:
        names = join_list([object_phrase(o) for o in scene.objects])
        out.append(
            _sample(f"{sample_id}-obj", scene, image, [], [("List the objects.", f"{_capitalise(names)}.")], "objects")
        )
    return out


def stage2_tc(scene: Scene, image: str, sample_id: str, rng: random.Random) -> list[Sample]:
    out = []
    targets = rng.sample(range(len(scene.objects)), min(2, len(scene.objects)))
    for k, t in enumerate(targets):
        expr = _expression(scene, t, rng)
        if expr is not None:
            prompt = rng.choice(REC_PROMPTS).format(expression=expr.text)
            out.append(_sample(f"{sample_id}-rec{k}", scene, image, [t], [(prompt, "<box:0>")], f"rec/{expr.kind}"))
    t = rng.randrange(len(scene.objects))
    prompt = rng.choice(REGION_PROMPTS).format(box="<box:0>")
    answer = f"{_capitalise(object_phrase(scene.objects[t]))}."
    out.append(_sample(f"{sample_id}-reg", scene, image, [t], [(prompt, answer)], "region"))
    return out


def stage2_ic(scene: Scene, image: str, sample_id: str, rng: random.Random) -> list[Sample]:
    t = rng.randrange(len(scene.objects))
    out = [
        _sample(f"{sample_id}-loc", scene, image, [t], [("What is the location of <object:0>?", "<box:0>")], "locate")
    ]
    other = _distractor(scene, t, rng)
    if other is not None:
        options = [t, other]
        rng.shuffle(options)
        answer = LETTERS[options.index(t)]
        q = "Which is the item in region <box:0>? a. <object:1>; b. <object:2>."
        out.append(
            _sample(f"{sample_id}-pick", scene, image, [t, *options], [(q, f"The answer is {answer}.")], "region_pick")
        )
    return out


def stage2_ti(scene: Scene, image: str, sample_id: str, rng: random.Random) -> list[Sample]:
    t = rng.randrange(len(scene.objects))
    named = f"It is {object_phrase(scene.objects[t])}."
    out = [_sample(f"{sample_id}-name", scene, image, [t], [("What is <object:0>?", named)], "name_object")]
    other, expr = _distractor(scene, t, rng), _expression(scene, t, rng)
    if other is not None and expr is not None:
        options = [t, other]
        rng.shuffle(options)
        q = f"Which object image shows {expr.text}? a. <object:0>; b. <object:1>."
        a = f"The answer is {LETTERS[options.index(t)]}."
        out.append(_sample(f"{sample_id}-match", scene, image, options, [(q, a)], "match_object"))
    pairs = [
        (a, rel, b)
        for a, rel, b in relation_triples(scene)
        if rel in RELATIONS and iou(scene.objects[a].box, scene.objects[b].box) <= MAX_OPTION_IOU
    ]
    if pairs:
        a, rel, b = rng.choice(pairs)
        options = [rel, INVERSE[rel]]
        rng.shuffle(options)
        q = f"Where is <object:0> relative to <object:1>? a. {options[0]}; b. {options[1]}."
        ans = f"The answer is {LETTERS[options.index(rel)]}. {rel}."
        out.append(_sample(f"{sample_id}-objrel", scene, image, [a, b], [(q, ans)], "object_relation"))
    return out


def stage3_conv(scene: Scene, image: str, sample_id: str, rng: random.Random) -> list[Sample]:
    """2-4 rounds about single objects; boxes follow the phrases they ground (Fig. 11)."""
    n = len(scene.objects)
    boxes: list[int] = []

    def ref(i: int) -> str:  # each object gets one box slot, reused when it comes up again
        if i not in boxes:
            boxes.append(i)
        return f"<box:{boxes.index(i)}>"

    turns = []
    asked = set()
    for _ in range(rng.randint(2, 4)):
        t = rng.randrange(n)
        obj, name = scene.objects[t], unique_name(scene, t)
        kind = rng.choice(("where", "colour", "pattern", "relation", "object"))
        if (t, kind) in asked:  # a conversation does not ask the same thing twice
            continue
        asked.add((t, kind))
        # "What is left of X?" is asked only where no other object is left of X even in the loose (centre) reading,
        # as the REC expressions demand of their rivals: one right answer.
        triples = [
            (a, rel, b)
            for a, rel, b in relation_triples(scene)
            if b == t
            and rel in RELATIONS
            and not any(holds(scene, i, rel, t, loose=True) for i in range(n) if i not in (a, t))
        ]
        if kind == "colour":
            turns.append((f"What colour is {name} {ref(t)}?", f"{_capitalise(name)} {ref(t)} is {obj.colour}."))
        elif kind == "pattern":
            turns.append(
                (f"What pattern does {name} {ref(t)} have?", f"{_capitalise(name)} {ref(t)} is {obj.pattern}.")
            )
        elif kind == "relation" and triples:
            a, rel, _ = rng.choice(triples)
            q = f"What is {rel} {name} {ref(t)}?"
            turns.append((q, f"{_capitalise(object_phrase(scene.objects[a]))} {ref(a)} is {rel} it."))
        elif kind == "object":
            # The paper's post-process 3: an object image in place of the phrase.
            box_ref = ref(t)
            turns.append((f"What is <object:{boxes.index(t)}>? Where is it?", f"It is {object_phrase(obj)} {box_ref}."))
        else:
            expr = _expression(scene, t, rng)
            if expr is not None:  # an object with an identical twin and no other handle is not asked about
                turns.append((f"Where is {expr.text}?", f"{_capitalise(expr.text)} is at {ref(t)}."))
    return [_sample(f"{sample_id}-conv", scene, image, boxes, turns, "conversation")] if turns else []


def stage3_desc(scene: Scene, image: str, sample_id: str, rng: random.Random) -> list[Sample]:
    """A detailed description: every object mentioned once, its box right after its phrase (Fig. 12)."""
    n = len(scene.objects)
    order = list(range(n))
    rng.shuffle(order)
    sentences = [f"There {'is' if n == 1 else 'are'} {count_phrase(n, 'shape')} on a {scene.background} background."]
    triples = relation_triples(scene)
    for k, i in enumerate(order):
        phrase = f"{object_phrase(scene.objects[i])} <box:{k}>"
        # Relate the object to one already described, so the description reads as a whole.
        links = [(rel, b) for a, rel, b in triples if a == i and b in order[:k] and nameable(scene, b)]
        if links:
            rel, b = rng.choice(links)
            sentences.append(f"{_capitalise(phrase)} is {rel} {unique_name(scene, b)}.")
        else:
            sentences.append(f"There is {phrase}.")
    q = rng.choice(
        ("Describe the image in detail, with a box after each object.", "Give a grounded description of the image.")
    )
    return [_sample(f"{sample_id}-desc", scene, image, order, [(q, " ".join(sentences))], "grounded_description")]


def stage3_instruct(scene: Scene, image: str, sample_id: str, rng: random.Random) -> list[Sample]:
    """Plain QAs without boxes: counting, existence, attribute of a named object, background.

    As in LLaVA-1.5's mixture, each QA is written either as a conversation (a sentence answer) or, half the
    time, VQA-style: the short-answer instruction after the question and a one-word answer. The evaluation
    protocols (POPE, VQAv2, GQA) ask in the second form; a model that never saw it answered "The." to POPE.
    """
    shapes = [o.shape for o in scene.objects]
    shape = rng.choice(SHAPES)
    colour = rng.choice(list(COLOURS))
    t = rng.randrange(len(scene.objects))
    n_shape = shapes.count(shape)
    n_colour = sum(o.colour == colour for o in scene.objects)
    present = shape in shapes
    qas = [  # (question, sentence answer, short answer)
        (
            f"How many {plural(shape)} are there?",
            f"There {'is' if n_shape == 1 else 'are'} {count_phrase(n_shape, shape)}.",
            str(n_shape),
        ),
        (POPE_QUESTION.format(shape), "Yes." if present else "No.", "Yes" if present else "No"),
        (
            f"How many {colour} objects are there?",
            f"There {'is' if n_colour == 1 else 'are'} {count_phrase(n_colour, f'{colour} object')}.",
            str(n_colour),
        ),
        (f"What shape is {unique_name(scene, t)}?", f"It is a {scene.objects[t].shape}.", scene.objects[t].shape),
        ("What colour is the background?", f"The background is {scene.background}.", scene.background),
    ]
    out = []
    # The form is drawn after the picks, and only stage3_presence (added later still) draws after this file (STAGE_FILES
    # order): the world's other files stay byte-identical to those of worlds written before the form existed.
    for k, (question, sentence, word) in enumerate(rng.sample(qas, 2)):
        qa = (question + SHORT_ANSWER_PROMPT, word) if rng.random() < 0.5 else (question, sentence)
        out.append(_sample(f"{sample_id}-qa{k}", scene, image, [], [qa], "instruction"))
    return out


def stage3_presence(scene: Scene, image: str, sample_id: str, rng: random.Random) -> list[Sample]:
    """Existence QAs: each shape the scene holds ("Yes") and as many absent shapes ("No"; fewer where the scene holds
    more than half of the shapes), shuffled.

    One conversation per scene puts several answers behind one forward pass of the image. Absent shapes are
    drawn uniformly; POPE's popular and adversarial negatives are a subset of those.
    """
    present = sorted({o.shape for o in scene.objects}, key=SHAPES.index)
    absent = [s for s in SHAPES if s not in present]
    asked = [(s, "Yes") for s in present] + [(s, "No") for s in rng.sample(absent, min(len(present), len(absent)))]
    rng.shuffle(asked)
    turns = [(POPE_QUESTION.format(s) + SHORT_ANSWER_PROMPT, answer) for s, answer in asked]
    return [_sample(f"{sample_id}-presence", scene, image, [], turns, "presence")]


def stage2_compare(scene: Scene, image: str, sample_id: str, rng: random.Random) -> list[Sample]:
    """Every ordinal and size expression of every object: the kinds that single an object out among others of its
    look, so the answer needs the others compared."""
    out = []
    for t in range(len(scene.objects)):
        for expr in referring_expressions(scene, t, rng, ("ordinal", "size")):
            prompt = rng.choice(REC_PROMPTS).format(expression=expr.text)
            out.append(
                _sample(f"{sample_id}-cmp{len(out)}", scene, image, [t], [(prompt, "<box:0>")], f"rec/{expr.kind}")
            )
    return out


STAGE_FILES: dict[str, Builder] = {
    "stage1.jsonl": stage1,
    "stage2_tc.jsonl": stage2_tc,
    "stage2_ic.jsonl": stage2_ic,
    "stage2_ti.jsonl": stage2_ti,
    "stage3_conv.jsonl": stage3_conv,
    "stage3_desc.jsonl": stage3_desc,
    "stage3_instruct.jsonl": stage3_instruct,
    "stage3_presence.jsonl": stage3_presence,
    "stage2_compare.jsonl": stage2_compare,  # new files last: the files above stay byte-identical to earlier worlds'
}
