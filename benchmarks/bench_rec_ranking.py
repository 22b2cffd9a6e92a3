"""Does the model know which object an expression means when the box it writes misses?

    python benchmarks/bench_rec_ranking.py --model src/tinygroundinggpt/assets/tiny/tinygroundinggpt \
        --data-root demo_out/world > benchmarks/results/rec_ranking.txt

For every REC expression of the world's val and test splits, two answers from the same model:

* **ranking** (teacher forcing): the log-likelihood of each object's box, written as the model writes boxes,
  after the REC prompt; a hit when the named object's box is the most likely. This is a closed-set choice
  among the scene's objects, as proposal-based REC models make it; the baseline in the same run is chance,
  the mean of 1 / number of objects;
* **generation**: the greedy answer (or ``--num-beams N``), scored as the evaluation suite scores it
  (IoU ≥ 0.5), and what its misses are made of: the box's x-extent and y-extent each compared with every
  object (1-D IoU ≥ 0.5), so a box whose x comes from one object and y from another shows up as such.

A gap between the two says the model holds the answer but cannot write it as one coherent box.

``--train-world W`` (repeatable) scores the same two answers on the REC samples of W's ``stage2_tc.jsonl`` (the
first ``--train-scenes`` scenes), asked with the evaluation prompt: on the world the model trained on, whether it
fits its own training scenes; on a fresh world written the same way (``tgg world --seed <another>``), the baseline.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from tinygroundinggpt import boxes as bx
from tinygroundinggpt.api import TinyGroundingGPTPipeline
from tinygroundinggpt.data.format import IMAGE_TOKEN, Sample
from tinygroundinggpt.eval.task import Item, get_task
from tinygroundinggpt.images import load_image
from tinygroundinggpt.world.stages import REC_EVAL_PROMPT, REC_PROMPTS


def box_loglik(pipe: TinyGroundingGPTPipeline, item: Item, candidates: list[list[float]]) -> torch.Tensor:
    """Summed log-probability of each candidate pixel box as the answer to the item's prompt."""
    proc, model = pipe.processor, pipe.model
    encoded = [
        proc.encode_sample(
            Sample(
                id=item.id,
                image=item.image,
                width=item.width,
                height=item.height,
                boxes=[tuple(c)],
                messages=[
                    {"role": "user", "content": f"{IMAGE_TOKEN}\n{item.prompt}"},
                    {"role": "assistant", "content": "<box:0>"},
                ],
            )  # fmt: skip
        )
        for c in candidates
    ]
    batch = {k: v.to(pipe.device) for k, v in proc.collate(encoded, padding_side="right").items()}
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"]
        ).logits
    labels = batch["labels"][:, 1:]
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * (labels != -100)).sum(dim=1)


def _overlap_1d(a0: float, a1: float, b0: float, b1: float) -> float:
    inter = max(0.0, min(a1, b1) - max(a0, b0))
    union = max(a1, b1) - min(a0, b0)
    return inter / union if union > 0 else 0.0


def miss_kind(pred: bx.Box | None, objects: list[list[float]]) -> str:
    """What a written box is made of; ``objects[0]`` is the named one."""
    if pred is None:
        return "unparseable"
    if pred[2] < pred[0] or pred[3] < pred[1]:
        return "inverted (x2 < x1 or y2 < y1)"
    if bx.iou(pred, objects[0]) >= 0.5:
        return "hit"
    xs = {k for k, o in enumerate(objects) if _overlap_1d(pred[0], pred[2], o[0], o[2]) >= 0.5}
    ys = {k for k, o in enumerate(objects) if _overlap_1d(pred[1], pred[3], o[1], o[3]) >= 0.5}
    if xs & ys:
        return "miss: x and y extents of one object" + (" (the named one)" if 0 in xs & ys else "")
    if xs and ys:
        return "miss: x extent of one object, y of another"
    if xs or ys:
        return "miss: one extent matches an object, the other none"
    return "miss: neither extent matches an object"


