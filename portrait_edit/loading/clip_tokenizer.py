"""The CLIP tokenizer that cleans prompts the way OpenAI CLIP and open_clip do, before BPE.

transformers' CLIPTokenizer (which SD pipelines use) tokenizes the raw string: curly quotes, full-width
letters, ligatures, HTML entities and control characters become byte tokens the text encoder never saw in
training, and a literal "<|endoftext|>" in a prompt ends it. OpenAI's tokenizer (and open_clip's) first
runs ftfy.fix_text, unescapes HTML twice, collapses whitespace and strips, and treats special-token
strings in a prompt as text. `CLIPPromptTokenizer` does the same, so its ids equal open_clip's on any
prompt; it saves as a plain CLIPTokenizer (the files are unchanged).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import ftfy
from transformers import CLIPTokenizer


def clean_prompt(text: str) -> str:
    """OpenAI CLIP's text cleaning: ftfy.fix_text, HTML unescaped twice, whitespace runs to one space, stripped."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split())


class CLIPPromptTokenizer(CLIPTokenizer):
    """CLIPTokenizer whose prompts are cleaned as OpenAI CLIP cleans them (`clean_prompt`) and whose
    special-token strings inside a prompt are text."""

    def _encode_plus(self, text: Any, text_pair: Any = None, **kwargs: Any):
        if not kwargs.get("is_split_into_words"):
            text, text_pair = _cleaned(text), _cleaned(text_pair)
        kwargs["split_special_tokens"] = True
        return super()._encode_plus(text, text_pair, **kwargs)

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any):
        """Save as transformers' own CLIPTokenizer, so that diffusers and transformers load the folder
        without this package (they then tokenize raw prompts, as every SD pipeline does)."""
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        config = Path(save_directory) / "tokenizer_config.json"
        settings = json.loads(config.read_text(encoding="utf-8"))
        settings["tokenizer_class"] = CLIPTokenizer.__name__
        config.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return saved


def _cleaned(text: Any) -> Any:
    if isinstance(text, str):
        return clean_prompt(text)
    if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
        return [clean_prompt(t) for t in text]
    return text
