"""Identity tokens in a prompt: K learned word embeddings spliced right before the gender word.

The identity encoder turns a face into K "new words" (supplementary 1.1). They enter the CLIP text encoder
at the token-embedding level, right before the gender word [X] of each prompt ("a photo of a <id> man",
"a <id> woman, santa claus costume"), shifting the rest of the sequence (EOS and padding) right by K; the
last K positions (padding) fall off so the sequence keeps its length (77 for SD).

1. `gender_positions(input_ids, gender_ids)`: index of the first gender word of each row.
2. `splice_embeddings(token_embeds, positions, inserted)`: the pure splice, differentiable in `inserted`.
3. `encode_token_embeddings(text_encoder, inputs_embeds)`: the CLIP text encoder run on embeddings instead
   of ids (transformers' CLIPTextModel.forward takes ids only), its last hidden states being what the
   UNet's cross-attention reads.
"""

from __future__ import annotations

import torch
from transformers import CLIPTextModel
from transformers.masking_utils import create_causal_mask

GENDER_WORDS = ("man", "woman")


def gender_token_ids(tokenizer, words: tuple[str, ...] = GENDER_WORDS) -> list[int]:
    """The token id of each gender word, as it is tokenized inside a prompt ("man" -> "man</w>").

    Raises:
        ValueError: a word that is not a single token of this tokenizer.
    """
    ids = []
    for word in words:
        pieces = tokenizer(word, add_special_tokens=False).input_ids
        if len(pieces) != 1:
            raise ValueError(f"gender word {word!r} is {len(pieces)} tokens for this tokenizer; need one")
        ids.append(pieces[0])
    return ids


def gender_positions(input_ids: torch.Tensor, gender_ids: list[int] | torch.Tensor) -> torch.Tensor:
    """Position of the first gender word in each row.

    Args:
        input_ids: long (B, L) token ids.
        gender_ids: the gender words' token ids (`gender_token_ids`).

    Returns:
        long (B,).

    Raises:
        ValueError: a row without a gender word (identity tokens go right before it, so every prompt that
            carries them must name the gender: "a photo of a man", "a woman, angry").
    """
    hits = torch.isin(input_ids, torch.as_tensor(gender_ids, device=input_ids.device))
    missing = ~hits.any(dim=1)
    if missing.any():
        raise ValueError(
            f"prompt rows {missing.nonzero().flatten().tolist()} have no gender word {list(GENDER_WORDS)}; "
            "identity tokens are spliced right before it, so write the gender into every such prompt"
        )
    return hits.int().argmax(dim=1)  # argmax of a 0/1 row: its first 1


def splice_embeddings(
    token_embeds: torch.Tensor,
    positions: torch.Tensor,
    inserted: torch.Tensor,
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Insert `inserted[b]` into row b of `token_embeds` right before index `positions[b]`.

    out[b] = concat(token_embeds[b, :p], inserted[b], token_embeds[b, p:])[:L] with p = positions[b]: the
    sequence keeps its length L, the last K entries (padding) are dropped.

    Args:
        token_embeds: float (B, L, D) input embeddings (token embeddings, before position embeddings).
        positions: long (B,) in [0, L - K].
        inserted: float (B, K, D), same dtype; gradients flow to it.
        lengths: optional long (B,), each row's real length (BOS .. EOS); a row whose EOS would be pushed
            out (length + K > L) raises instead of silently losing the end of the prompt.

    Returns:
        float (B, L, D).
    """
    batch, length, width = token_embeds.shape
    k = inserted.shape[1]
    if inserted.shape != (batch, k, width) or positions.shape != (batch,):
        raise ValueError(
            f"need token_embeds (B, L, D), positions (B,), inserted (B, K, D); got {tuple(token_embeds.shape)}, "
            f"{tuple(positions.shape)}, {tuple(inserted.shape)}"
        )
    if (positions < 0).any() or (positions > length - k).any():
        raise ValueError(f"positions must be in [0, L - K] = [0, {length - k}]; got {positions.tolist()}")
    if lengths is not None and (lengths + k > length).any():
        raise ValueError(
            f"prompt too long for {k} identity tokens: real lengths {lengths.tolist()} + {k} exceed {length}"
        )
    j = torch.arange(length, device=token_embeds.device)[None, :]  # (1, L) output index
    p = positions.to(token_embeds.device)[:, None]  # (B, 1)
    in_slot = (j >= p) & (j < p + k)  # (B, L): output entries taken from `inserted`
    source = torch.where(j < p, j, j - k).clamp(min=0)  # (B, L): index into token_embeds elsewhere
    slot = (j - p).clamp(0, k - 1)  # (B, L): index into inserted inside the slot
    kept = token_embeds.gather(1, source[..., None].expand(-1, -1, width))
    new = inserted.gather(1, slot[..., None].expand(-1, -1, width))
    return torch.where(in_slot[..., None], new, kept)


def encode_token_embeddings(text_encoder: CLIPTextModel, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """CLIPTextModel's forward from input embeddings: + position embeddings -> causal transformer ->
    final LayerNorm.

    Args:
        text_encoder: a transformers CLIPTextModel.
        inputs_embeds: float (B, L, D), e.g. `text_encoder.get_input_embeddings()(ids)` with identity tokens
            spliced in.

    Returns:
        float (B, L, D) last hidden states (equal to `text_encoder(ids).last_hidden_state` when
        `inputs_embeds` is the token embedding of `ids`).
    """
    hidden = text_encoder.embeddings(inputs_embeds=inputs_embeds)
    mask = create_causal_mask(
        config=text_encoder.config, inputs_embeds=hidden, attention_mask=None, past_key_values=None
    )
    out = text_encoder.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True)
    return text_encoder.final_layer_norm(out.last_hidden_state)


def encode_prompts_with_identity(
    text_encoder: CLIPTextModel, tokenizer, prompts: list[str], identity: torch.Tensor
) -> torch.Tensor:
    """Text-encoder states of `prompts` with each row's identity words spliced before its gender word.

    Args:
        text_encoder: CLIPTextModel; gradients flow through it to `identity` (its weights may be frozen).
        tokenizer: its CLIPTokenizer (prompts padded to model_max_length, as diffusers' pipelines do).
        prompts: B prompts, each naming a gender ("a photo of a woman").
        identity: float (B, K, D) identity word embeddings (c_id), D the text encoder's width.

    Returns:
        float (B, L, D) last hidden states, L = tokenizer.model_max_length: the `encoder_hidden_states`
        (or a pipeline's `prompt_embeds`) of the identity-conditioned prompts.
    """
    ids = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(text_encoder.device)
    positions = gender_positions(ids, gender_token_ids(tokenizer))
    lengths = (ids == tokenizer.eos_token_id).int().argmax(dim=1) + 1  # BOS .. first EOS
    embeds = text_encoder.get_input_embeddings()(ids)
    spliced = splice_embeddings(embeds, positions, identity.to(embeds), lengths)
    return encode_token_embeddings(text_encoder, spliced)
