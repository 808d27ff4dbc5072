"""One pair-shard sample <-> its tar members: the field contract shared by the writer and the reader.

A sample (what a generation `predict_step` returns, one dict per pair):
- `__key__`: str from the global index, no dots (WebDataset splits member names at the first dot).
- `__index__`, `__shard__`, `__shard_len__`: bookkeeping for the writer, not written to the tar.
- `*.png`: uint8 arrays (H, W, 3) or (H, W), or already-encoded PNG bytes (`src.png`, `tgt.png`,
  `gt.png`, `edit_mask.png`, `pose.png`).
- `json`: a dict, written as UTF-8 JSON with sorted keys.
- `*.npy`: numpy arrays or tensors (cached conditions such as `src.latent.npy`).
- anything else: bytes, or str (UTF-8).

Decoded (reader side): images -> float (3, H, W) in [-1, 1]; `*_mask.png` -> float (1, H, W) in {0, 1};
`json` -> dict; `*.npy` -> tensors; `__key__` kept.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch

from portrait_edit.images import decode_image, encode_png, to_tensor

REQUIRED_FIELDS: tuple[str, ...] = ("src.png", "tgt.png", "json")
BOOKKEEPING = ("__key__", "__index__", "__shard__", "__shard_len__", "__filtered__")


class SampleError(ValueError):
    """A sample that cannot be decoded; carries the key and member so error handlers can report them."""

    def __init__(self, key: str, member: str, reason: str) -> None:
        super().__init__(f"sample {key!r}, member {member!r}: {reason}")
        self.key = key
        self.member = member


def check_key(key: Any) -> str:
    """Validate a `__key__`: a non-empty str without dots or slashes (a dot would split the key, wds#205)."""
    if not isinstance(key, str) or not key or "." in key or "/" in key:
        raise ValueError(
            f"invalid sample __key__ {key!r}: keys must be non-empty strings without '.' or '/' "
            "(WebDataset reads 'a.b' as key 'a' with field 'b.*'); derive keys from the global index, "
            "e.g. f'{index:09d}'"
        )
    return key


def _json_default(value: Any) -> Any:
    # numpy scalars/arrays and tensors appear in generation metadata (seeds, scales); store plain values.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | torch.Tensor):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_field(key: str, field: str, value: Any) -> bytes:
    """Encode one field of a sample to the bytes of its tar member `{key}.{field}`."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    try:
        if field.endswith(".png"):
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            return encode_png(value)
        if field == "json" or field.endswith(".json"):
            text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=_json_default)
            return text.encode("utf-8")
        if field.endswith(".npy"):
            arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            return buf.getvalue()
        if isinstance(value, str):
            return value.encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sample {key!r}, field {field!r}: cannot encode ({exc})") from exc
    raise ValueError(
        f"sample {key!r}, field {field!r}: unsupported value of type {type(value).__name__}; use a uint8 "
        "array for *.png, a dict for json, an array for *.npy, or bytes"
    )


def encode_sample(sample: dict[str, Any]) -> tuple[str, dict[str, bytes]]:
    """A predict_step sample -> (key, {field: bytes}) with fields in sorted order (reproducible tars)."""
    key = check_key(sample.get("__key__"))
    members: dict[str, bytes] = {}
    for field in sorted(sample):
        if field.startswith("__"):
            continue
        if not field or "/" in field or field.startswith("."):
            raise ValueError(f"sample {key!r}: invalid field name {field!r}")
        members[field] = encode_field(key, field, sample[field])
    if not members:
        raise ValueError(f"sample {key!r} has no fields to write")
    return key, members


def decode_sample(sample: dict[str, Any], required: tuple[str, ...] = REQUIRED_FIELDS) -> dict[str, Any]:
    """Raw WebDataset sample (member bytes) -> tensors and dicts (see module docstring).

    Args:
        sample: dict with `__key__` and one bytes value per member.
        required: fields that must be present.

    Raises:
        SampleError (a ValueError): a required field is missing or a member cannot be decoded; the
            message names the key and the member.
    """
    key = str(sample.get("__key__", "<no key>"))
    missing = [f for f in required if f not in sample]
    if missing:
        raise SampleError(
            key, ",".join(missing), f"missing required field(s) from {sample.get('__url__', '?')}"
        )
    out: dict[str, Any] = {"__key__": key}
    for field, value in sample.items():
        if field.startswith("__"):
            continue
        try:
            out[field] = _decode_field(f"{key}.{field}", field, value)
        except (ValueError, OSError, EOFError) as exc:
            raise SampleError(key, field, str(exc)) from exc
    return out


def _decode_field(name: str, field: str, data: bytes) -> Any:
    if field.endswith(".png") or field.endswith(".jpg") or field.endswith(".jpeg"):
        img = decode_image(data, name)
        if field.endswith("mask.png"):
            # Masks are stored as 0/255 greyscale; threshold so JPEG-ish noise or resizing cannot leak in.
            grey = np.asarray(img, dtype=np.uint8)[:, :, 0]
            return torch.from_numpy(grey > 127).float().unsqueeze(0)
        return to_tensor(img)
    if field == "json" or field.endswith(".json"):
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"invalid JSON: {exc}") from exc
    if field.endswith(".npy"):
        return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False).copy())
    if field.endswith(".txt"):
        return data.decode("utf-8")
    return data
