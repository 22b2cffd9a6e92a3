"""Every epoch of a training mixture has its own order, augmentation and share of a fractionally weighted file."""

import pytest
import torch
from accelerate import skip_first_batches
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader

from tinygroundinggpt.data.format import iter_jsonl
from tinygroundinggpt.training.chain import load_checkpoint
from tinygroundinggpt.training.data import EpochLengthGroupedSampler, MixtureDataset
from tinygroundinggpt.training.recipe import DataSource


@pytest.fixture(scope="module")
def processor(tiny_ckpt):
    return load_checkpoint(tiny_ckpt)[1]


def _ids(dataset: MixtureDataset, epoch: int) -> list[str]:
    return [dataset.sample_at(epoch, p)[0].id for p in range(len(dataset))]


def test_a_fractional_weight_takes_a_new_share_each_epoch_and_covers_the_file(world, processor):
    all_ids = [s.id for s in iter_jsonl(world / "stage2_tc.jsonl")]
    dataset = MixtureDataset([DataSource("stage2_tc.jsonl", 0.25)], processor, world, seed=1)
    assert len(dataset) == round(0.25 * len(all_ids))
    shares = [_ids(dataset, e) for e in range(4)]
    seen = [i for share in shares for i in share]
    assert len(set(seen)) == len(seen)  # four epochs of a quarter: no sample twice ...
    assert len(seen) >= len(all_ids) - 3  # ... and (up to rounding) every sample once
    other = MixtureDataset([DataSource("stage2_tc.jsonl", 0.25)], processor, world, seed=2)
    assert _ids(other, 0) != shares[0]  # another stage (seed) takes another share


def test_whole_passes_repeat_the_file_each_epoch(world, processor):
    n = sum(1 for _ in iter_jsonl(world / "stage2_tc.jsonl"))
    dataset = MixtureDataset([DataSource("stage2_tc.jsonl", 2.0)], processor, world, seed=1)
    assert len(dataset) == 2 * n and _ids(dataset, 0) == _ids(dataset, 3)
    lengths = dataset.lengths_for(0)
    assert lengths[:n] == lengths[n:] == dataset.lengths_for(3)[:n] and len(set(lengths)) > 1


def test_the_sampler_orders_each_epoch_from_seed_and_epoch(world, processor):
    dataset = MixtureDataset([DataSource("stage2_tc.jsonl", 1.0)], processor, world, seed=1)
    sampler = EpochLengthGroupedSampler(dataset, batch_size=4)
    n = len(dataset)
    first = list(sampler)
    assert sorted(first) == list(range(n))
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(n, 2 * n))  # the epoch travels in the index, to dataloader workers too
    assert [i - n for i in second] != first
    torch.manual_seed(123)  # the global RNG plays no part: a resumed run gets the same order
    again = EpochLengthGroupedSampler(dataset, batch_size=4)
    again.set_epoch(1)
    assert list(again) == second
    assert dataset[second[0]].index == second[0] - n


def test_augmentation_draws_anew_each_epoch(world, processor):
    processor.object_margin, processor.object_jitter = 0.1, 0.05
    try:
        dataset = MixtureDataset([DataSource("stage2_ic.jsonl", 1.0)], processor, world, augment=True, seed=1)
        p = next(p for p in range(len(dataset)) if dataset[p].encoded.object_pixel_values.shape[0])
        n = len(dataset)
        first, same, later = (dataset[e * n + p].encoded.object_pixel_values[0] for e in (0, 0, 1))
        assert torch.equal(first, same) and not torch.equal(first, later)
    finally:
        processor.object_margin = processor.object_jitter = 0.0


@pytest.mark.parametrize("processes", [1, 2])
def test_the_epoch_reaches_the_sampler_through_accelerates_wrappers_on_resume(world, processor, processes):
    # What Trainer does in an epoch it resumes inside: shard the loader, skip the trained batches, set the epoch.
    # With two processes the sampler lies below skip → shard → batch sampler, where accelerate does not look.
    dataset = MixtureDataset([DataSource("stage2_tc.jsonl", 1.0)], processor, world, seed=1)
    n = len(dataset)
    loader = DataLoader(dataset, batch_size=2, sampler=EpochLengthGroupedSampler(dataset, batch_size=2 * processes))
    shard = prepare_data_loader(loader, num_processes=processes, process_index=0, put_on_device=False)
    resumed = skip_first_batches(shard, 1)
    resumed.set_epoch(2)
    indices = [i for batch in resumed.batch_sampler for i in batch]
    assert indices and all(2 * n <= i < 3 * n for i in indices)
