"""Evaluation metrics against independent references: scikit-image's SSIM, clean-fid's Frechet distance,
and LPIPS recomputed by hand from a torchvision AlexNet and the lpips package's linear layers."""

import numpy as np
import pytest
import torch
import torchvision
from cleanfid import fid as cleanfid
from skimage.metrics import structural_similarity
from torch.testing import assert_close

from portrait_edit.data.eval_pairs import WorldEvalDataset
from portrait_edit.metrics.image import (
    LPIPSMetric,
    MetricUnavailable,
    feature_stats,
    fid_from_features,
    frechet_distance,
    grid_ceiling_mask,
    grid_iou_ceiling,
    mask_iou,
    masked_ssim,
    ssim,
)
from portrait_edit.tasks import DIRECTIONS


def images(seed, n=2, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """scikit-image's SSIM (Wang et al.'s settings) of two images (3, H, W) in [-1, 1]."""
    x, y = ((a + 1) / 2).permute(1, 2, 0).double().numpy(), ((b + 1) / 2).permute(1, 2, 0).double().numpy()
    return structural_similarity(
        x, y, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )


@pytest.fixture(scope="module")
def portraits():
    """200 real mini-world pairs: held-out portraits (x_A) and their exact edits (x_B), 8 directions."""
    data = WorldEvalDataset(inputs=25, directions=list(DIRECTIONS))
    items = [data[i] for i in range(len(data))]
    return torch.stack([x["source"] for x in items]), torch.stack([x["target"] for x in items])


def test_ssim_equals_scikit_image_on_real_portraits_and_edits(portraits):
    a, b = portraits
    noisy = (b + 0.15 * torch.randn(b.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    for x, y in ((a, b), (b, noisy)):  # portrait vs its exact edit; an edit vs a degraded copy of it
        ours = ssim(x, y)
        expected = torch.tensor([skimage_ssim(x[k], y[k]) for k in range(len(x))], dtype=torch.float32)
        assert_close(ours, expected, rtol=0, atol=1e-4)
        assert ours.mean().item() == pytest.approx(expected.mean().item(), abs=1e-4)
        assert expected.std() > 0.02  # the pairs span a range: a constant offset would show
    assert_close(ssim(a[:4], a[:4]), torch.ones(4))


def test_masked_ssim_over_the_whole_image_is_ssim_and_ignores_the_border(portraits):
    a, b = portraits[0][:8], portraits[1][:8]
    assert_close(masked_ssim(a, b, torch.ones(8, 64, 64)), ssim(a, b), rtol=0, atol=1e-6)
    border = torch.ones(8, 64, 64)
    border[:, 5:-5, 5:-5] = 0
    assert torch.isnan(masked_ssim(a, b, border)).all()  # no window centre of the map lies there


def test_masked_ssim_and_iou_by_hand():
    a = images(2)
    b = a.clone()
    b[:, :, :, 16:] = -b[:, :, :, 16:]  # changed from column 16 on
    region = torch.zeros(2, 32, 32)
    region[:, :, :11] = 1  # window centres whose 11-pixel windows stay within columns 0-15
    assert_close(masked_ssim(b, a, region), torch.ones(2))
    region[:, :, 11] = 1  # one more column of centres: their windows see column 16
    assert (masked_ssim(b, a, region) < 1 - 1e-4).all()
    assert (masked_ssim(b, a, 1 - region) < 0.5).all()
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


def lpips_reference(alexnet: torch.nn.Module):
    """The lpips package's own AlexNet LPIPS, built apart from LPIPSMetric: its shipped v0.1 linear layers
    (pretrained=True reads them from the package) and the trunk's five slices taken from `alexnet`."""
    import lpips

    reference = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    layers = list(alexnet.features.children())
    for slice_, (start, end) in zip(
        [
            reference.net.slice1,
            reference.net.slice2,
            reference.net.slice3,
            reference.net.slice4,
            reference.net.slice5,
        ],
        [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)],  # lpips.pretrained_networks.alexnet's split
    ):
        for k in range(start, end):
            slice_._modules[str(k)] = layers[k]
    return reference


def test_lpips_equals_the_lpips_package_network_with_the_same_alexnet(tmp_path):
    torch.manual_seed(0)
    alexnet = torchvision.models.alexnet(weights=None).eval()
    torch.save(alexnet.state_dict(), tmp_path / "alexnet.pth")
    metric = LPIPSMetric(backbone=str(tmp_path / "alexnet.pth"))
    reference = lpips_reference(alexnet)
    a, b = images(3, size=64), images(4, size=64)
    with torch.no_grad():
        expected = reference(a, b, normalize=False).flatten()
    assert_close(metric(a, b), expected, rtol=1e-5, atol=1e-7)
    # By hand from the same pieces: scaling layer, AlexNet relu outputs, unit-normalised channels, squared
    # differences, the package's 1 x 1 linear layers, spatial mean, sum over the 5 layers.
    shift = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
    scale = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]
    taps = [1, 4, 7, 9, 11]

    def feats(x):
        out, h = [], (x - shift) / scale
        for i, layer in enumerate(alexnet.features):
            h = layer(h)
            if i in taps:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    with torch.no_grad():
        by_hand = sum(
            lin((fa - fb) ** 2).mean(dim=(2, 3)).flatten()
            for lin, fa, fb in zip(reference.lins, feats(a), feats(b))
        )
    assert_close(expected, by_hand, rtol=1e-4, atol=1e-6)


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
    mask = grid_ceiling_mask(region, 4)  # the mask that reaches it, made of whole cells
    assert_close(mask_iou(mask, region), by_hand)
    assert torch.equal(mask, mask[:, ::4, ::4].repeat_interleave(4, 1).repeat_interleave(4, 2))
    assert grid_iou_ceiling(torch.zeros(1, 8, 8), 4).item() == 1.0
    assert grid_ceiling_mask(torch.zeros(1, 8, 8), 4).sum() == 0
    with pytest.raises(ValueError, match="cells"):
        grid_iou_ceiling(torch.zeros(1, 6, 8), 4)
