"""The edit pipeline (paper §3.4, supplementary 1.3): a trained MCDM, its model-made mask and Eq. 3.

A plain class (no Lightning), used by `predict` and by evaluation. Per step of UniPC (20 steps):
    eps(p) = 3-way guidance of e(0,0,0), e(im,0,0), e(im,s,0), e(im,s,p)   (scales 3 / 3 / 5)
    eps_hat = eps(p_b) * M + eps(p_a) * (1 - M)                            (Eq. 3)
eps(p_a) and eps(p_b) share their first three branches, so a step is 5 UNet evaluations, in ONE batched
call. The mask M: E(x_A) noised to the 10th of the 20 timesteps (the paper's; an export may record another
step, `mask_at`) with 10 seeds, one guided prediction under p_a and under p_b for each (all 10 x 5
branch rows in one call, chunked only for memory), then `diffusion.masks.edit_mask`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UniPCMultistepScheduler
from torch import nn

from portrait_edit.diffusion.conditions import CONDITIONS, check_scales, multi_guidance
from portrait_edit.diffusion.masks import (
    MASK_AT,
    combine,
    edit_mask,
    usable_range,
)
from portrait_edit.loading.components import load_components
from portrait_edit.models.mcdm_conditioning import MCDMConditioning
from portrait_edit.models.mcdm_export import MCDMExportSettings

# Drop flags (image, spatial, text) and text of the 5 branches of an edit step: e(0,0,0), e(im,0,0),
# e(im,s,0), e(im,s,p_a), e(im,s,p_b).
EDIT_BRANCHES = (
    ((True, True, True), "p_b"),
    ((False, True, True), "p_b"),
    ((False, False, True), "p_b"),
    ((False, False, False), "p_a"),
    ((False, False, False), "p_b"),
)
SOURCE_BRANCH = 3  # e(im,s,p_a): needed only with the mask


@dataclass
class EditConditions:
    """c_s (N, B, C, h, w) or None and context (N, B, L, D) of N edit branches, and E(x_A) (B, C, h, w)."""

    c_s: torch.Tensor | None
    context: torch.Tensor
    latent: torch.Tensor


@dataclass
class EditResult:
    """images float (B, 3, H, W) in [-1, 1]; masks float (B, H, W) in {0, 1} (None without a mask) and the
    soft map they were cut from, upsampled to the image size."""

    images: torch.Tensor
    masks: torch.Tensor | None
    soft_masks: torch.Tensor | None


def row_noise(shape: tuple[int, ...], seeds: list[int], copies: int | None = None) -> torch.Tensor:
    """Standard normal noise with each row drawn from its own seed, so a row's noise never depends on the
    batch it is in: float (B, *shape), or (copies, B, *shape) with `copies` draws per row."""
    draws = [
        torch.randn((copies or 1, *shape), generator=torch.Generator().manual_seed(int(seed)))
        for seed in seeds
    ]
    noise = torch.stack(draws, dim=1)  # (copies, B, *shape)
    return noise if copies is not None else noise[0]


def row_seeds(seed: int | list[int], count: int) -> list[int]:
    """Per-row seeds: a list as given (one per row), an int for every row."""
    seeds = [int(seed)] * count if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != count:
        raise ValueError(f"need one seed per input ({count}), got {len(seeds)}")
    return seeds


class MCDMEditor:
    """Edits portraits with a trained MCDM.

    Args:
        unet: the MCDM's UNet (widened when the spatial condition is used).
        conditioning: the bound MCDMConditioning (frozen VAE, text and image encoders, trained adapter).
        scales: guidance scales {image, spatial, text}.
        scheduler_config: UniPC configuration (the training noise schedule).
        max_rows: the most rows one UNet call may take (the mask's 10 seeds x 5 branches x B are chunked
            above it); None: no limit.
        mask_at: the edits' default share of the sampling timesteps E(x_A) is noised to for the mask (the
            paper's 0.5; an export records its own in mcdm.json).
        mask_range: the lambdas whose masks are neither empty nor everything on calibration portraits
            (`measure_mask_range`; mcdm.json's "mask_range"); None: not measured, (0, 1).
    """

    def __init__(
        self,
        unet: nn.Module,
        conditioning: MCDMConditioning,
        scales: dict[str, float],
        scheduler_config: dict,
        max_rows: int | None = None,
        mask_at: float = MASK_AT,
        mask_range: tuple[float, float] | None = None,
    ) -> None:
        self.unet = unet.eval()
        self.conditioning = conditioning.eval()
        self.scales = check_scales(scales, complete=True)
        self.mask_range = tuple(mask_range) if mask_range is not None else None
        self.scheduler_config = dict(scheduler_config)
        self.max_rows = max_rows
        self.mask_at = mask_at
        self.unet_calls = 0  # UNet evaluations (calls), counted for tests and benchmarks

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"
    ) -> MCDMEditor:
        """Load an MCDM export (systems/mcdm.py: unet/, image_adapter/, vae/, text_encoder/, tokenizer/,
        image_encoder/, scheduler/, mcdm.json)."""
        folder = Path(folder)
        s = MCDMExportSettings.load(folder)
        conditioning = s.conditioning(folder)
        parts = ("vae", "unet", *conditioning.parts)
        components = load_components(str(folder), parts=parts, torch_dtype=dtype)
        conditioning.bind(components)
        scheduler = UniPCMultistepScheduler.load_config(folder / "scheduler")
        editor = cls.from_settings(components.unet, conditioning.to(dtype), dict(scheduler), s)
        editor.unet.to(device)
        editor.conditioning.to(device)
        components.vae.to(device)
        return editor

    @classmethod
    def from_settings(
        cls,
        unet: nn.Module,
        conditioning: MCDMConditioning,
        scheduler_config: dict,
        settings: MCDMExportSettings,
    ) -> MCDMEditor:
        """The editor of an export's (bound) parts and its mcdm.json `settings` (scales, mask_at, mask_range)."""
        return cls(
            unet, conditioning, settings.scales, scheduler_config, mask_at=settings.mask_at,
            mask_range=settings.mask_range,
        )  # fmt: skip

    @torch.no_grad()
    def measure_mask_range(
        self, sources: torch.Tensor, p_a: list[str], p_b: list[str], seeds: list[int], steps: int = 20,
        mask_seeds: int = 10,
    ) -> tuple[float, float]:  # fmt: skip
        """The usable lambdas on calibration portraits (B, 3, H, W) and prompts, with the editor's scales
        and mask_at: (highest minimum, lowest peak) of their soft maps (`diffusion.masks.usable_range`)."""
        conditions = self.branch_conditions(sources, p_a, p_b, with_source=True)
        _, soft = self.mask(conditions, 0.5, mask_seeds, steps, self.mask_at, [s + 1 for s in seeds])
        return usable_range(soft)

    @property
    def vae(self) -> nn.Module:
        return self.conditioning._vae[0]

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def scheduler(self, steps: int) -> UniPCMultistepScheduler:
        scheduler = UniPCMultistepScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

    @torch.no_grad()
    def branch_conditions(
        self, sources: torch.Tensor, p_a: list[str], p_b: list[str], with_source: bool = True
    ) -> EditConditions:
        """The conditions of the edit branches (EDIT_BRANCHES; without the e(im,s,p_a) one when
        `with_source` is False: an edit without a mask never uses eps(p_a)). x_A is encoded once here."""
        c = self.conditioning
        latent, clip, size = c.batch_sources({"source": sources.to(self.device)})
        branches = [b for k, b in enumerate(EDIT_BRANCHES) if with_source or k != SOURCE_BRANCH]
        count = len(latent)
        texts = {"p_a": c.cached_text(list(p_a)), "p_b": c.cached_text(list(p_b))}
        drop = {
            name: torch.tensor([flags[i] for flags, _ in branches for _ in range(count)])
            for i, name in enumerate(CONDITIONS)
        }
        text = torch.cat([texts[which] for _, which in branches])

        def rep(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.repeat(len(branches), *([1] * (x.ndim - 1)))

        c_s, context = c.conditions(rep(latent), rep(clip), text, size, drop)
        split = (len(branches), count)
        c_s = None if c_s is None else c_s.reshape(*split, *c_s.shape[1:])
        return EditConditions(c_s, context.reshape(*split, *context.shape[1:]), latent)

    def guided_eps(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        conditions: EditConditions,
        scales: dict[str, float] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """eps(p_a) (None without the source branch) and eps(p_b) (3-way guidance with `scales`, None: the
        editor's) of latents z (R, C, h, w) whose rows are S copies of the B inputs (seed-major: R = S * B):
        all branch rows in one UNet call (chunked above max_rows)."""
        c_s, context = conditions.c_s, conditions.context
        branches, count = context.shape[:2]
        copies = len(z) // count

        def tiled(x: torch.Tensor) -> torch.Tensor:  # (N, B, ...) -> (N * S * B, ...), seed-major per branch
            return x[:, None].expand(branches, copies, *x.shape[1:]).reshape(-1, *x.shape[2:])

        sample = z.repeat(branches, 1, 1, 1)
        if c_s is not None:
            sample = torch.cat([sample, tiled(c_s).to(sample)], dim=1)
        sample = sample.to(self.unet.dtype)  # float32 latents into a bf16 / fp16 UNet
        states = tiled(context).to(sample)
        step = len(sample) if self.max_rows is None else self.max_rows
        outputs = []
        for start in range(0, len(sample), step):
            self.unet_calls += 1
            outputs.append(
                self.unet(
                    sample[start : start + step], t, encoder_hidden_states=states[start : start + step]
                ).sample
            )
        e_none, e_image, e_spatial, *e_text = torch.cat(outputs).float().chunk(branches)
        weights = [(scales or self.scales)[k] for k in CONDITIONS]
        guided = [multi_guidance(e_none, e_image, e_spatial, e, *weights) for e in e_text]
        return (guided[0], guided[1]) if len(guided) == 2 else (None, guided[0])

    @torch.no_grad()
    def mask(
        self,
        conditions: EditConditions,
        threshold: float | torch.Tensor,
        seeds: int = 10,
        steps: int = 20,
        mask_at: float = MASK_AT,
        seed: int | list[int] = 0,
        scales: dict[str, float] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The edit mask M and its soft map, float (B, h, w) at latent resolution.

        E(x_A) is noised to the timestep `mask_at` of the way through the `steps` UniPC timesteps (0.5 of
        20: the 10th) with `seeds` noises per input (drawn from the input's `seed`: one int for all, or
        one per input), and the guided predictions under p_a and p_b (`conditions` with the source
        branch) are compared."""
        if not 0 < mask_at <= 1:
            raise ValueError(f"mask_at must be in (0, 1], got {mask_at}")
        latent = conditions.latent
        scheduler = self.scheduler(steps)
        t = scheduler.timesteps[math.ceil(mask_at * steps) - 1]
        noise = row_noise(tuple(latent.shape[1:]), row_seeds(seed, len(latent)), copies=seeds).to(latent)
        noisy = scheduler.add_noise(latent.repeat(seeds, 1, 1, 1), noise.flatten(0, 1), t.reshape(1))
        eps_a, eps_b = self.guided_eps(noisy, t, conditions, scales)
        return edit_mask(eps_a, eps_b, seeds, threshold)

    @torch.no_grad()
    def edit(
        self,
        sources: torch.Tensor,
        p_a: list[str],
        p_b: list[str],
        threshold: float | list[float] = 0.2,
        use_mask: bool = True,
        steps: int = 20,
        seed: int | list[int] = 0,
        mask_seeds: int = 10,
        mask_at: float | None = None,
        keep_source: bool = False,
        mask: torch.Tensor | None = None,
        scales: dict[str, float] | None = None,
    ) -> EditResult:
        """Edit sources (B, 3, H, W) in [-1, 1] from p_a toward p_b.

        Args:
            threshold: lambda of the mask (0.2 costume, 0.35 cartoon expression): one for every input, or
                one per input.
            use_mask: Eq. 3 with the model-made mask (5 branch rows a step); False: eps(p_b) alone (the
                "w/o mask" ablation, 4 rows a step).
            steps: UniPC steps (20 in the paper).
            seed: seeds each input's sampling noise z_T (and its mask noises, with seed + 1): one int for
                every input, or one per input; an input's edit never depends on the batch it is in.
            mask_at: the share of the timesteps E(x_A) is noised to for the mask; None: the editor's.
            keep_source: past the paper (Blended Latent Diffusion): after every step the latents outside M
                are set back to E(x_A) noised to the step's next timestep (one fixed noise per input, drawn
                with seed + 2), and to E(x_A) itself after the last, so the edit keeps x_A's VAE round trip
                outside the mask. Needs use_mask.
            mask: M (B, h, w) at latent resolution, already made for these inputs (an earlier result's
                `masks[:, ::f, ::f]`, f the VAE's scale factor), used instead of making it again; needs
                use_mask (the result's soft_masks are then None).
            scales: guidance scales {image, spatial, text}, any of them (None: the editor's, the export's).
        """
        if keep_source and not use_mask:
            raise ValueError("keep_source keeps x_A outside the mask: it needs use_mask=True")
        if mask is not None and not use_mask:
            raise ValueError("a given mask is for an edit with use_mask=True")
        conditions = self.branch_conditions(sources, p_a, p_b, with_source=use_mask)
        if mask is not None and tuple(mask.shape) != (len(sources), *conditions.latent.shape[-2:]):
            raise ValueError(
                f"the given mask is {tuple(mask.shape)}; it must be (B, h, w) = "
                f"{(len(sources), *conditions.latent.shape[-2:])}, at latent resolution"
            )
        scales = {**self.scales, **check_scales(scales or {})}
        soft = None
        seeds = row_seeds(seed, len(sources))
        lambdas = torch.as_tensor(threshold, dtype=torch.float32)
        if lambdas.ndim > 1 or (lambdas.ndim == 1 and len(lambdas) != len(sources)):
            raise ValueError(f"need one lambda, or one per input ({len(sources)}); got {threshold}")
        if use_mask and mask is None:
            at = self.mask_at if mask_at is None else mask_at
            mask, soft = self.mask(conditions, lambdas, mask_seeds, steps, at, [s + 1 for s in seeds], scales)
        scheduler = self.scheduler(steps)
        noise = row_noise(tuple(conditions.latent.shape[1:]), seeds)
        z = noise.to(conditions.latent) * scheduler.init_noise_sigma
        if keep_source:
            source = conditions.latent.to(z)
            source_noise = row_noise(tuple(source.shape[1:]), [s + 2 for s in seeds]).to(z)
            outside = 1 - mask.to(z)[:, None]
        timesteps = scheduler.timesteps
        for i, t in enumerate(timesteps):
            eps_a, eps_b = self.guided_eps(z, t, conditions, scales)
            eps = combine(eps_a, eps_b, mask) if mask is not None else eps_b
            z = scheduler.step(eps.to(z), t, z).prev_sample
            if keep_source:
                kept = (
                    scheduler.add_noise(source, source_noise, timesteps[i + 1 : i + 2])
                    if i + 1 < len(timesteps)
                    else source
                )
                z = z * (1 - outside) + kept * outside
        images = (
            self.vae.decode((z / self.vae.config.scaling_factor).to(self.vae.dtype))
            .sample.float()
            .clamp(-1, 1)
        )
        size = tuple(images.shape[-2:])

        def upsampled(m: torch.Tensor | None) -> torch.Tensor | None:
            return None if m is None else F.interpolate(m[:, None], size=size, mode="nearest")[:, 0]

        return EditResult(images, upsampled(mask), upsampled(soft))
