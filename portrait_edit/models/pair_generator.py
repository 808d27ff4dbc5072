"""Paired data generation (paper §3.2, supplementary 1.1): x_A and x_B side by side on one H x 2W canvas.

One denoising run makes both images: the latent is h x 2w, the pose ControlNet sees the same pose drawn on
both halves, and every step combines four text conditions with Eq. 2 (diffusion/composable.py): the
shared prompt p over the canvas, p_a on the left, p_b on the right, all guided against one null branch.
The identity words c_id of a face are spliced before the gender word of p, p_a and p_b, so both halves
show that person. Sampling is the stochastic Karras (EDM) sampler (diffusion/edm.py), 20 steps.

Every evaluation of the model is ONE batched UNet (+ ControlNet) call over the 4 branches
(`branch_eps`), and each sample's noise comes from its own generator, so a pair depends on its seed
alone, not on its batch.

Past the paper, `generate(..., mask_thresholds=...)` confines the edit: with twin noise and the source
drawn alone, the right half is set back to the left half's latent, before every step, outside a mask of
where p_b's prediction differs from p_a's on the right half (the editing mask of diffusion/masks.py, read
from the sampling run itself and averaged over its steps), so x_B differs from x_A where the edit acts.
`generate(..., source=...)` (also past the paper) does not draw x_A: the left half is a given image's latent
(a real portrait) at every step, and x_B is drawn beside it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from portrait_edit.diffusion.composable import (
    BRANCHES,
    composable_eps,
    source_alone_eps,
    split_branches,
    stack_branches,
)
from portrait_edit.diffusion.edm import edm_sample, eps_denoiser, karras_sigmas, twin_halves, vp_sigmas
from portrait_edit.diffusion.masks import cut_mask, normalise, prediction_difference
from portrait_edit.diffusion.noise import alphas_cumprod_from_betas, scaled_linear_betas
from portrait_edit.models.identity_encoder import IdentityEncoder, encode_identity
from portrait_edit.models.token_splice import encode_prompts_with_identity


class PairGenerator(nn.Module):
    """Frozen SD parts (+ pose ControlNet, + identity encoder) that draw pairs.

    Args:
        vae, unet, text_encoder, tokenizer: the base model's parts.
        controlnet: OpenPose ControlNet; None draws without a pose (the "no pose" ablation).
        image_encoder, identity_encoder: CLIP image encoder and trained identity encoder; None draws
            without identity words (the "no identity" ablation).
        guidance: classifier-free guidance scale of each of the three guided predictions.
        s_d, s_a, s_b: Eq. 2 weights of p (whole canvas), p_a (left) and p_b (right).
        steps: EDM sampling steps.
        s_churn, s_tmin, s_tmax, s_noise: EDM stochasticity (the defaults are KarrasVeScheduler's).
        heun: Heun's second-order correction (Algorithm 2 as written: 2 evaluations a step but the last).
        twin_noise: the canvas's right half gets the same noise as its left half (z_T and every churn
            noise), so the halves differ only by what the prompts and their Eq. 2 weights make them do.
            False (the paper): independent noise, the base model's own prior keeps the halves alike.
        source_alone: draw the left half alone (its own UNet call over the left half, p_a only) while the
            right half keeps Eq. 2 over the canvas: x_A is an ordinary sample of p_a that x_B sees at
            every step, and the edit cannot leak into it (a base that never saw two-person canvases
            dresses x_A in the costume's colours otherwise). False (the paper): Eq. 2 on both halves.
    """

    def __init__(
        self,
        vae: nn.Module,
        unet: nn.Module,
        text_encoder: nn.Module,
        tokenizer: Any,
        controlnet: nn.Module | None = None,
        image_encoder: nn.Module | None = None,
        identity_encoder: IdentityEncoder | None = None,
        guidance: float = 7.5,
        s_d: float = 0.1,
        s_a: float = 0.9,
        s_b: float = 0.9,
        steps: int = 20,
        s_churn: float = 80.0,
        s_tmin: float = 0.05,
        s_tmax: float = 50.0,
        s_noise: float = 1.007,
        heun: bool = True,
        twin_noise: bool = False,
        source_alone: bool = False,
    ) -> None:
        super().__init__()
        if (image_encoder is None) != (identity_encoder is None):
            raise ValueError("give both the CLIP image encoder and the identity encoder, or neither")
        self.vae, self.unet, self.text_encoder, self.tokenizer = vae, unet, text_encoder, tokenizer
        self.controlnet, self.image_encoder, self.identity_encoder = (
            controlnet,
            image_encoder,
            identity_encoder,
        )
        self.settings = dict(guidance=guidance, s_d=s_d, s_a=s_a, s_b=s_b)
        self.sampler = dict(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise, heun=heun)
        self.steps = steps
        self.twin_noise = twin_noise
        self.source_alone = source_alone
        self.register_buffer(
            "table", vp_sigmas(alphas_cumprod_from_betas(scaled_linear_betas())), persistent=False
        )
        self.requires_grad_(False).eval()

    @property
    def uses_identity(self) -> bool:
        return self.identity_encoder is not None

    def identity(self, faces: torch.Tensor) -> torch.Tensor:
        """c_id of faces float (B, 3, H, W) in [-1, 1]: (B, K, D)."""
        if self.identity_encoder is None:
            raise ValueError("this generator has no identity encoder")
        return encode_identity(self.image_encoder, self.identity_encoder, faces)

    def text_states(
        self, prompts: dict[str, list[str]], identity: torch.Tensor | None, use: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """{branch: (B or 1, L, D)}: p, p_a, p_b and the null text "" (no identity: the unconditional
        branch TextConditioning trained).

        Args:
            prompts: {"p", "p_a", "p_b": B prompts each}.
            identity: c_id (B, K, D) spliced before each prompt's gender word, or None.
            use: bool (B,): rows that get their c_id (None: all); the others are encoded as written
                (validation pairs with a description instead of identity words).
        """
        out = {}
        for name in ("p", "p_a", "p_b"):
            ids = self.tokenizer(
                prompts[name], padding="max_length", max_length=self.tokenizer.model_max_length,
                truncation=True, return_tensors="pt",
            ).input_ids.to(self.text_encoder.device)  # fmt: skip
            out[name] = self.text_encoder(ids)[0]
            rows = torch.ones(len(ids), dtype=torch.bool) if use is None else use.cpu().bool()
            if identity is not None and rows.any():
                picked = [text for text, keep in zip(prompts[name], rows.tolist()) if keep]
                spliced = encode_prompts_with_identity(
                    self.text_encoder, self.tokenizer, picked, identity[rows.to(identity.device)]
                )
                out[name] = out[name].clone()
                out[name][rows.to(out[name].device)] = spliced
        null = self.tokenizer(
            [""], padding="max_length", max_length=self.tokenizer.model_max_length, return_tensors="pt"
        )
        out["null"] = self.text_encoder(null.input_ids.to(self.text_encoder.device))[0]
        return out

    def branch_eps(
        self,
        x_vp: torch.Tensor,
        timesteps: torch.Tensor,
        states: dict[str, torch.Tensor],
        pose: torch.Tensor | None,
        prompt_effect: dict | None = None,
        draw_left: bool = True,
    ) -> torch.Tensor:
        """eps_bar (B, C, h, 2w) of Eq. 2 from ONE batched call over the 4 branches (source_alone: one call
        over the canvas's null, p and p_b branches and one over the left half's null and p_a); without the p
        branch where s_d is 0.

        Args:
            x_vp: VP-scaled canvas latents (B, C, h, 2w).
            timesteps: float (B,) (fractional SD timesteps).
            states: `text_states` output.
            pose: the pose drawn on both halves, float (B, 3, H, 2W) in [0, 1], or None.
            prompt_effect: given, the canvas call has a p_a row (one more with source_alone) and this dict
                gets "effect": channel-mean |e(p_b) - e(p_a)| on the right half (B, h, w), where the edit acts.
            draw_left: False (source_alone only) skips the left half's call; its eps is then zero, for a
                caller that replaces the left half's prediction (`generate`'s source).
        """
        # With s_d = 0, Eq. 2 weighs e~(p) by zero: its rows are left out of the call (e(p) := e(null)).
        canvas = ("null", "p", "p_b") if self.source_alone else BRANCHES
        if self.settings["s_d"] == 0:
            canvas = tuple(name for name in canvas if name != "p")
        if prompt_effect is not None and "p_a" not in canvas:
            canvas += ("p_a",)
        e = self.unet_branches(x_vp, timesteps, states, pose, canvas)
        if prompt_effect is not None:
            half = x_vp.shape[-1] // 2
            prompt_effect["effect"] = prediction_difference(e["p_a"][..., half:], e["p_b"][..., half:], 1)
        e_p = e.get("p", e["null"])
        if not self.source_alone:
            return composable_eps(e["null"], e_p, e["p_a"], e["p_b"], **self.settings)
        half = x_vp.shape[-1] // 2
        if draw_left:
            left = self.unet_branches(
                x_vp[..., :half], timesteps, states, None if pose is None else pose[..., : pose.shape[-1] // 2],
                ("null", "p_a"),
            )  # fmt: skip
        else:
            left = dict.fromkeys(("null", "p_a"), torch.zeros_like(e["null"][..., :half]))
        settings = {k: v for k, v in self.settings.items() if k != "s_a"}
        return source_alone_eps(e["null"], e_p, e["p_b"], left["null"], left["p_a"], **settings)

    def unet_branches(
        self,
        x_vp: torch.Tensor,
        timesteps: torch.Tensor,
        states: dict[str, torch.Tensor],
        pose: torch.Tensor | None,
        branches: tuple[str, ...],
    ) -> dict[str, torch.Tensor]:
        """{branch: eps (B, C, h, w')} of ONE batched UNet (+ ControlNet) call over `branches`."""
        dtype = self.unet.dtype
        x, s = stack_branches(x_vp.to(dtype), {k: v.to(dtype) for k, v in states.items()}, branches)
        t = timesteps.to(dtype).repeat(len(branches))
        kwargs: dict[str, Any] = {}
        if self.controlnet is not None and pose is not None:
            down, mid = self.controlnet(
                x, t, encoder_hidden_states=s, controlnet_cond=pose.to(dtype).repeat(len(branches), 1, 1, 1),
                return_dict=False,
            )  # fmt: skip
            kwargs = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        return split_branches(self.unet(x, t, encoder_hidden_states=s, **kwargs).sample.float(), branches)

    @torch.no_grad()
    def generate(
        self,
        states: dict[str, torch.Tensor],
        noise: torch.Tensor,
        generators: list[torch.Generator],
        pose: torch.Tensor | None = None,
        mask_thresholds: torch.Tensor | None = None,
        source: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Canvas images float (B, 3, H, 2W) in [-1, 1].

        Args:
            states: `text_states` output.
            noise: standard normal canvas latents (B, C, h, 2w), float32, one per sample's own generator.
            generators: per-sample generators for the sampler's churn noise.
            pose: float (B, 3, H, 2W) in [0, 1] (the pose drawn on both halves) or None.
            mask_thresholds: float (B,) or None. Given (an option past the paper), the right half keeps the
                left half's latent outside a mask of where p_b's prediction differs from p_a's on the right
                half (`edit_mask_blend`, the map averaged over the steps so far), applied before every step
                but the first and once more to the result. Needs twin_noise and source_alone; one more UNet
                row per evaluation (p_a on the canvas).
            source: float (B, C, h, w) or None. Given (an option past the paper), x_A is not drawn: the
                denoiser's left half is this clean latent (a real x_A's scaled VAE latent) at every step, so
                the left half is it plus the canvas's noise and ends exactly at it, and the right half is
                drawn beside it (and, with mask_thresholds, keeps it outside the mask). Needs twin_noise and
                source_alone; the left half's UNet call is skipped.
        """
        for name, given in (("mask_thresholds", mask_thresholds), ("source", source)):
            if given is not None and not (self.twin_noise and self.source_alone):
                raise ValueError(f"{name} needs twin_noise and source_alone (the halves share their noise)")
        last, maps = {}, []

        def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            effect = None if mask_thresholds is None else last
            return self.branch_eps(x, t, states, pose, effect, draw_left=source is None)

        denoise = eps_denoiser(eps, self.table)
        if source is not None:
            drawn = denoise

            def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
                d = drawn(x, sigma)
                return torch.cat([source.to(d), d[..., source.shape[-1] :]], dim=-1)

        def blend(x: torch.Tensor) -> torch.Tensor:  # each step's map normalised: their scales differ
            maps.append(normalise(last["effect"]))
            return edit_mask_blend(x, torch.stack(maps).mean(dim=0), mask_thresholds)

        def at_step(i: int, x: torch.Tensor) -> torch.Tensor:
            return x if mask_thresholds is None or "effect" not in last else blend(x)

        sigmas = karras_sigmas(self.steps, float(self.table[0]), float(self.table[-1]))
        tie = twin_halves if self.twin_noise else None
        noise = noise.double() if tie is None else tie(noise.double())
        latents = edm_sample(
            denoise, noise, sigmas, generators, **self.sampler, noise_map=tie, on_step=at_step
        )
        if mask_thresholds is not None:
            latents = blend(latents)
        latents = (latents / self.vae.config.scaling_factor).to(self.vae.dtype)
        return self.vae.decode(latents).sample.float().clamp(-1, 1)


def edit_mask_blend(x: torch.Tensor, effect: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """The canvas x (B, C, h, 2w) with its right half set to its left half outside the edit mask
    M = `cut_mask`(effect, thresholds) (diffusion/masks.py: normalise, blur 5, > lambda per row).

    Args:
        x: canvas latents whose halves share their noise (twin noise).
        effect: float (B, h, w), where the edit acts on the right half: the mean over the steps so far of
            the normalised channel-mean |e(p_b) - e(p_a)| (`branch_eps`'s prompt_effect).
        thresholds: float (B,), the mask's lambda per row.
    """
    half = x.shape[-1] // 2
    keep = cut_mask(effect, thresholds)[0].to(x.dtype)[:, None]
    left, right = x[..., :half], x[..., half:]
    return torch.cat([left, right * keep + left * (1 - keep)], dim=-1)
