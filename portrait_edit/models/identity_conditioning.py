"""Conditioning of the identity-encoder training (ELITE-style, supplementary 1.1).

The UNet, VAE, text encoder and CLIP image encoder are frozen; only the identity encoder learns. Each face
image is denoised under the prompt `template` ("a photo of a {gender}") with the face's own c_id spliced
right before the gender word: "a photo of a <id_1> <id_2> man".

A batch holds "image" (the face, float (B, 3, H, W) in [-1, 1]) and "gender" (B words, "man" / "woman"),
plus one string per face for every other field the template names (the mini world's faces carry
"expression", so its template "a {gender}, {expression}" says what the face does and c_id need not), and
may carry "reference" (another view of each person: c_id is read from it instead of "image") and a
precomputed "identity_embeds" (B, K, D) (the system computes c_id once per step to penalise
its size, then passes it here).
"""

from __future__ import annotations

import string
from typing import Any

import torch
from torch import nn

from portrait_edit.loading.components import SDComponents, load_image_encoder
from portrait_edit.loading.networks import load_model
from portrait_edit.models.clip_image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from portrait_edit.models.conditioning import Batch, TextConditioning, _freeze, pose_residuals
from portrait_edit.models.identity_encoder import IdentityEncoder, IdentityEncoderConfig, encode_identity
from portrait_edit.models.token_splice import GENDER_WORDS, encode_prompts_with_identity


