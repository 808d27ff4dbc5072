"""The offline CLIP tokenizer equals OpenAI CLIP's (as open_clip implements it), with 77 positions."""

import json

import open_clip
import pytest
import torch
import transformers
from huggingface_hub import constants as hub_constants

from portrait_edit.loading.components import load_text_encoder, load_tokenizer
from portrait_edit.paths import PRESETS_DIR

BOS, EOS, CONTEXT = 49406, 49407, 77

_BASE_PROMPTS = [
    "a photo of a cat",
    "A Photo Of A CAT",
    "a man, laughing",
    "the same woman on the left and right",
    "a person, head shot",
    "a woman wearing a santa hat, smiling!!!",
    "an angry man with glasses; red background.",
    "portrait of a king (royal crown) -- highly detailed",
    "don't stop me now, I'm having such a good time",
    "it's 2024: 3 dogs & 12 cats @ home #pets",
    "price: $19.99 (50% off) / 3-for-2",
    "e-mail: someone@example.com, url: https://example.com/a?b=c",
    "CamelCaseWords and snake_case_words and kebab-case-words",
    "multiple     spaces\tand\ttabs\nand newlines",
    "   leading and trailing spaces   ",
    "café au lait, naïve façade, jalapeño",
    "Straße in München, größer",
    "日本語のテキスト と 中文 与 한국어",
    "emoji 😀🎅🐑👑 party",
    "“curly quotes” and ‘single’ — em dash – en dash … ellipsis",
    "Ωμέγα and Привет мир",
    "a photo of a [X] [Y], crying",
    "a <b>bold</b> &amp; an entity",
    "x",
    "",
    "!!!???...,,,;;;",
    "1234567890 0.5 1e-3 3/4",
    "a sheep costume on a person with curly hair",
    "hairstyles: bob, pixie, afro, braids, ponytail",
    "ALL CAPS SHOUTING TEXT",
    "ﬁne ﬂowers in a ﬁeld",  # ligatures
    "ＦＵＬＬ－ｗｉｄｔｈ ｌｅｔｔｅｒｓ，ｈａｔ",
    "Tom &amp; Jerry &lt;3 &amp;amp; friends",
    "a bell\x07 and a\x00null and\u200b zero width",
    "a prompt <|endoftext|> that goes on <|startoftext|>",
    "mojibake: cafÃ© and donâ€™t",
]


def _prompts() -> list[str]:
    long_ones = [
        "a " * 100,  # 100 tokens: truncated to 77
        "very long prompt " * 40,
        "word" * 200,  # one giant word split by BPE into many pieces
        ", ".join(f"item{i}" for i in range(60)),
        "supercalifragilisticexpialidocious " * 20,
        "the quick brown fox jumps over the lazy dog. " * 10,
    ]
    mixed = [f"person {i}: {w}" for i, w in enumerate(["shocked", "happy", "sad", "royal", "flower"] * 3)]
    prompts = _BASE_PROMPTS + long_ones + mixed[: 56 - len(_BASE_PROMPTS) - len(long_ones)]
    assert len(prompts) == 56
    return prompts


def test_runs_offline():
    assert hub_constants.HF_HUB_OFFLINE, "tests must run with HF_HUB_OFFLINE=1 (set in tests/conftest.py)"


def test_known_ids(clip_tokenizer):
    # OpenAI CLIP's published ids for this prompt.
    assert clip_tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_sizes_and_special_tokens(clip_tokenizer):
    assert len(clip_tokenizer) == 49408
    assert clip_tokenizer.model_max_length == CONTEXT
    assert (clip_tokenizer.bos_token_id, clip_tokenizer.eos_token_id, clip_tokenizer.pad_token_id) == (
        BOS,
        EOS,
        EOS,
    )


def test_files_are_the_openai_layout():
    folder = PRESETS_DIR / "tokenizer"
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2" and len(lines) - 1 == 49152 - 256 - 2
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408 and vocab["<|startoftext|>"] == BOS and vocab["<|endoftext|>"] == EOS
    assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == CONTEXT


def _open_clip_sd_padded(prompt: str) -> list[int]:
    """open_clip's ids, re-padded the way SD pads.

    open_clip pads after <|endoftext|> with id 0 (which is also the token "!"); SD's CLIPTokenizer pads with
    its pad token, <|endoftext|> (49407). Truncation agrees: both keep 76 tokens and end with 49407.
    """
    ids = open_clip.tokenize([prompt], context_length=CONTEXT)[0].tolist()
    end = ids.index(EOS)
    assert all(i == 0 for i in ids[end + 1 :])
    return ids[: end + 1] + [EOS] * (CONTEXT - end - 1)


def _ours(tokenizer, prompt: str) -> list[int]:
    return tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True
    ).input_ids


@pytest.mark.parametrize("prompt", _prompts())
def test_matches_open_clip_on_raw_prompts(clip_tokenizer, prompt):
    ours = _ours(clip_tokenizer, prompt)
    assert len(ours) == CONTEXT
    assert ours == _open_clip_sd_padded(prompt)
    batch = clip_tokenizer([prompt, "a man"], max_length=CONTEXT, truncation=True).input_ids
    assert batch[0] == ours[: ours.index(EOS) + 1]  # batches too


def test_the_cleaning_matters_on_these_prompts():
    # transformers' own CLIPTokenizer (every SD pipeline's) differs from OpenAI CLIP on these raw prompts.
    raw = transformers.CLIPTokenizer.from_pretrained(PRESETS_DIR / "tokenizer")
    differing = [p for p in _prompts() if _ours(raw, p) != _open_clip_sd_padded(p)]
    assert len(differing) == 8
    assert "a prompt <|endoftext|> that goes on <|startoftext|>" in differing


def test_saved_tokenizer_is_a_plain_clip_tokenizer(clip_tokenizer, tmp_path):
    clip_tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "CLIPTokenizer"
    assert type(load_tokenizer(str(tmp_path))) is type(clip_tokenizer)


def test_long_prompts_really_truncate(clip_tokenizer):
    ids = clip_tokenizer("a " * 100, padding="max_length", max_length=77, truncation=True).input_ids
    assert ids == [BOS] + [320] * 75 + [EOS]


def test_folder_without_config_still_gets_77(tmp_path, caplog):
    # vocab.json + merges.txt alone (as some repos ship them): transformers would report ~1e30.
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((PRESETS_DIR / "tokenizer" / name).read_bytes())
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.model_max_length == CONTEXT
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_pooled_output_is_taken_at_the_first_eos(clip_tokenizer):
    encoder = load_text_encoder("tiny", seed=0)
    assert encoder.config.eos_token_id == EOS and encoder.config.vocab_size == len(clip_tokenizer)
    ids = clip_tokenizer(
        ["a photo of a cat", "a man"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        out = encoder(ids)
    # "a photo of a cat" ends at position 6, "a man" at 3; the padding after them is also 49407.
    torch.testing.assert_close(out.pooler_output[0], out.last_hidden_state[0, 6])
    torch.testing.assert_close(out.pooler_output[1], out.last_hidden_state[1, 3])
    assert not torch.allclose(out.pooler_output[1], out.last_hidden_state[1, 76])
