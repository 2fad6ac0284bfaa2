"""One seed helper, `vfmvae.seeding.derive_seed`, and the streams that use it."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from vfmvae.data.sampler import ResumableSampler
from vfmvae.sampling.generate import class_labels
from vfmvae.seeding import derive_seed


def test_one_int_part_is_the_per_sample_seed_of_before():
    for seed, index in [(0, 0), (0, 7), (1, 0), (42, 49_999), (123_456, 3)]:
        assert derive_seed(seed, index) == seed * 1_000_003 + index


def test_parts_fold_in_order_and_strings_count_as_their_crc32():
    assert derive_seed(5, "labels") == 5 * 1_000_003 + zlib.crc32(b"labels")
    assert derive_seed(5, "labels", 3) == (5 * 1_000_003 + zlib.crc32(b"labels")) * 1_000_003 + 3
    assert derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    assert derive_seed(7) == 7
    assert derive_seed(3, np.int64(4)) == derive_seed(3, 4)  # numpy integers count as ints


def test_result_is_a_valid_non_negative_seed_below_2_to_the_63():
    for value in (derive_seed(2**70, 2**70, "x"), derive_seed(-1, 5), derive_seed(10**30, "loader", 10**20)):
        assert 0 <= value < 2**63
        torch.Generator().manual_seed(value)  # accepted by torch


def test_streams_are_distinct_including_the_old_collisions():
    seed = 0
    seeds = {("sample", i): derive_seed(seed, i) for i in range(2000)}
    for tag in ("labels", "loader", "shuffle"):
        seeds.update({(tag, i): derive_seed(seed, tag, i) for i in range(2000)})
    assert len(set(seeds.values())) == len(seeds)
    # before: loader rank r (seed*7919 + r) and sampler epoch e (seed*1_000_003 + e) shared seeds at seed 0, and the
    # label of sample i (seed*1_000_003 + i + 7919) used the noise seed of sample i + 7919
    assert derive_seed(seed, "loader", 1) != derive_seed(seed, "shuffle", 1)
    assert derive_seed(seed, "labels", 0) != derive_seed(seed, 7919)


@pytest.mark.parametrize("bad", [1.5, None, True, b"x"])
def test_parts_other_than_ints_and_strings_are_refused(bad):
    with pytest.raises(TypeError, match="ints or strings"):
        derive_seed(0, bad)


def test_random_labels_and_shuffles_come_from_their_named_streams():
    expected = [
        int(torch.randint(10, (1,), generator=torch.Generator().manual_seed(derive_seed(3, "labels", i))))
        for i in range(20)
    ]
    assert class_labels("random", 20, 10, seed=3) == expected
    old = [
        int(torch.randint(10, (1,), generator=torch.Generator().manual_seed(3 * 1_000_003 + i + 7919)))
        for i in range(20)
    ]
    assert expected != old  # the label stream no longer shares a seed with sample i + 7919's noise
    sampler = ResumableSampler(12, seed=4)
    first_epoch = [index for _, (epoch, index) in zip(range(12), iter(sampler))]
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(derive_seed(4, "shuffle", 0))).tolist()
    assert first_epoch == perm