class IdentityConditioning(TextConditioning):
    """Face -> c_id -> prompt states with c_id spliced before the gender word.

    Args:
        template: the training prompt, with `{gender}` where the gender word goes; any other `{field}` is
            filled per face from the batch's field of that name (e.g. `{expression}`).
        image_encoder: source of the CLIP image encoder (a hub id such as openai/clip-vit-large-patch14, a
            folder, a preset); None: the base's own `image_encoder` part (the mini world ships one).
        encoder: folder of a trained identity encoder to start from (or to use frozen, with
            train_encoder false); None: a new one built from the arguments below and the loaded CLIP widths.
        train_encoder: train the identity encoder (false: it only conditions, e.g. for evaluation).
        num_tokens: K, the words c_id is made of.
        num_heads: attention heads of the decoder layer (must divide the CLIP width).
        mlp_hidden: hidden width of the output MLP.
        clip_layer: the CLIP hidden state the queries read (-1 last, -2 penultimate).
        clip_image_size: side faces are resized to for CLIP (224 ViT-L/14, 64 mini).
        image_mean, image_std: CLIP's pixel normalisation (None: OpenAI's; 0.5 / 0.5 for the mini CLIP).
        caption_dropout: probability of replacing a row's prompt (and its identity) by the null text.
        controlnet: source of a frozen pose ControlNet (a folder such as data/mini, a hub id) fed the batch's
            "pose" drawing; None: none. What the pose explains (where the head is, how it is turned), c_id
            need not carry, as the template's fields explain what they name.
    """

    def __init__(
        self,
        template: str = "a photo of a {gender}",
        image_encoder: str | None = None,
        encoder: str | None = None,
        train_encoder: bool = True,
        num_tokens: int = 2,
        num_heads: int = 8,
        mlp_hidden: int = 1024,
        clip_layer: int = -1,
        clip_image_size: int = 224,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        caption_dropout: float = 0.0,
        controlnet: str | None = None,
    ) -> None:
        super().__init__(caption_dropout=caption_dropout)
        if "{gender}" not in template:
            raise ValueError(f"template {template!r} needs a {{gender}} field (identity words go before it)")
        self.template = template
        self.template_fields = sorted(
            {name for _, name, _, _ in string.Formatter().parse(template) if name} - {"gender"}
        )
        self.image_encoder_source = image_encoder
        # SD parts the system loads for this conditioning (an explicit image encoder is loaded in bind).
        self.parts = ("text_encoder", "tokenizer") + (("image_encoder",) if image_encoder is None else ())
        self.encoder_source = encoder
        self.train_encoder = train_encoder
        self.encoder_args = dict(
            num_tokens=num_tokens,
            num_heads=num_heads,
            mlp_hidden=mlp_hidden,
            clip_layer=clip_layer,
            image_size=clip_image_size,
            image_mean=list(image_mean or OPENAI_CLIP_MEAN),
            image_std=list(image_std or OPENAI_CLIP_STD),
        )
        self.controlnet_source = controlnet
        self.image_encoder: nn.Module | None = None
        self.encoder: IdentityEncoder | None = None
        self.controlnet: nn.Module | None = None

    def bind(self, components: SDComponents) -> None:
        super().bind(components)
        if self.image_encoder_source is not None:
            image_encoder = load_image_encoder(self.image_encoder_source, torch_dtype=torch.float32)
        elif components.image_encoder is None:
            raise ValueError("IdentityConditioning needs the image_encoder part (the CLIP image encoder)")
        else:
            image_encoder = components.image_encoder
        self.image_encoder = _freeze(image_encoder)
        if self.controlnet_source is not None:
            self.controlnet = _freeze(
                load_model("controlnet", self.controlnet_source, torch_dtype=torch.float32)
            )
        if self.encoder_source is None:
            words = self.text_encoder.get_input_embeddings().weight
            config = IdentityEncoderConfig(
                clip_width=self.image_encoder.config.hidden_size,
                word_width=self.text_encoder.config.hidden_size,
                init_output_std=float(words.detach().float().std()),
                **self.encoder_args,
            )
            encoder = IdentityEncoder(config)
        else:
            encoder = IdentityEncoder.from_pretrained(self.encoder_source)
            if encoder.config.word_width != self.text_encoder.config.hidden_size:
                raise ValueError(
                    f"identity encoder {self.encoder_source} makes {encoder.config.word_width}-wide words but "
                    f"the text encoder is {self.text_encoder.config.hidden_size} wide"
                )
        self.encoder = encoder.requires_grad_(self.train_encoder)

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"identity_encoder": self.encoder} if self.train_encoder else {}

    def identity(self, batch: Batch) -> torch.Tensor:
        """c_id of the batch's faces, float (B, K, D): of its "reference" faces where it has them (another
        view of each person, whose c_id conditions the denoising of "image"), else of "image"."""
        return encode_identity(self.image_encoder, self.encoder, batch.get("reference", batch["image"]))

    def prompts(self, batch: Batch) -> list[str]:
        """The training prompt of each face of the batch: the template filled with its gender word and
        its other fields."""
        genders = list(batch["gender"])
        unknown = sorted(set(genders) - set(GENDER_WORDS))
        if unknown:
            raise ValueError(
                f"gender words {unknown} are not {list(GENDER_WORDS)}: give the datamodule gender metadata or "
                "CLIP zero-shot labels"
            )
        missing = [name for name in self.template_fields if name not in batch]
        if missing:
            raise ValueError(
                f"template {self.template!r} names {missing}, which the batch lacks (it has {sorted(batch)}): "
                "use a datamodule that gives them or a template without them"
            )
        fields = {name: list(batch[name]) for name in self.template_fields}
        return [
            self.template.format(gender=g, **{name: values[i] for name, values in fields.items()})
            for i, g in enumerate(genders)
        ]

    def forward(
        self,
        batch: Batch,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        identity = batch["identity_embeds"] if "identity_embeds" in batch else self.identity(batch)
        states = encode_prompts_with_identity(
            self.text_encoder, self.tokenizer, self.prompts(batch), identity
        )
        states = self.dropped(states, generator)
        kwargs = {"sample": noisy_latents, "encoder_hidden_states": states.to(noisy_latents.dtype)}
        if self.controlnet is None:
            return kwargs
        if "pose" not in batch:
            raise ValueError(
                "IdentityConditioning(controlnet=...) needs each face's pose drawing: the batch has no 'pose' "
                "(WorldFacesDataModule(poses=true) gives it)"
            )
        return {**kwargs, **pose_residuals(self.controlnet, kwargs, timesteps, batch["pose"])}
