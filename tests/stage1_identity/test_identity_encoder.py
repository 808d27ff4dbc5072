"""Identity encoder: shapes, CLIP input, storage, retrieval metric, zero-shot gender, and the sd15-scale wiring."""

import math

import pytest
import torch
from torch.testing import assert_close

from portrait_edit.metrics.identity import identity_contrastive_loss, identity_retrieval_top1
from portrait_edit.models.clip_image import clip_pixels
from portrait_edit.models.clip_pair import build_clip, export_clip
from portrait_edit.models.identity_encoder import (
    IdentityEncoder,
    IdentityEncoderConfig,
    clip_tokens,
    encode_identity,
)
from portrait_edit.models.zero_shot import ZeroShotGender


def tiny_config(**kw):
    return IdentityEncoderConfig(
        clip_width=32, word_width=32, num_heads=4, mlp_hidden=64, image_size=32, **kw
    )


def test_clip_pixels_closed_form():
    faces = torch.full((1, 3, 8, 8), 0.5)  # 0.75 in [0, 1]
    out = clip_pixels(faces, 8, [0.5, 0.25, 0.75], [0.5, 0.25, 0.125])
    assert_close(out[0, :, 0, 0], torch.tensor([0.5, 2.0, 0.0]))
    assert clip_pixels(faces, 4, [0.5] * 3, [0.5] * 3).shape == (1, 3, 4, 4)


def test_encoder_maps_clip_tokens_to_k_words_and_round_trips(tiny_sd, tmp_path):
    torch.manual_seed(0)
    encoder = IdentityEncoder(tiny_config(image_mean=[0.5] * 3, image_std=[0.5] * 3))
    faces = torch.rand(3, 3, 32, 32) * 2 - 1
    tokens = clip_tokens(tiny_sd.image_encoder, faces, encoder.config)
    assert tokens.shape == (3, 1 + (32 // 2) ** 2, 32)  # class token + 16 x 16 patches
    c_id = encode_identity(tiny_sd.image_encoder, encoder, faces)
    assert c_id.shape == (3, 2, 32)
    # Each face's words depend on that face only (no mixing across the batch).
    assert_close(encode_identity(tiny_sd.image_encoder, encoder, faces[1:2]), c_id[1:2])
    loaded = IdentityEncoder.from_pretrained(encoder.save_pretrained(tmp_path / "identity_encoder"))
    assert loaded.config == encoder.config
    assert_close(encode_identity(tiny_sd.image_encoder, loaded, faces), c_id)
    with pytest.raises(ValueError, match="clip_width"):
        encoder(torch.zeros(1, 4, 16))


def test_init_output_std_starts_the_words_at_the_word_embedding_scale():
    torch.manual_seed(0)
    target = 0.02  # about a word embedding's std in the mini and SD 1.5 text encoders
    scaled, default = IdentityEncoder(tiny_config(init_output_std=target)), IdentityEncoder(tiny_config())
    last = scaled.mlp[-1]
    assert abs(last.weight.std().item() - target / 64**0.5) < 0.1 * target / 64**0.5  # mlp_hidden 64
    assert torch.count_nonzero(last.bias) == 0
    tokens = torch.randn(16, 5, 32)
    # Hidden activations (GELU of a unit-variance LayerNorm output through a default Linear) have an
    # RMS below 1, so the words start at or below the target: far below PyTorch's default init.
    assert scaled(tokens).std() < target < default(tokens).std() / 5
    with pytest.raises(ValueError, match="init_output_std"):
        tiny_config(init_output_std=0.0)


@pytest.mark.parametrize("layer", [-1, -2, 0, 3])
def test_clip_tokens_equal_transformers_hidden_states(tiny_sd, layer):
    faces = torch.rand(2, 3, 32, 32) * 2 - 1
    config = tiny_config(clip_layer=layer, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    pixels = clip_pixels(faces, 32, [0.5] * 3, [0.5] * 3)
    with torch.no_grad():
        expected = tiny_sd.image_encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[layer]
        assert_close(clip_tokens(tiny_sd.image_encoder, faces, config), expected)


def test_retrieval_top1_hand_example():
    features = torch.tensor([[1.0, 0.0], [0.9, -0.1], [0.0, 1.0], [0.2, 1.0], [1.0, 0.05]])
    identities = torch.tensor([0, 0, 1, 1, 2])
    # 0 -> 4 (cos 0.9988 > 0.9939): miss; 1 -> 0 (0.9939 > 0.987 to 4): hit; 2 -> 3 hit; 3 -> 2 hit; 4 -> 0: identity 0 != 2, miss.
    assert identity_retrieval_top1(features, identities).tolist() == [False, True, True, True, False]


def test_contrastive_loss_hand_example_leaves_a_repeated_person_out_of_the_negatives():
    queries = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.5]])
    identities = torch.tensor([0, 0, 1])  # rows 0 and 1 show one person: (0, 1) and (1, 0) are not negatives
    # cos = [[1, 0, 0], [1, 0, 0], [0, 1, 1]]; / 0.5 -> logits [[2, 0, 0], [2, 0, 0], [0, 2, 2]].
    e2 = math.exp(2.0)
    rows = [
        -math.log(e2 / (e2 + 1)),
        math.log(2.0),
        -math.log(e2 / (1 + 2 * e2)),
    ]  # row 1: its 0 vs row 2's 0
    cols = [-math.log(e2 / (e2 + 1)), -math.log(1 / (1 + e2)), -math.log(e2 / (2 + e2))]
    expected = 0.5 * (sum(rows) / 3 + sum(cols) / 3)
    assert identity_contrastive_loss(queries, keys, identities, 0.5).item() == pytest.approx(
        expected, rel=1e-6
    )
    with pytest.raises(ValueError, match="temperature"):
        identity_contrastive_loss(queries, keys, identities, 0.0)
    with pytest.raises(ValueError, match="alike"):
        identity_contrastive_loss(queries, keys[:2], identities, 0.5)