def world_items(world: Path, scenes: int) -> list[Item]:
    """The REC samples of ``world``'s stage2_tc.jsonl on its first ``scenes`` scenes, asked with the evaluation
    prompt; ``others`` are the scene's other objects, as the evaluation tasks give them."""
    patterns = [re.compile(re.escape(t).replace(re.escape("{expression}"), "(.+)") + "$") for t in REC_PROMPTS]
    graphs = {}
    for line in (world / "scenes.jsonl").read_text().splitlines()[:scenes]:
        graph = json.loads(line)
        graphs[graph["image"]] = graph
    items = []
    for line in (world / "stage2_tc.jsonl").read_text().splitlines():
        sample = json.loads(line)
        if sample["image"] not in graphs or not sample["meta"]["task"].startswith("rec/"):
            continue
        question = sample["messages"][0]["content"].removeprefix(f"{IMAGE_TOKEN}\n")
        expression = next(m.group(1) for p in patterns if (m := p.match(question)))
        box = sample["boxes"][0]
        others = [o["box"] for o in graphs[sample["image"]]["objects"] if o["box"] != box]
        items.append(
            Item(
                id=sample["id"],
                image=str(world / sample["image"]),
                prompt=REC_EVAL_PROMPT.format(expression=expression),
                reference={"box": box, "others": others},
            )
        )
    return items


def score(
    pipe: TinyGroundingGPTPipeline, items: list[Item], batch_size: int, num_beams: int
) -> tuple[float, float, Counter[str]]:
    """Ranking hits, their chance level (both summed over items) and what the written boxes are."""
    for it in items:
        it.width, it.height = load_image(it.image).size
    ranked = chance = 0.0
    kinds: Counter[str] = Counter()
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        answers = pipe.generate_batch(
            [i.image for i in chunk], [i.prompt for i in chunk], max_new_tokens=48, num_beams=num_beams
        )
        for it, answer in zip(chunk, answers, strict=True):
            objects = [it.reference["box"], *it.reference["others"]]
            ranked += int(box_loglik(pipe, it, objects).argmax()) == 0
            chance += 1 / len(objects)
            pred = bx.parse_first_box(answer)
            kinds[miss_kind(None if pred is None else bx.model_to_pixel(pred, it.width, it.height), objects)] += 1
    return ranked, chance, kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-root", required=True, help="a world with eval files (tgg demo's <out>/world)")
    parser.add_argument("--tasks", default="world_rec_val,world_rec_test")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--num-beams", type=int, default=1, help="beam search for the written boxes (1: greedy)")
    parser.add_argument("--train-world", action="append", default=[], help="also score this world's stage2_tc REC")
    parser.add_argument("--train-scenes", type=int, default=150)
    args = parser.parse_args()
    torch.manual_seed(0)
    pipe = TinyGroundingGPTPipeline.from_pretrained(args.model)
    items: list[Item] = []
    for task in args.tasks.split(","):
        items += get_task(task).load(Path(args.data_root))
    ranked, chance, kinds = score(pipe, items, args.batch_size, args.num_beams)
    n = len(items)
    beams = f" --num-beams {args.num_beams}" if args.num_beams > 1 else ""
    worlds = "".join(f" --train-world {w}" for w in args.train_world)
    worlds += f" --train-scenes {args.train_scenes}" if worlds else ""
    print(f"# python benchmarks/bench_rec_ranking.py --model {args.model} --data-root {args.data_root}{beams}{worlds}")
    print(f"# {n} expressions ({args.tasks})")
    print(f"ranking, named object's box most likely among the scene's objects: {100 * ranked / n:5.1f} %"
          f"   (chance {100 * chance / n:.1f} %)")  # fmt: skip
    how = "greedy" if args.num_beams == 1 else f"{args.num_beams}-beam"
    print(f"generation, {how} box IoU >= 0.5:{' ' * (38 - len(how))}{100 * kinds['hit'] / n:5.1f} %")
    print(f"what the {how} boxes are:")
    for kind, count in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:62s} {count:4d}  {100 * count / n:5.1f} %")
    for world in args.train_world:
        items = world_items(Path(world), args.train_scenes)
        ranked, chance, kinds = score(pipe, items, args.batch_size, args.num_beams)
        print(f"{world} stage2_tc REC, first {args.train_scenes} scenes ({len(items)} expressions): ranking "
              f"{100 * ranked / len(items):.1f} % (chance {100 * chance / len(items):.1f} %), {how} box IoU >= 0.5 "
              f"{100 * kinds['hit'] / len(items):.1f} %")  # fmt: skip


if __name__ == "__main__":
    main()
