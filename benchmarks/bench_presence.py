"""Can POPE's question be answered from the frozen tiny encoders? Presence probes on whole scenes.

    python benchmarks/bench_presence.py [--scenes 6000] > benchmarks/results/presence.txt

The world's POPE asks "Is there a <shape> in the image?". This trains, on frozen patch features as the
grounding model's vision tower emits them (``assemble_preset("tiny")``), one attention-pooling probe per
question kind: for each shape (or colour) a per-patch score picks where to look and a pooled value says
present / absent (binary cross-entropy, every shape or every colour at once). The same probe on colour is
the control: it shows what the probe reads when the features hold the answer. Baseline in the same run:
answering "no" to every question, the commoner answer. Held-out scenes: the last 20 %.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from tinygroundinggpt.model.presets import assemble_preset
from tinygroundinggpt.world import SceneConfig, generate_scene
from tinygroundinggpt.world.scene import COLOURS, SHAPES


class PresenceProbe(torch.nn.Module):
    def __init__(self, dim: int, n_questions: int) -> None:
        super().__init__()
        self.score = torch.nn.Linear(dim, n_questions)
        self.value = torch.nn.Linear(dim, n_questions)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return (self.score(feats).softmax(1) * self.value(feats)).sum(1)  # B, questions (logits)


def probe_accuracy(feats: torch.Tensor, answers: torch.Tensor, n_fit: int, epochs: int) -> float:
    """Held-out accuracy (%) over every (scene, question) pair."""
    torch.manual_seed(0)
    mu, sd = feats[:n_fit].mean((0, 1)), feats[:n_fit].std((0, 1)) + 1e-5
    feats = (feats - mu) / sd
    probe = PresenceProbe(feats.shape[-1], answers.shape[1])
    opt = torch.optim.Adam(probe.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(n_fit).split(64):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(probe(feats[idx]), answers[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        said = probe(feats[n_fit:]) > 0
    return 100 * (said == answers[n_fit:].bool()).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=99)
    parser.add_argument("--clip", help="a tiny CLIP checkpoint instead of the shipped one")
    parser.add_argument("--dino", help="a tiny DINOv2 checkpoint instead of the shipped one")
    args = parser.parse_args()
    t0 = time.time()
    swaps = {k: v for k, v in (("clip", args.clip), ("dino", args.dino)) if v}
    model, processor = assemble_preset("tiny", **swaps)
    model.float().eval()
    rng, config, colour_names = random.Random(args.seed), SceneConfig(), list(COLOURS)
    images, shapes, colours = [], torch.zeros(args.scenes, len(SHAPES)), torch.zeros(args.scenes, len(colour_names))
    for i in range(args.scenes):
        image, scene = generate_scene(rng, model.config.image_size, config)  # the encoders' input size
        images.append(processor.image_to_tensor(image))
        for o in scene.objects:
            shapes[i, SHAPES.index(o.shape)] = colours[i, colour_names.index(o.colour)] = 1
    with torch.no_grad():
        feats = torch.cat([model.vision_tower(chunk) for chunk in torch.stack(images).split(256)])
    clip_dim = model.config.clip_config.hidden_size
    n_fit = int(0.8 * args.scenes)
    print(f"# presence probes on frozen tiny-encoder features: {args.scenes} scenes (seed {args.seed}), 1-5 objects;")
    print(f"# fitted on {n_fit}, scored on {args.scenes - n_fit} held out; {args.epochs} epochs; accuracy in %")
    if swaps:
        print(f"# components swapped in: {swaps}")
    print()
    print(f"{'features':16s} {'is there a <shape>?':>20s} {'is there a <colour> object?':>28s}")
    no = [100 * (1 - a[n_fit:]).mean().item() for a in (shapes, colours)]
    print(f"{'(always no)':16s} {no[0]:20.1f} {no[1]:28.1f}")
    for name, f in (("CLIP", feats[..., :clip_dim]), ("DINOv2", feats[..., clip_dim:]), ("CLIP + DINOv2", feats)):
        acc = [probe_accuracy(f, a, n_fit, args.epochs) for a in (shapes, colours)]
        print(f"{name:16s} {acc[0]:20.1f} {acc[1]:28.1f}")
    print(f"\n(benchmark ran in {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
