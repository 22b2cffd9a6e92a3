"""How useful the tiny pretrained components are, measured on held-out synthetic-world scenes.

    python benchmarks/bench_components.py [--assets DIR] [--scenes N] > benchmarks/results/components.txt

Loads each checkpoint from disk with transformers' own classes (as the grounding model will) and reports:

* tiny CLIP: image→caption and caption→image retrieval, top-1 / top-5 within galleries of 100 scenes
  (chance 1 % / 5 %), and how often an image prefers its caption to the same caption with one shape word
  swapped (chance 50 %: retrieval can succeed on colours alone, this cannot);
* patch features (the paper's Fig. 6 / A.5 argument in miniature): linear probes on the patch grid, for
  whether a patch holds an object and that object's colour, pattern and shape, from the tiny DINOv2's
  ``last_hidden_state`` against the tiny CLIP's ``hidden_states[-2]`` (the layers the grounding model
  reads) and a randomly initialised DINOv2 of the same shape (what pretraining adds); and where the object?
  probe errs, by how much of a patch objects cover (its target's line is at a quarter);
* tiny Qwen2: held-out perplexity, and how many greedy answers to "Output the coordinate of ..." are
  one well-formed box ``[0.xxx, 0.xxx, 0.xxx, 0.xxx]``, with sample answers.

Probe and held-out scenes come from seed streams the components never trained on.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPModel,
    Dinov2Config,
    Dinov2Model,
)

from tinygroundinggpt.boxes import BoxError, parse_first_box, validate_unit_box
from tinygroundinggpt.components import clip, corpus
from tinygroundinggpt.components.qwen2 import pack
from tinygroundinggpt.world import language
from tinygroundinggpt.world.scene import COLOURS, PATTERNS, SHAPES

GALLERY = 100
BOX_ANSWER = re.compile(r"^\[\d\.\d{3}, \d\.\d{3}, \d\.\d{3}, \d\.\d{3}\]$")


def default_assets() -> Path:
    return Path(str(resources.files("tinygroundinggpt") / "assets" / "tiny"))


@torch.no_grad()
def clip_retrieval(path: Path, samples: list[corpus.WorldSample], seed: int) -> dict[str, float]:
    model = CLIPModel.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    images = corpus.square_images(samples, processor.image_mean)
    texts = [c[0] for c in corpus.captions(samples, seed)]
    img = model.get_image_features(pixel_values=processor(images, return_tensors="pt").pixel_values)
    txt = model.get_text_features(**tokenizer(texts, padding=True, return_tensors="pt"))
    img, txt = _as_tensor(img), _as_tensor(txt)
    img, txt = torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)
    hits = {"image→caption R@1": [], "image→caption R@5": [], "caption→image R@1": [], "caption→image R@5": []}
    for start in range(0, len(samples) - GALLERY + 1, GALLERY):
        sim = img[start : start + GALLERY] @ txt[start : start + GALLERY].T
        truth = torch.arange(GALLERY)
        for name, s in (("image→caption", sim), ("caption→image", sim.T)):
            rank = (s > s[truth, truth][:, None]).sum(1)  # how many candidates beat the right one
            hits[f"{name} R@1"].append((rank < 1).float().mean().item())
            hits[f"{name} R@5"].append((rank < 5).float().mean().item())
    # Shape: does the image prefer its caption to the same caption with one shape word swapped?
    swapped = [clip.swap_one_shape(t, random.Random(i)) for i, t in enumerate(texts)]
    neg = torch.nn.functional.normalize(
        _as_tensor(model.get_text_features(**tokenizer(swapped, padding=True, return_tensors="pt"))), dim=-1
    )
    hits["caption over its shape-swapped copy"] = [((img * txt).sum(-1) > (img * neg).sum(-1)).float().mean().item()]
    return {k: 100 * float(np.mean(v)) for k, v in hits.items()}


def _as_tensor(out: torch.Tensor | object) -> torch.Tensor:
    """``get_*_features`` return a tensor or (newer transformers) an output with ``pooler_output``."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def patch_labels(sample: corpus.WorldSample, patch: int) -> np.ndarray:
    """Per ``patch``-px patch of the padded square image: the object covering most of its pixels, when that object
    covers at least a quarter of the patch (objects span 17-38 % of the scene's short side, so few
    patches are mostly object); else -1."""
    out = []
    for b in corpus.patch_blocks(corpus.square_labels(sample), patch):
        counts = np.bincount(b[b >= 0], minlength=1)
        out.append(int(counts.argmax()) if counts.max() * 4 >= patch * patch else -1)
    return np.array(out)


