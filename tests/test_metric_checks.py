"""Metrics that would be silently wrong warn or refuse: PSNR/SSIM on [0, 1] floats, CKNNA outside
[-1, 1], FID from too few samples, an Inception file that is not the FID one."""

from __future__ import annotations

import warnings

import pytest
import torch

from vfmvae.alignment.metrics import cknna, preprocess
from vfmvae.evaluation.image_metrics import psnr, ssim
from vfmvae.evaluation.stats import warn_if_too_few_for_fid


def test_psnr_and_ssim_refuse_unit_range_floats():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 16, 16, generator=g)
    b = (a + 0.1 * torch.rand(2, 3, 16, 16, generator=g)).clamp(0, 1)
    with pytest.raises(ValueError, match=r"psnr expects images on the uint8 scale \[0, 255\].*\(x \* 255\)"):
        psnr(a, b)
    with pytest.raises(ValueError, match=r"ssim expects.*data_range=1.0"):
        ssim(a, b)
    to8 = lambda x: (x * 255).round().to(torch.uint8)  # noqa: E731
    assert float(psnr(to8(a), to8(b)).mean()) < 40  # the stated conversion gives a real value
    torch.testing.assert_close(ssim(a, b, data_range=1.0), ssim(a * 255, b * 255), rtol=1e-9, atol=1e-9)


def test_cknna_above_one_warns_with_the_minimum_n():
    g = torch.Generator().manual_seed(20)
    a = torch.randn(24, 8, generator=g)
    b = a + 0.05 * torch.randn(24, 8, generator=g)
    with pytest.warns(UserWarning, match=r"outside \[-1, 1\].*N=24 samples for topk=10.*at least N = 50"):
        value = cknna(preprocess(a), preprocess(b), topk=10)
    assert value > 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cknna(preprocess(torch.randn(64, 8, generator=g)), preprocess(torch.randn(64, 8, generator=g)), topk=10)


def test_fid_from_fewer_than_2048_samples_warns():
    with pytest.warns(UserWarning, match="FID from 100 images: fewer than 2048.*not comparable"):
        assert not warn_if_too_few_for_fid(100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_too_few_for_fid(50_000)


def test_an_inception_file_that_is_not_the_fid_one_warns(tmp_path):
    from vfmvae.evaluation.inception import InceptionV3, load_inception

    path = tmp_path / "inception.pth"
    torch.save(InceptionV3().net.state_dict(), path)
    with pytest.warns(UserWarning, match="not the pt_inception-2015-12-05 FID Inception.*6726825d"):
        _, provenance = load_inception(path)
    assert provenance["inception_weights_expected"] is False
