"""Evaluation metrics against independent references: scikit-image's SSIM, clean-fid's Frechet distance,
and LPIPS recomputed by hand from a torchvision AlexNet and the lpips package's linear layers."""

import numpy as np
import pytest
import torch
import torchvision
from cleanfid import fid as cleanfid
from skimage.metrics import structural_similarity
from torch.testing import assert_close

from portrait_edit.metrics.image import (
    LPIPSMetric,
    MetricUnavailable,
    feature_stats,
    fid_from_features,
    frechet_distance,
    grid_iou_ceiling,
    mask_iou,
    masked_ssim,
    ssim,
)


def images(seed, n=2, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_ssim_equals_scikit_image():
    a, b = images(0), images(1)
    b = 0.7 * a + 0.3 * b  # related images: SSIM well inside (0, 1)
    ours = ssim(a, b)
    for k in range(2):
        x, y = ((a[k] + 1) / 2).permute(1, 2, 0).numpy(), ((b[k] + 1) / 2).permute(1, 2, 0).numpy()
        expected = structural_similarity(
            x,
            y,
            data_range=1.0,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert ours[k].item() == pytest.approx(expected, abs=2e-3)
    assert_close(ssim(a, a), torch.ones(2))


def test_masked_ssim_and_iou_by_hand():
    a = images(2)
    region = torch.zeros(2, 32, 32)
    region[:, :, :16] = 1
    b = a.clone()
    b[:, :, :, 16:] = -b[:, :, :, 16:]  # changed on the right half only
    kept = masked_ssim(b, a, region)
    assert (kept > 0.9).all() and (masked_ssim(b, a, 1 - region) < kept).all()
    m1, m2 = torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)
    m1[0, :2], m2[0, 1:3] = 1, 1  # rows 0-1 vs rows 1-2: 4 shared of 12
    assert mask_iou(m1, m2).item() == pytest.approx(4 / 12)
    assert mask_iou(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)).item() == 1.0


def test_frechet_distance_equals_clean_fid():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 8)), rng.normal(0.3, 1.2, size=(150, 8))
    mu1, s1 = feature_stats(a)
    mu2, s2 = feature_stats(b)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        cleanfid.frechet_distance(mu1, s1, mu2, s2), rel=1e-9
    )
    assert fid_from_features(a, b) == pytest.approx(cleanfid.fid_from_feats(a, b), rel=1e-9)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)


def test_lpips_recomputed_by_hand_from_alexnet_and_the_linear_layers(tmp_path):
    torch.manual_seed(0)
    alexnet = torchvision.models.alexnet(weights=None).eval()
    torch.save(alexnet.state_dict(), tmp_path / "alexnet.pth")
    metric = LPIPSMetric(backbone=str(tmp_path / "alexnet.pth"))
    a, b = images(3, size=64), images(4, size=64)
    ours = metric(a, b)
    # By hand: scaling layer, AlexNet relu outputs, unit-normalised channels, squared differences, the
    # package's 1x1 linear layers, spatial mean, sum over the 5 layers.
    shift = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
    scale = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]
    lins = metric.model.lins
    taps = [1, 4, 7, 9, 11]

    def feats(x):
        out, h = [], (x - shift) / scale
        for i, layer in enumerate(alexnet.features):
            h = layer(h)
            if i in taps:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    with torch.no_grad():
        expected = sum(
            lin((fa - fb) ** 2).mean(dim=(2, 3)).flatten() for lin, fa, fb in zip(lins, feats(a), feats(b))
        )
    assert_close(ours, expected, rtol=1e-4, atol=1e-6)


def test_lpips_without_weights_is_unavailable_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MetricUnavailable, match="AlexNet weights"):
        LPIPSMetric()


def test_fid_without_inception_weights_is_unavailable_with_the_reason(tmp_path):
    from portrait_edit.metrics.image import InceptionFeatures, MetricUnavailable

    with pytest.raises(MetricUnavailable, match="inception-2015-12-05.pt"):
        InceptionFeatures(str(tmp_path))  # an empty folder: nothing is downloaded
    with pytest.raises(MetricUnavailable, match="inception=<folder>"):
        InceptionFeatures(None)


def test_grid_iou_ceiling_is_the_best_mask_of_whole_cells():
    region = torch.zeros(2, 8, 8)
    region[0, :4, :4] = 1  # one whole 4 x 4 cell ...
    region[0, 4:6, 4:6] = 1  # ... and a quarter of another: that cell would cost 12, gain 4
    region[1, 2:6, 2:6] = 1  # a quarter of each of the 4 cells: one cell 4 / 28, all four 16 / 64
    by_hand = torch.tensor([16 / 20, 16 / 64])
    assert_close(grid_iou_ceiling(region, 4), by_hand)
    # No mask of whole cells does better (all 16 subsets of the 2 x 2 grid).
    for b in range(2):
        best = 0.0
        for bits in range(16):
            cells = torch.tensor([(bits >> k) & 1 for k in range(4)], dtype=torch.float32).reshape(1, 1, 2, 2)
            mask = torch.nn.functional.interpolate(cells, scale_factor=4, mode="nearest")[:, 0]
            best = max(best, mask_iou(mask, region[b : b + 1]).item())
        assert best == pytest.approx(by_hand[b].item())
    assert grid_iou_ceiling(torch.zeros(1, 8, 8), 4).item() == 1.0
    with pytest.raises(ValueError, match="cells"):
        grid_iou_ceiling(torch.zeros(1, 6, 8), 4)