def test_zero_shot_gender_picks_the_closer_prompt(tiny_sd, clip_tokenizer, tmp_path):
    clip = build_clip("tiny", "tiny", seed=3)
    export_clip(clip, clip_tokenizer, tmp_path / "clip")
    classify = ZeroShotGender.load(
        str(tmp_path / "clip"), image_size=32, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    faces = torch.rand(6, 3, 32, 32) * 2 - 1
    # Independent computation with the CLIPModel the folder was exported from.
    ids = clip_tokenizer(
        ["a photo of a man", "a photo of a woman"], padding="max_length", max_length=77, return_tensors="pt"
    )
    with torch.no_grad():
        text = clip.text_projection(clip.text_model(input_ids=ids.input_ids).pooler_output)
        image = clip.visual_projection(clip.vision_model(pixel_values=faces).pooler_output)
        text, image = (
            torch.nn.functional.normalize(text, dim=-1),
            torch.nn.functional.normalize(image, dim=-1),
        )
    expected = [["man", "woman"][i] for i in (image @ text.T).argmax(1).tolist()]
    assert classify(faces) == expected


@pytest.mark.slow
def test_sd15_scale_wiring_vit_l14_to_two_768_words():
    from portrait_edit.loading.components import load_image_encoder, load_text_encoder

    vision = load_image_encoder("sd15", seed=0)  # random ViT-L/14 from the shipped config
    text = load_text_encoder("sd15", seed=0)
    config = IdentityEncoderConfig(clip_width=vision.config.hidden_size, word_width=text.config.hidden_size)
    encoder = IdentityEncoder(config)
    c_id = encode_identity(vision, encoder, torch.rand(1, 3, 512, 512) * 2 - 1)
    assert (vision.config.hidden_size, vision.config.image_size, vision.config.patch_size) == (1024, 224, 14)
    assert c_id.shape == (1, 2, 768)
    print(f"identity encoder parameters at sd15 scale: {sum(p.numel() for p in encoder.parameters()):,}")
