"""Training data: a weighted mixture of JSONL files, encoded lazily by the processor.

* Bad lines (not JSON, missing keys, box references out of range) are reported with file and line when
  the files are read; the rest of the file is used.
* A sample whose image turns out corrupt, or whose box is invalid for its image, is replaced by the next
  good sample (so batch sizes stay fixed) and counted with its file, line and reason. Which samples a batch
  holds and which were replaced travel with the batch (``BATCH_INFO``): dataloader workers encode copies of
  the dataset, so nothing they record in it would reach the trainer.
* Every epoch has its own order, augmentation draws and share of a file with a fractional weight, all from
  (seed, epoch): a run resumed in any epoch continues exactly as an uninterrupted one. The sampler hands the
  dataset ``epoch * len(dataset) + position``, which also reaches dataloader workers (copies of the dataset).
* ``lengths_for(epoch)`` are known before any image is decoded, for length-grouped batching.
"""

from __future__ import annotations

import bisect
import logging
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from tinygroundinggpt.data.format import IMAGE_TOKEN, OBJECT_REF_RE, LoadReport, Sample, iter_jsonl
from tinygroundinggpt.model.processing_tinygroundinggpt import Encoded, TinyGroundingGPTProcessor
from tinygroundinggpt.training.recipe import DataSource

logger = logging.getLogger(__name__)
MAX_REPLACEMENTS = 100  # more bad samples in a row is a bug or a broken data set, not a few bad lines


@dataclass
class MixtureReport:
    files: list[LoadReport] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # samples drawn per file

    @property
    def skipped(self) -> list[tuple[str, int, str]]:
        return [s for r in self.files for s in r.skipped]


def stable_seed(*parts: object) -> int:
    """A 32-bit seed from several values, the same in every process and Python run (unlike ``hash``)."""
    return zlib.crc32(":".join(map(str, parts)).encode())


@dataclass
class _File:
    """One data file in the mixture: ``whole`` passes over its samples, then ``partial`` of them per epoch."""

    path: Path
    samples: list[Sample]
    lengths: list[int]
    whole: int
    partial: int
    order: list[int]  # a seeded permutation; epoch e takes its e-th block of ``partial`` (wrapping around)

    def __len__(self) -> int:
        return self.whole * len(self.samples) + self.partial

    def pick(self, epoch: int) -> list[int]:
        """The sample indices of one epoch: whole passes, then this epoch's share of the file."""
        n = len(self.samples)
        start = epoch * self.partial
        share = sorted(self.order[(start + t) % n] for t in range(self.partial))
        return [i for _ in range(self.whole) for i in range(n)] + share