def probe_targets(samples: list[corpus.WorldSample], patch: int) -> dict[str, np.ndarray]:
    """Patch-level targets: objectness for every patch, colour/pattern/shape (-1 where no object)."""
    obj, colour, pattern, shape = [], [], [], []
    for s in samples:
        for idx in patch_labels(s, patch):
            o = s.scene.objects[idx] if idx >= 0 else None
            obj.append(int(o is not None))
            colour.append(list(COLOURS).index(o.colour) if o else -1)
            pattern.append(PATTERNS.index(o.pattern) if o else -1)
            shape.append(SHAPES.index(o.shape) if o else -1)
    return {k: np.array(v) for k, v in (("object", obj), ("colour", colour), ("pattern", pattern), ("shape", shape))}


@torch.no_grad()
def patch_features(kind: str, path: Path | None, samples: list[corpus.WorldSample]) -> torch.Tensor:
    """``(scenes * patches, hidden)`` patch features of the layer the grounding model reads."""
    if kind == "clip":
        model = CLIPModel.from_pretrained(path, dtype=torch.float32).vision_model.eval()
        processor = AutoImageProcessor.from_pretrained(path)
    else:
        trained = Dinov2Model.from_pretrained(path, dtype=torch.float32)
        torch.manual_seed(0)  # the same random control for the probe-fit and the held-out scenes
        model = trained if kind == "dinov2" else Dinov2Model(Dinov2Config.from_pretrained(path)).float()
        model.eval()
        processor = AutoImageProcessor.from_pretrained(path)
    feats = []
    for start in range(0, len(samples), 256):
        chunk = corpus.square_images(samples[start : start + 256], processor.image_mean)
        pixels = processor(chunk, return_tensors="pt").pixel_values
        if kind == "clip":
            hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        else:
            hidden = model(pixel_values=pixels).last_hidden_state
        feats.append(hidden[:, 1:].reshape(-1, hidden.shape[-1]).float())
    return torch.cat(feats)


def same_object_auc(features: torch.Tensor, labels: np.ndarray) -> float:
    """Fig. 6 in miniature: for each object patch, how often (%) a patch of the same object is more
    cosine-similar to it than a patch elsewhere in the image (an AUC; 50 = no locality)."""
    feats = features.view(len(labels), labels.shape[1], -1)
    feats = torch.nn.functional.normalize(feats - feats.mean((0, 1)), dim=-1)
    aucs = []
    for f, lab in zip(feats, torch.from_numpy(labels), strict=True):
        sim = f @ f.T
        for p in torch.nonzero(lab >= 0).flatten():
            same = lab == lab[p]
            same[p] = False
            other = lab != lab[p]
            if same.any():
                aucs.append((sim[p][same][:, None] > sim[p][other][None, :]).float().mean().item())
    return 100 * float(np.mean(aucs))


