"""Identity-token splicing: hand-built sequences, the tokenizer's gender positions, and the text encoder run
on embeddings against its own forward on ids."""

import copy

import pytest
import torch
from torch.testing import assert_close

from portrait_edit.models.token_splice import (
    encode_prompts_with_identity,
    encode_token_embeddings,
    gender_positions,
    gender_token_ids,
    splice_embeddings,
)


def test_splice_matches_a_hand_built_sequence():
    # Row 0: tokens 0..7 with the insertion before index 3; row 1: before index 5. Values = token index,
    # the inserted words -1 / -2 (row 0) and -3 / -4 (row 1); the last K=2 entries fall off.
    L, D = 8, 3
    tokens = torch.arange(L, dtype=torch.float32)[None, :, None].expand(2, L, D).clone()
    inserted = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])[:, :, None].expand(2, 2, D)
    out = splice_embeddings(tokens, torch.tensor([3, 5]), inserted)
    expected = torch.tensor([[0, 1, 2, -1, -2, 3, 4, 5], [0, 1, 2, 3, 4, -3, -4, 5]], dtype=torch.float32)
    assert_close(out, expected[:, :, None].expand(2, L, D))


def test_splice_passes_gradients_to_the_inserted_words_only_where_they_land():
    tokens = torch.randn(1, 6, 4)
    inserted = torch.randn(1, 2, 4, requires_grad=True)
    out = splice_embeddings(tokens, torch.tensor([1]), inserted)
    out[:, 2].sum().backward()  # output index 2 = the second inserted word
    assert_close(inserted.grad, torch.tensor([[[0.0] * 4, [1.0] * 4]]))


def test_splice_rejects_bad_positions_and_prompts_it_would_cut():
    tokens, inserted = torch.zeros(1, 6, 2), torch.zeros(1, 2, 2)
    with pytest.raises(ValueError, match=r"\[0, L - K\]"):
        splice_embeddings(tokens, torch.tensor([5]), inserted)
    with pytest.raises(ValueError, match="too long"):
        splice_embeddings(tokens, torch.tensor([1]), inserted, lengths=torch.tensor([5]))


def test_gender_positions_with_the_clip_tokenizer(clip_tokenizer):
    ids = clip_tokenizer(
        ["a photo of a man", "a woman, santa claus costume", "the same woman on the left and right"],
        padding="max_length",
        max_length=77,
        return_tensors="pt",
    ).input_ids
    # BOS a photo of a man -> index 5; BOS a woman -> 2; BOS the same woman -> 3.
    assert gender_positions(ids, gender_token_ids(clip_tokenizer)).tolist() == [5, 2, 3]
    with pytest.raises(ValueError, match="no gender word"):
        gender_positions(clip_tokenizer(["a photo of a person"], return_tensors="pt").input_ids, [1, 2])


def test_text_encoder_on_embeddings_equals_its_forward_on_ids(tiny_sd, clip_tokenizer):
    text = tiny_sd.text_encoder
    ids = clip_tokenizer(
        ["a photo of a man", "a woman"], padding="max_length", max_length=77, return_tensors="pt"
    )
    with torch.no_grad():
        expected = text(ids.input_ids).last_hidden_state
        got = encode_token_embeddings(text, text.get_input_embeddings()(ids.input_ids))
    assert_close(got, expected)


def test_prompts_with_identity_equal_the_hand_spliced_sequence(tiny_sd, clip_tokenizer):
    text = copy.deepcopy(tiny_sd.text_encoder).requires_grad_(False)
    width = text.config.hidden_size
    identity = torch.randn(2, 2, width, requires_grad=True)
    prompts = ["a photo of a man", "a woman, angry"]
    states = encode_prompts_with_identity(text, clip_tokenizer, prompts, identity)
    table = text.get_input_embeddings().weight
    expected_rows = []
    for row, prompt in enumerate(prompts):
        ids = clip_tokenizer(prompt, padding="max_length", max_length=77).input_ids
        cut = 5 if row == 0 else 2  # the gender word's index
        seq = torch.cat([table[ids[:cut]], identity[row].detach(), table[ids[cut:]]])[:77]
        expected_rows.append(seq)
    with torch.no_grad():
        expected = encode_token_embeddings(text, torch.stack(expected_rows))
    assert_close(states.detach(), expected)
    states.sum().backward()  # frozen text encoder, gradients still reach c_id
    assert identity.grad is not None and identity.grad.abs().sum() > 0
