"""Linear and unbiased CKA in feature space (O(N D^2)) equal their N x N Gram-matrix definitions."""

import pytest
import torch

from vfmvae.alignment.metrics import all_metrics, cka, hsic_unbiased, preprocess, unbiased_cka


def _gram_cka(a, b):
    """The definitions on the N x N kernels K = A A^T, L = B B^T (the former implementation)."""
    k, l = (a @ a.T).double(), (b @ b.T).double()
    kc = k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()
    lc = l - l.mean(0, keepdim=True) - l.mean(1, keepdim=True) + l.mean()
    hsic = lambda x, y: (x * y).sum()  # noqa: E731
    linear = hsic(kc, lc) / (torch.sqrt(hsic(kc, kc) * hsic(lc, lc)) + 1e-6)
    unbiased = hsic_unbiased(k, l) / (torch.sqrt(hsic_unbiased(k, k) * hsic_unbiased(l, l)) + 1e-6)
    return float(linear), float(unbiased)


@pytest.mark.parametrize("n, da, db, related", [(300, 64, 48, True), (257, 16, 96, False), (6, 5, 7, True)])
def test_feature_space_cka_equals_the_gram_forms(n, da, db, related):
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, da, generator=g) * torch.linspace(0.1, 3, da) + 0.7  # uneven scales, non-zero means
    b = (a[:, :db] if db <= da else torch.cat([a, a[:, : db - da]], 1)) if related else torch.randn(n, db, generator=g)
    b = b + 0.3 * torch.randn(n, db, generator=g)
    # float64 features: equal to rounding; float32 features: the Gram form rounds K = A A^T to float32 first
    for x, y, rel in ((a.double(), b.double(), 1e-10), (a, b, 1e-6), (preprocess(a), preprocess(b), 1e-6)):
        linear, unbiased = _gram_cka(x, y)
        assert cka(x, y) == pytest.approx(linear, rel=rel, abs=1e-12)
        assert unbiased_cka(x, y) == pytest.approx(unbiased, rel=rel, abs=1e-12)
    got = all_metrics(a, b, topk=min(10, n - 1))
    linear, unbiased = _gram_cka(preprocess(a), preprocess(b))
    assert got["cka"] == pytest.approx(linear, rel=1e-6) and got["unbiased_cka"] == pytest.approx(unbiased, rel=1e-6)
    if related:
        assert linear > 0.5  # the comparison is not between two zeros


def test_unbiased_cka_needs_four_samples():
    with pytest.raises(ValueError, match="at least 4 samples"):
        unbiased_cka(torch.randn(3, 4), torch.randn(3, 4))