def probe_predictions(
    x_train: torch.Tensor, y_train: np.ndarray, x_test: torch.Tensor, y_test: np.ndarray
) -> np.ndarray:
    """A multinomial logistic regression on standardised features (L-BFGS), fitted where ``y_train >= 0``; its
    predictions for the test rows where ``y_test >= 0``."""
    keep_tr, keep_te = y_train >= 0, y_test >= 0
    # float64: L-BFGS's line search is fragile in float32 on badly conditioned (e.g. random) features.
    xtr, xte = x_train[torch.from_numpy(keep_tr)].double(), x_test[torch.from_numpy(keep_te)].double()
    ytr = torch.from_numpy(y_train[keep_tr])
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    torch.manual_seed(0)
    clf = torch.nn.Linear(xtr.shape[1], int(max(ytr.max(), y_test.max())) + 1).double()
    opt = torch.optim.LBFGS(clf.parameters(), lr=1, max_iter=200, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(clf(xtr), ytr) + 1e-4 * clf.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return clf(xte).argmax(1).numpy()


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean recall over the classes of ``y`` (%); balanced, because most patches are background."""
    return 100 * float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


# Bands of the share of a patch that objects cover; the objectness target's line is at 1/4.
COVER_EDGES = (0.25, 0.5, 0.9)
COVER_BAND_NAMES = ("none", "0-25 %", "25-50 %", "50-90 %", "90-100 %")


def cover_bands(cover: np.ndarray) -> list[np.ndarray]:
    """One mask per band of :data:`COVER_BAND_NAMES`: no object pixel, then [0, 25 %) ... [90 %, 100 %]."""
    band = np.digitize(cover, COVER_EDGES) + 1
    band[cover == 0] = 0
    return [band == i for i in range(len(COVER_BAND_NAMES))]


@torch.no_grad()
def qwen2_quality(path: Path, samples: list[corpus.WorldSample], seed: int, n_answers: int) -> dict:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    blocks = pack(corpus.lm_documents(samples, seed), tokenizer, 128)
    nll, count = 0.0, 0
    for start in range(0, len(blocks), 64):
        batch = blocks[start : start + 64]
        loss = model(input_ids=batch, labels=batch).loss
        n = batch.numel() - len(batch)  # every token but the first of each block is predicted
        nll, count = nll + loss.item() * n, count + n

    prompts, answers = [], []
    rng = random.Random(seed)
    for s in samples[:n_answers]:
        e = rng.choice(language.all_referring_expressions(s.scene, rng))
        chat = [{"role": "user", "content": f"<image>\nOutput the coordinate of {e.text}."}]
        prompts.append(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    tokenizer.padding_side = "left"
    for start in range(0, len(prompts), 50):
        enc = tokenizer(prompts[start : start + 50], return_tensors="pt", padding=True)
        out = model.generate(**enc, max_new_tokens=40, do_sample=False)
        answers += tokenizer.batch_decode(out[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
    well_formed = sum(_valid_box_answer(a) for a in answers)
    describe = [{"role": "user", "content": "<image>\nDescribe the image with the coordinates of every object."}]
    enc = tokenizer.apply_chat_template(describe, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    desc = model.generate(**enc, max_new_tokens=160, do_sample=False)
    return {
        "perplexity": math.exp(nll / count),
        "tokens": count,
        "well_formed": 100 * well_formed / len(answers),
        "n_answers": len(answers),
        "samples": list(zip(prompts[:3], answers[:3], strict=True)),
        "describe": tokenizer.decode(desc[0, enc["input_ids"].shape[1] :], skip_special_tokens=True),
    }


def _valid_box_answer(answer: str) -> bool:
    """Exactly one box, three decimals, x1 < x2 and y1 < y2 inside [0, 1]."""
    if not BOX_ANSWER.match(answer.strip()):
        return False
    try:
        validate_unit_box(parse_first_box(answer))
    except BoxError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=default_assets(), help="folder with clip/ dinov2/ qwen2/")
    parser.add_argument("--seed", type=int, default=0, help="the seed the components were trained with")
    parser.add_argument("--scenes", type=int, default=1000, help="held-out scenes (probe: as many again to fit)")
    parser.add_argument("--answers", type=int, default=200, help="greedy REC answers to check")
    args = parser.parse_args()
    t0 = time.time()
    base = args.seed + corpus.HELDOUT_OFFSET
    rendered: dict[int, tuple[list[corpus.WorldSample], list[corpus.WorldSample]]] = {}

    def scenes_at(size: int) -> tuple[list[corpus.WorldSample], list[corpus.WorldSample]]:
        """The held-out and probe-fit scenes drawn at ``size`` px."""
        if size not in rendered:
            rendered[size] = (
                corpus.world_samples(base, args.scenes, size, desc=f"held-out scenes at {size} px"),
                corpus.world_samples(base + 1, args.scenes, size, desc=f"probe-fit scenes at {size} px"),
            )
        return rendered[size]

    def scenes(path: Path) -> tuple[list[corpus.WorldSample], list[corpus.WorldSample]]:
        """The scenes drawn at the input size of the encoder at ``path``."""
        return scenes_at(AutoImageProcessor.from_pretrained(path).crop_size["height"])

    print(f"# tiny components on held-out synthetic-world scenes ({args.assets})")
    print(f"held-out scenes: {args.scenes} (seed stream {base}); probes fitted on {args.scenes} more ({base + 1})\n")

    print(f"## tiny CLIP: retrieval within galleries of {GALLERY} (chance R@1 1 %, R@5 5 %; shape-swapped copy 50 %)")
    for k, v in clip_retrieval(args.assets / "clip", scenes(args.assets / "clip")[0], base).items():
        print(f"{k:22s} {v:6.1f} %")

    print("\n## patch features: linear-probe accuracy on the patch grid (%), held-out patches")
    encoders = {
        "tiny CLIP hidden_states[-2]": ("clip", args.assets / "clip"),
        "tiny DINOv2 last_hidden_state": ("dinov2", args.assets / "dinov2"),
        "random-init DINOv2 (control)": ("random", args.assets / "dinov2"),
    }
    by_cover: dict[str, list[float]] = {}
    band_sizes: list[int] = []
    print(f"{'features':32s} {'object?':>8s} {'colour':>8s} {'pattern':>8s} {'shape':>8s} {'same-obj':>8s}")
    for i, (name, (kind, path)) in enumerate(encoders.items()):
        heldout, probe_fit = scenes(path)
        config = AutoConfig.from_pretrained(path)
        patch = getattr(config, "vision_config", config).patch_size
        y_fit, y_test = probe_targets(probe_fit, patch), probe_targets(heldout, patch)
        test_labels = np.stack([patch_labels(s, patch) for s in heldout])
        if i == 0:
            chance = [100 / len(np.unique(y_test[t][y_test[t] >= 0])) for t in y_fit] + [50.0]
            print(f"{'chance':32s} " + " ".join(f"{c:8.1f}" for c in chance))
        f_fit, f_test = patch_features(kind, path, probe_fit), patch_features(kind, path, heldout)
        accs = []
        for t in y_fit:
            pred, y = probe_predictions(f_fit, y_fit[t], f_test, y_test[t]), y_test[t][y_test[t] >= 0]
            accs.append(balanced_accuracy(pred, y))
            if t == "object":  # every patch has an objectness target, so pred lines up with all of them
                bands = cover_bands(np.concatenate([corpus.patch_coverage(s, patch) for s in heldout]))
                by_cover[name] = [100 * float((pred == y)[band].mean()) for band in bands]
                band_sizes = [int(band.sum()) for band in bands]
        accs.append(same_object_auc(f_test, test_labels))
        print(f"{name:32s} " + " ".join(f"{a:8.1f}" for a in accs))
    print("(balanced accuracy; a patch holds an object when one covers >= 1/4 of it; colour / pattern / shape")
    print(" are probed on those patches only; same-obj: Fig. 6's cosine-similarity map as an AUC, see same_object_auc)")
    print("\n## the object? probe by how much of a patch objects cover: accuracy (%), held-out patches")
    print(f"{'features':32s} " + " ".join(f"{b:>9s}" for b in COVER_BAND_NAMES))
    for name, accs_by_band in by_cover.items():
        print(f"{name:32s} " + " ".join(f"{a:9.1f}" for a in accs_by_band))
    print(f"{'patches in the band':32s} " + " ".join(f"{n:9d}" for n in band_sizes))

    # the size tgg components draws the Qwen2's scenes at (it reads their text only)
    q = qwen2_quality(args.assets / "qwen2", scenes_at(corpus.IMAGE_SIZE)[0], base, args.answers)
    print(f"\n## tiny Qwen2: held-out perplexity {q['perplexity']:.3f} over {q['tokens']} tokens")
    print(f"well-formed single-box answers to 'Output the coordinate of': {q['well_formed']:.1f} % of {q['n_answers']}")
    for prompt, answer in q["samples"]:
        question = prompt.split("<|im_start|>user\n")[1].split("<|im_end|>")[0].replace("\n", " ")
        print(f"  Q: {question}\n  A: {answer}")
    print(f"  Q: <image> Describe the image with the coordinates of every object.\n  A: {q['describe']}")
    print(f"\n(benchmark ran in {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
