"""Image metrics of the evaluation (paper §4, Table 1), on images in [-1, 1].

- `ssim`: SSIM as Wang et al. (2004) and scikit-image compute it: an 11-tap Gaussian window (sigma 1.5),
  population (co)variances, data range 1 on [0, 1] images, the map averaged over the pixels whose whole
  window lies inside the image (a 5-pixel border is cropped, never reflect-padded), then over channels;
  one value per image. `masked_ssim` averages the same map over a region (preservation outside the edit).
- `frechet_distance` / `feature_stats`: the FID formula on any feature arrays (Inception features with
  clean-fid's extractor for FID proper; the mini CLIP's image features for the mini world, reported as
  "FID (mini CLIP)").
- `InceptionFeatures`: clean-fid's "clean" FID features (its TorchScript Inception from a local folder,
  never downloaded; PIL bicubic resize to 299): unavailable, with the reason, without the weights file.
- `mask_iou`: intersection over union of binary masks.
- `LPIPSMetric`: the lpips package's AlexNet LPIPS; the backbone's weights come from a local file or
  TORCH_HOME (nothing is downloaded): without them it is unavailable, with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from portrait_edit.blur import gaussian_kernel1d
from portrait_edit.images import to_uint8


def _unit(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1) / 2).clamp(0, 1)


SSIM_SIGMA = 1.5
SSIM_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)  # scikit-image's truncation at 3.5 sigma: an 11-tap window
SSIM_K1, SSIM_K2 = 0.01, 0.03


def ssim_map(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The SSIM map of each pair (B, 3, H, W) in [-1, 1], channel-averaged, over the window centres whose
    window lies wholly inside the image: float64 (B, H - 10, W - 10)."""
    x, y = _unit(prediction).double(), _unit(target).double()
    b, c, h, w = x.shape
    size = 2 * SSIM_RADIUS + 1
    if h < size or w < size:
        raise ValueError(f"SSIM needs images of at least {size} x {size} pixels; got {h} x {w}")
    g = gaussian_kernel1d(size, SSIM_SIGMA, torch.float64).to(x.device)

    def blur(z: torch.Tensor) -> torch.Tensor:  # separable Gaussian, "valid" (no padding)
        z = z.reshape(b * c, 1, *z.shape[-2:])
        z = torch.nn.functional.conv2d(z, g.view(1, 1, 1, size))
        return torch.nn.functional.conv2d(z, g.view(1, 1, size, 1))

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    full = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return full.reshape(b, c, h - size + 1, w - size + 1).mean(dim=1)


def ssim(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM of each image pair (B, 3, H, W) in [-1, 1]: float (B,), equal to scikit-image's
    structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)
    on the [0, 1] images, channel_axis last."""
    return ssim_map(prediction, target).flatten(1).mean(1).float()


def masked_ssim(prediction: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Mean of the SSIM map over `region` (B, H, W) in {0, 1}, on the pixels the map covers (the 5-pixel
    border is outside it): float (B,) (NaN where the region holds none of them)."""
    ssim_values = ssim_map(prediction, target)
    r = SSIM_RADIUS
    region = region[:, r : region.shape[1] - r, r : region.shape[2] - r].to(ssim_values)
    return ((ssim_values * region).flatten(1).sum(1) / region.flatten(1).sum(1)).float()