class MixtureDataset(Dataset):
    """The samples of several JSONL files, each repeated/sub-sampled by its weight (Table 6 mixtures).

    A fractional weight takes a different share of the file each epoch, so that over epochs (and over stages with
    different ``seed``s) the whole file is used: weight 0.25 for four epochs sees every sample once (up to rounding).
    """

    def __init__(
        self,
        sources: list[DataSource],
        processor: TinyGroundingGPTProcessor,
        data_root: str | Path | None = None,
        *,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        self.processor = processor
        self.augment = augment
        self.seed = seed
        self.report = MixtureReport()
        self.files: list[_File] = []
        for number, src in enumerate(sources):
            path = Path(src.path)
            if not path.is_absolute() and data_root is not None:
                path = Path(data_root) / path
            if not path.is_file():
                raise FileNotFoundError(f"data file {path} does not exist")
            file_report = LoadReport(str(path))
            samples = list(iter_jsonl(path, file_report))
            self.report.files.append(file_report)
            for path_, line, problem in file_report.skipped:
                logger.warning("skipped %s:%d: %s", path_, line, problem)
            order = list(range(len(samples)))
            random.Random(stable_seed(seed, number, path.name)).shuffle(order)
            whole = int(src.weight)
            partial = round((src.weight - whole) * len(samples))
            self.files.append(_File(path, samples, self._lengths(samples), whole, partial, order))
            self.report.counts[str(path)] = len(self.files[-1])
        self._starts = [0]
        for f in self.files:
            self._starts.append(self._starts[-1] + len(f))
        if not len(self):
            raise ValueError("the data mixture is empty")
        self._picks: dict[int, list[list[int]]] = {}
        self.epoch = 0  # the epoch the sampler orders next (main process; items read theirs from the index)

    def set_epoch(self, epoch: int) -> None:
        # accelerate calls this instead of the sampler's set_epoch when the sampler lies deeper than it looks
        # (a multi-process loader resumed mid-epoch: skip → shard → batch → sampler)
        self.epoch = epoch

    def _lengths(self, samples: list[Sample]) -> list[int]:
        """Token counts (text + expanded visual tokens) without decoding any image."""
        tok = self.processor.tokenizer
        texts = ["\n".join(m["content"] for m in s.messages) for s in samples]
        ids = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
        out = []
        for s, t in zip(samples, ids, strict=True):
            content = "".join(m["content"] for m in s.messages)
            n_img = content.count(IMAGE_TOKEN)
            n_obj = len(OBJECT_REF_RE.findall(content))
            out.append(
                len(t) + 12 * len(s.messages)  # ChatML framing per turn
                + n_img * self.processor.image_seq_length
                + n_obj * self.processor.object_seq_length
            )  # fmt: skip
        return out

    def picks(self, epoch: int) -> list[list[int]]:
        """Per file, the sample indices of ``epoch`` (the last few epochs are cached)."""
        if epoch not in self._picks:
            if len(self._picks) >= 4:
                self._picks.pop(next(iter(self._picks)))
            self._picks[epoch] = [f.pick(epoch) for f in self.files]
        return self._picks[epoch]

    def lengths_for(self, epoch: int) -> list[int]:
        return [f.lengths[i] for f, picks in zip(self.files, self.picks(epoch), strict=True) for i in picks]

    def sample_at(self, epoch: int, position: int) -> tuple[Sample, Path, str]:
        """The sample at ``position`` of ``epoch``, the folder its image paths are relative to, its file."""
        number = bisect.bisect_right(self._starts, position) - 1
        f = self.files[number]
        i = self.picks(epoch)[number][position - self._starts[number]]
        return f.samples[i], f.path.parent, str(f.path)

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> Fetched:
        """Item ``index`` (``epoch * len(self) + position``; a plain position is epoch 0)."""
        epoch, position = divmod(index, len(self))
        replaced: list[tuple[str, str, str]] = []
        for step in range(min(len(self), MAX_REPLACEMENTS)):
            sample, root, origin = self.sample_at(epoch, (position + step) % len(self))
            rng = random.Random(stable_seed(self.seed, epoch, position)) if self.augment else None
            try:
                return Fetched(position, replaced, self.processor.encode_sample(sample, str(root), rng=rng))
            except ValueError as exc:  # a bad image or box, too long, or a conversation the template refuses
                where = origin if sample.line is None else f"{origin}:{sample.line}"
                replaced.append((where, sample.id, str(exc)))
                logger.warning("replacing %s sample %s: %s", where, sample.id, exc)
        raise ValueError(f"{len(replaced)} samples in a row could not be encoded, the last: {replaced[-1]}")


class EpochLengthGroupedSampler(Sampler[int]):
    """Length-grouped order (transformers' grouping) drawn from (seed, epoch), not from the global RNG.

    Yields ``epoch * len(dataset) + position`` so the dataset knows the epoch; ``Trainer`` calls ``set_epoch``
    (through accelerate, on the sampler or on the dataset).
    """

    def __init__(self, dataset: MixtureDataset, batch_size: int) -> None:
        self.dataset = dataset
        self.batch_size = batch_size

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)  # one epoch, whichever of the two accelerate reaches

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        epoch = self.dataset.epoch
        generator = torch.Generator().manual_seed(stable_seed(self.dataset.seed, "order", epoch))
        order = get_length_grouped_indices(self.dataset.lengths_for(epoch), self.batch_size, generator=generator)
        offset = epoch * len(self.dataset)
        return iter([offset + i for i in order])


@dataclass
class Fetched:
    """One training item: its position in its epoch, the samples replaced on the way to it, its encoding."""

    index: int
    replaced: list[tuple[str, str, str]]  # (file:line, sample id, problem)
    encoded: Encoded


BATCH_INFO = "batch_info"  # a batch's key for {"indices": [...], "replaced": [...]}; the trainer pops it


class Collator:
    """Right-padded training batches from :class:`Fetched` items."""

    def __init__(self, processor: TinyGroundingGPTProcessor) -> None:
        self.processor = processor

    def __call__(self, items: list[Fetched]) -> dict:
        batch = self.processor.collate([it.encoded for it in items], padding_side="right")
        batch[BATCH_INFO] = {
            "indices": [it.index for it in items],
            "replaced": [r for it in items for r in it.replaced],
        }
        return batch
