"""Can POPE's question be answered from the frozen tiny encoders? Presence probes on whole scenes.

    python benchmarks/bench_presence.py [--scenes 6000] > benchmarks/results/presence.txt

The world's POPE asks "Is there a <shape> in the image?". This trains, on frozen patch features as the
grounding model's vision tower emits them (``assemble_preset("tiny")``), one attention-pooling probe per
question kind: for each shape (or colour) a per-patch score picks where to look and a pooled value says
present / absent (binary cross-entropy, every shape or every colour at once). The same probe on colour is
the control: it shows what the probe reads when the features hold the answer. A deeper read-out of CLIP + DINOv2
(two transformer layers before the same probe) says how much a nonlinear reader such as the LLM could find there.
Baselines in the same run: answering "no" to every question, the commoner answer, and what the pixels hold: a small
convolutional network with the same probe on its 8x8 grid, trained end to end on the same scenes and labels
(``--pixel-epochs``). These two take minutes each, ask about shapes only, and ``--quick`` skips them.
Held-out scenes: the last 20 %.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from tqdm import tqdm

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


class PixelPresence(torch.nn.Module):
    """Five 3x3 convolutions, three of them stride 2: a 64 px image becomes an 8x8 grid, as in the encoders."""

    def __init__(self, n_questions: int) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        for cin, cout, stride in ((3, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 2)):
            layers += [torch.nn.Conv2d(cin, cout, 3, stride, 1), torch.nn.BatchNorm2d(cout), torch.nn.ReLU()]
        self.body = torch.nn.Sequential(*layers)
        self.probe = PresenceProbe(128, n_questions)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.probe(self.body(images).flatten(2).transpose(1, 2))


class DeepPresence(torch.nn.Module):
    """Two transformer layers over the patch tokens (with learnt positions), then the same probe."""

    def __init__(self, dim: int, tokens: int, n_questions: int, width: int = 128) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(dim, width)
        self.pos = torch.nn.Parameter(torch.zeros(1, tokens, width))
        layer = torch.nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2)
        self.probe = PresenceProbe(width, n_questions)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.probe(self.encoder(self.inp(feats) + self.pos))


def fit_accuracy(model: torch.nn.Module, inputs: torch.Tensor, answers: torch.Tensor, n_fit: int, epochs: int) -> float:
    """Train ``model`` on the first ``n_fit`` inputs; held-out accuracy (%) over every (scene, question) pair."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in tqdm(range(epochs), desc=type(model).__name__, leave=False):
        model.train()
        for idx in torch.randperm(n_fit).split(64):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(inputs[idx]), answers[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        said = torch.cat([model(chunk) for chunk in inputs[n_fit:].split(256)]) > 0
    return 100 * (said == answers[n_fit:].bool()).float().mean().item()


def probe_accuracy(feats: torch.Tensor, answers: torch.Tensor, n_fit: int, epochs: int, deep: bool = False) -> float:
    torch.manual_seed(0)
    mu, sd = feats[:n_fit].mean((0, 1)), feats[:n_fit].std((0, 1)) + 1e-5
    n, (tokens, dim) = answers.shape[1], feats.shape[1:]
    probe = DeepPresence(dim, tokens, n) if deep else PresenceProbe(dim, n)
    return fit_accuracy(probe, (feats - mu) / sd, answers, n_fit, epochs)


def pixel_accuracy(images: torch.Tensor, answers: torch.Tensor, n_fit: int, epochs: int) -> float:
    torch.manual_seed(0)
    return fit_accuracy(PixelPresence(answers.shape[1]), images, answers, n_fit, epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--pixel-epochs", type=int, default=8, help="the pixel CNN's training (~45 s an epoch)")
    parser.add_argument("--quick", action="store_true", help="the attention probes only (under a minute)")
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
    pixels = torch.stack(images).float()
    with torch.no_grad():
        feats = torch.cat([model.vision_tower(chunk) for chunk in pixels.split(256)])
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
    if not args.quick:  # shapes only: colour is the control, and each of these fits takes minutes
        deep = probe_accuracy(feats, shapes, n_fit, args.epochs, deep=True)
        print(f"{'CLIP+DINOv2 deep':16s} {deep:20.1f} {'-':>28s}")
        print(f"{'pixels (CNN)':16s} {pixel_accuracy(pixels, shapes, n_fit, args.pixel_epochs):20.1f} {'-':>28s}")
        print("# deep: two transformer layers read the features before the probe (same epochs); pixels (CNN): a small")
        print(f"# CNN trained end to end on the same scenes and labels, {args.pixel_epochs} epochs")
    print(f"\n(benchmark ran in {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