def mask_iou(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of binary masks (B, H, W) (> 0.5 is inside): float (B,); 1 where both are empty."""
    a, b = prediction > 0.5, target > 0.5
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def grid_ceiling_mask(region: torch.Tensor, cell: int) -> torch.Tensor:
    """The mask of whole `cell` x `cell` cells with the best IoU against each binary region (B, H, W):
    float (B, H, W) in {0, 1}, its IoU `grid_iou_ceiling`; empty for an empty region."""
    b, h, w = region.shape
    inside = (region > 0.5).float()
    covered = torch.nn.functional.avg_pool2d(inside[:, None], cell).flatten(1) * cell**2  # (B, cells)
    order = covered.argsort(dim=1, descending=True)
    ranked = covered.gather(1, order)
    union = inside.flatten(1).sum(1, keepdim=True) + (cell**2 - ranked).cumsum(1)
    count = (ranked.cumsum(1) / union.clamp(min=1)).argmax(dim=1) + 1  # the best prefix of the ranking
    keep = torch.zeros_like(covered).scatter(
        1, order, (torch.arange(covered.shape[1], device=covered.device) < count[:, None]).float()
    )
    keep = keep * (inside.flatten(1).sum(1, keepdim=True) > 0)
    cells = keep.reshape(b, 1, h // cell, w // cell)
    return torch.nn.functional.interpolate(cells, scale_factor=cell, mode="nearest")[:, 0]


def grid_iou_ceiling(region: torch.Tensor, cell: int) -> torch.Tensor:
    """The best IoU any mask made of whole `cell` x `cell` cells (a latent-resolution mask, upsampled)
    can reach against binary regions (B, H, W): float (B,), 1 for an empty region.

    A mask of k cells scores (sum of their covered pixels) / (|region| + their uncovered pixels); the best
    k-cell mask takes the k most covered cells, so the maximum over k of those prefixes is the optimum."""
    b, h, w = region.shape
    if h % cell or w % cell:
        raise ValueError(f"regions of {h} x {w} are not whole {cell} x {cell} cells")
    inside = (region > 0.5).float()
    covered = torch.nn.functional.avg_pool2d(inside[:, None], cell).flatten(1) * cell**2  # (B, cells)
    covered = covered.sort(dim=1, descending=True).values
    intersection = covered.cumsum(1)
    union = inside.flatten(1).sum(1, keepdim=True) + (cell**2 - covered).cumsum(1)
    best = (intersection / union.clamp(min=1)).max(dim=1).values
    return torch.where(inside.flatten(1).sum(1) > 0, best, torch.ones_like(best))


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) (unbiased, as numpy's cov) of features (N, D), float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D); got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Dowson and Landau; FID's formula). A singular
    product gets eps on the diagonals first; the tiny imaginary part sqrtm can return is dropped."""
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1 @ sigma2, disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between two feature sets (N, D) and (M, D)."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


class MetricUnavailable(RuntimeError):
    """A metric whose weights are not on this machine: reported as unavailable with this reason."""


class InceptionFeatures:
    """clean-fid's "clean"-mode Inception features (B, 2048) of images in [-1, 1].

    Args:
        folder: the folder holding clean-fid's `inception-2015-12-05.pt` (nothing is downloaded).
    """

    WEIGHTS_NAME = "inception-2015-12-05.pt"

    def __init__(self, folder: str | None) -> None:
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer

        if folder is None or not (Path(folder) / self.WEIGHTS_NAME).is_file():
            raise MetricUnavailable(
                f"FID needs clean-fid's Inception weights ({self.WEIGHTS_NAME}); none in {folder or '(not set)'}: "
                "put the file in a folder and pass inception=<folder>"
            )
        self.model = InceptionV3W(str(folder), download=False, resize_inside=False).eval()
        self.resize = build_resizer("clean")  # PIL bicubic to 299 x 299, as clean-fid's "clean" mode

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = to_uint8(images)
        # clean-fid resizes uint8 images to float32 in [0, 255] and feeds them unscaled.
        resized = torch.stack(
            [torch.from_numpy(np.asarray(self.resize(x), np.float32)).permute(2, 0, 1) for x in pixels]
        )
        device = next(self.model.parameters(), torch.empty(0)).device
        return self.model(resized.to(device)).float()


class LPIPSMetric:
    """AlexNet LPIPS (lpips package, version 0.1: its shipped linear layers) on images in [-1, 1].

    Args:
        backbone: AlexNet weights file (torchvision's alexnet-owt-7be5be79.pth state dict); None: the
            copy in TORCH_HOME's hub cache if there is one.
        random_backbone: use a random (seeded) backbone instead: for tests only, not a real LPIPS.
    """

    WEIGHTS_NAME = "alexnet-owt-7be5be79.pth"

    def __init__(self, backbone: str | None = None, random_backbone: bool = False, seed: int = 0) -> None:
        import lpips

        if not random_backbone:
            backbone = backbone or self.cached_backbone()
            if backbone is None or not Path(backbone).is_file():
                raise MetricUnavailable(
                    f"LPIPS needs AlexNet weights ({self.WEIGHTS_NAME}); none at {backbone or 'TORCH_HOME/hub/checkpoints'}:"
                    " put them there or pass lpips_backbone=<file>"
                )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
        if not random_backbone:
            state = torch.load(backbone, map_location="cpu", weights_only=True)
            features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
            self.load_backbone(features)

    @classmethod
    def cached_backbone(cls) -> str | None:
        home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
        path = home / "hub" / "checkpoints" / cls.WEIGHTS_NAME
        return str(path) if path.is_file() else None

    def load_backbone(self, features: dict[str, torch.Tensor]) -> None:
        """Load torchvision AlexNet `features.*` weights (keys without the prefix) into the LPIPS trunk."""
        net = self.model.net
        slices = [net.slice1, net.slice2, net.slice3, net.slice4, net.slice5]
        for key, value in features.items():
            index, name = key.split(".")
            for s in slices:
                if index in s._modules:
                    getattr(s._modules[index], name).data.copy_(value)

    @torch.no_grad()
    def __call__(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """LPIPS of each image pair (B, 3, H, W) in [-1, 1]: float (B,)."""
        device = prediction.device
        self.model.to(device)
        return self.model(prediction.float(), target.float(), normalize=False).flatten()
