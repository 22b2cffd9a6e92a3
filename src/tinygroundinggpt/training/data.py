"""Training data: a weighted mixture of JSONL files, encoded lazily by the processor.

* Bad lines (not JSON, missing keys, box references out of range) are reported with file and line when
  the files are read; the rest of the file is used.
* A sample whose image turns out corrupt, or whose box is invalid for its image, is replaced by the next
  good sample (so batch sizes stay fixed) and counted with its file, line and reason. Which samples a batch
  holds and which were replaced travel with the batch (``BATCH_INFO``): dataloader workers encode copies of
  the dataset, so nothing they record in it would reach the trainer.
* ``lengths`` are known before any image is decoded, for length-grouped batching.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset

from tinygroundinggpt.data.format import IMAGE_TOKEN, OBJECT_REF_RE, LoadReport, Sample, iter_jsonl
from tinygroundinggpt.model.processing_tinygroundinggpt import Encoded, TinyGroundingGPTProcessor
from tinygroundinggpt.training.recipe import DataSource

logger = logging.getLogger(__name__)
MAX_REPLACEMENTS = 100  # more bad samples in a row is a bug or a broken data set, not a few bad lines


@dataclass
class _Entry:
    sample: Sample
    root: Path
    origin: tuple[str, int]  # (file, index within the file's good samples)


@dataclass
class MixtureReport:
    files: list[LoadReport] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # samples drawn per file

    @property
    def skipped(self) -> list[tuple[str, int, str]]:
        return [s for r in self.files for s in r.skipped]


def _draw(n: int, weight: float, rng: random.Random) -> list[int]:
    """Indices for ``weight`` passes over ``n`` samples: whole passes, then a seeded partial pass."""
    whole, frac = int(weight), weight - int(weight)
    picks = [i for _ in range(whole) for i in range(n)]
    picks += sorted(rng.sample(range(n), round(frac * n)))
    return picks


class MixtureDataset(Dataset):
    """The samples of several JSONL files, each repeated/sub-sampled by its weight (Table 6 mixtures)."""

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
        self.entries: list[_Entry] = []
        rng = random.Random(seed)
        for src in sources:
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
            picks = _draw(len(samples), src.weight, rng)
            self.report.counts[str(path)] = len(picks)
            self.entries += [_Entry(samples[i], path.parent, (str(path), i)) for i in picks]
        if not self.entries:
            raise ValueError("the data mixture is empty")
        self.lengths = self._lengths()

    def _lengths(self) -> list[int]:
        """Token counts (text + expanded visual tokens) without decoding any image."""
        tok = self.processor.tokenizer
        texts = ["\n".join(m["content"] for m in e.sample.messages) for e in self.entries]
        ids = tok(texts, add_special_tokens=False)["input_ids"]
        out = []
        for e, t in zip(self.entries, ids, strict=True):
            content = "".join(m["content"] for m in e.sample.messages)
            n_img = content.count(IMAGE_TOKEN)
            n_obj = len(OBJECT_REF_RE.findall(content))
            out.append(
                len(t) + 12 * len(e.sample.messages)  # ChatML framing per turn
                + n_img * self.processor.image_seq_length
                + n_obj * self.processor.object_seq_length
            )  # fmt: skip
        return out

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Fetched:
        replaced: list[tuple[str, str, str]] = []
        for step in range(min(len(self.entries), MAX_REPLACEMENTS)):
            entry = self.entries[(index + step) % len(self.entries)]
            rng = random.Random(self.seed * 1_000_003 + index) if self.augment else None
            try:
                return Fetched(index, replaced, self.processor.encode_sample(entry.sample, str(entry.root), rng=rng))
            except ValueError as exc:  # a bad image or box, too long, or a conversation the template refuses
                replaced.append((entry.origin[0], entry.sample.id, str(exc)))
                logger.warning("replacing %s sample %s: %s", entry.origin[0], entry.sample.id, exc)
        raise ValueError(f"{len(replaced)} samples in a row could not be encoded, the last: {replaced[-1]}")


@dataclass
class Fetched:
    """One training item: its index in the mixture, the samples replaced on the way to it, its encoding."""

    index: int
    replaced: list[tuple[str, str, str]]
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
