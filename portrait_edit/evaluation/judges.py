"""Per-edit scores of the evaluation table (paper Table 1 plus the mini world's extras).

`EditJudges` holds the readers a score needs; a reader that is not configured, or whose weights are not
on this machine, makes its scores unavailable (with the reason), never a placeholder number:
- ssim, psnr: the edit against the target x_B (in the mini world the exact edited render);
- lpips: the lpips package's AlexNet LPIPS (backbone weights from a local file or TORCH_HOME);
- preservation: SSIM to x_A outside the true edit region (mini world);
- mask_iou: the method's mask against the true edit region (methods with a mask, mini world);
- fidelity: the direction classifier reads the edit as the pair's direction;
- identity: cosine of the identity encoder's c_id of the edit and of x_A;
- features: clean-fid's Inception features ("fid", with its weights) and CLIP image features
  ("fid_clip") of the edits, for Frechet distances to the targets'.
Scores are float (B,), NaN where a score does not apply to an item (no true region, no mask).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from portrait_edit.evaluation.direction_classifier import DirectionClassifier
from portrait_edit.loading.components import load_image_encoder
from portrait_edit.metrics.image import (
    InceptionFeatures,
    LPIPSMetric,
    MetricUnavailable,
    mask_iou,
    masked_ssim,
    ssim,
)
from portrait_edit.metrics.psnr import psnr_per_image
from portrait_edit.models.clip_image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_pixels
from portrait_edit.models.identity_encoder import IdentityEncoder, encode_identity

SCORES = ("ssim", "psnr", "lpips", "preservation", "mask_iou", "fidelity", "identity")
# The lambdas a soft mask is cut at for the mask IoU at the best lambda (a bound on what tuning it buys).
SWEEP = tuple(round(0.05 * k, 2) for k in range(1, 20))
# The definition of the scores, part of every cached result's key: raised whenever one of them changes, so
# that no figure computed the old way is read back (2: SSIM as scikit-image computes it, border cropped;
# 3: records carry the mask's lambda sweep).
SCORES_VERSION = 3


class EditJudges:
    """The readers of the scores (module docstring).

    Args:
        classifier: direction-classifier folder (fidelity); None: fidelity unavailable.
        image_encoder: CLIP image encoder source (FID features; the identity encoder's CLIP); None: FID
            (CLIP) and identity unavailable.
        identity_encoder: identity-encoder folder; None: identity unavailable.
        lpips_backbone: AlexNet weights for LPIPS (None: TORCH_HOME's copy if any, else unavailable).
        inception: folder of clean-fid's Inception weights (FID); None: FID unavailable.
        clip_image_size, image_mean, image_std: how images are shown to the CLIP image encoder for features
            (mean / std None: OpenAI's; the mini CLIP reads [-1, 1] images as they are: 0.5 / 0.5).
    """

    def __init__(
        self,
        classifier: str | None = None,
        image_encoder: str | None = None,
        identity_encoder: str | None = None,
        lpips_backbone: str | None = None,
        inception: str | None = None,
        clip_image_size: int = 64,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
    ) -> None:
        self.unavailable: dict[str, str] = {}
        self.classifier = DirectionClassifier.from_pretrained(classifier).eval() if classifier else None
        if self.classifier is None:
            self.unavailable["fidelity"] = "no direction classifier configured (classifier=<folder>)"
        self.clip = (
            load_image_encoder(image_encoder, torch_dtype=torch.float32).eval() if image_encoder else None
        )
        if self.clip is None:
            self.unavailable["fid_clip"] = "no CLIP image encoder configured (image_encoder=<source>)"
        self.identity = IdentityEncoder.from_pretrained(identity_encoder).eval() if identity_encoder else None
        if self.identity is None or self.clip is None:
            self.unavailable["identity"] = "needs identity_encoder=<folder> and its image_encoder"
        try:
            self.lpips: LPIPSMetric | None = LPIPSMetric(lpips_backbone)
        except MetricUnavailable as exc:
            self.lpips = None
            self.unavailable["lpips"] = str(exc)
        try:
            self.inception: InceptionFeatures | None = InceptionFeatures(inception)
        except MetricUnavailable as exc:
            self.inception = None
            self.unavailable["fid"] = str(exc)
        self.view = (
            clip_image_size,
            image_mean or list(OPENAI_CLIP_MEAN),
            image_std or list(OPENAI_CLIP_STD),
        )

    def to(self, device: torch.device | str) -> EditJudges:
        for module in (self.classifier, self.clip, self.identity, self.inception and self.inception.model):
            if module is not None:
                module.to(device)
        return self

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of images in [-1, 1] for each available Frechet distance: "fid" (Inception, (B, 2048))
        and "fid_clip" (CLIP image embeddings, (B, D))."""
        out = {}
        if self.inception is not None:
            out["fid"] = self.inception(images)
        if self.clip is not None:
            out["fid_clip"] = self.clip(pixel_values=clip_pixels(images, *self.view)).image_embeds.float()
        return out

    @staticmethod
    def lambda_sweep(soft: torch.Tensor | None, region: torch.Tensor) -> torch.Tensor | None:
        """IoU (B, len(SWEEP)) of the masks `soft` > lambda against the true regions, for each lambda of
        SWEEP; None without a soft map or where no region is known (validation shards)."""
        if soft is None or not bool((region.flatten(1).min(dim=1).values >= 0).all()):
            return None
        truth = region.to(soft.device).clamp(0, 1)
        return torch.stack([mask_iou((soft > lam).float(), truth) for lam in SWEEP], dim=1)

    @torch.no_grad()
    def scores(
        self,
        edits: torch.Tensor,
        masks: torch.Tensor | None,
        batch: dict,
        labels: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Every score of SCORES for edits (B, 3, H, W) of `batch` (eval_pairs layout); `labels` (B,)
        are the directions' classifier labels. Unavailable scores are absent."""
        source, target, region = batch["source"], batch["target"], batch["region"]
        known = region.flatten(1).min(dim=1).values >= 0  # (B,): the true region is known
        nan = torch.full((len(edits),), float("nan"), device=edits.device)
        out = {
            "ssim": ssim(edits, target),
            "psnr": psnr_per_image(((edits + 1) / 2).clamp(0, 1), ((target + 1) / 2).clamp(0, 1)),
            "preservation": torch.where(known, masked_ssim(edits, source, (1 - region).clamp(0, 1)), nan),
            "mask_iou": nan
            if masks is None
            else torch.where(known, mask_iou(masks, region.clamp(0, 1)), nan),
        }
        if self.lpips is not None:
            out["lpips"] = self.lpips(edits, target)
        if self.classifier is not None:
            out["fidelity"] = (self.classifier.predict_directions(edits) == labels.to(edits.device)).float()
        if self.identity is not None and self.clip is not None:
            a = encode_identity(self.clip, self.identity, edits).flatten(1)
            b = encode_identity(self.clip, self.identity, source).flatten(1)
            out["identity"] = F.cosine_similarity(a, b, dim=1)
        return {k: v.float() for k, v in out.items()}


def best_lambda(items: list[dict], method: str) -> dict[str, float]:
    """{"mask_iou_best": the mean over the items' directions of the mask IoU at the lambda of SWEEP best
    for that direction, and with one direction "lambda_best": that lambda} of `method`'s lambda sweeps
    over `items`; {} when the method made none."""
    sweeps: dict[str, list] = {}
    for item in items:
        sweep = item["methods"][method].get("sweep")
        if sweep is not None:
            sweeps.setdefault(item["direction"], []).append(sweep)
    if not sweeps:
        return {}
    means = {d: np.mean(np.asarray(s, dtype=np.float64), axis=0) for d, s in sweeps.items()}
    out = {"mask_iou_best": float(np.mean([m.max() for m in means.values()]))}
    if len(means) == 1:
        out["lambda_best"] = SWEEP[int(next(iter(means.values())).argmax())]
    return out
