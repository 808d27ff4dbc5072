"""Robust image decoding and the array <-> tensor <-> PNG helpers every layer uses.

uint8 pixels <-> float images in [-1, 1] (the VAE's and every model's range) are converted here and only
here: `pixels_to_unit` / `unit_to_pixels` on tensors of any layout, `to_tensor` / `to_uint8` between
channel-last arrays and channel-first tensors, one image or a batch.

WebDataset's built-in decoder does open -> load -> convert(mode): no EXIF transpose, alpha silently
dropped, 16-bit images clipped (ECOSYSTEM.md §2, §7). Everything that reads an image goes through
`decode_image` instead, which:

1. opens the bytes (keeping PIL's decompression-bomb limit, `Image.MAX_IMAGE_PIXELS`);
2. loads the pixels inside try/except, because truncation only shows at load time (wds#206);
3. applies the EXIF orientation (`ImageOps.exif_transpose`);
4. converts every mode to RGB: alpha and transparent palettes are composited onto a fixed background
   first, 16-bit and float images are rescaled (not clipped) to 8 bit;
5. rejects images smaller than `min_size`.

Every failure is a ValueError that names the file or key and says what to do about it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

# Fixed zlib level: the same array must give the same bytes on every rank and every rerun (house rule 10).
PNG_COMPRESS_LEVEL = 6

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
# The files a folder of images offers: every format `decode_image` reads (PIL's), by suffix.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".gif", ".bmp")


def image_files(folder: str | os.PathLike) -> dict[str, Path]:
    """The image files under `folder` (any depth, IMAGE_SUFFIXES in any case) by a name unique in the
    folder: the file stem (FFHQ's `00042` for `00042.png`, the key of a genders JSON), unless several
    files share it, which are named `<stem>_<suffix>` (`x_png`, `x_jpg`) and, where that still repeats
    (`a/x.png`, `b/x.png`), with their folders first (`a_x_png`). Sorted by path."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    names = [p.stem for p in files]
    for rule in (
        lambda p: f"{p.stem}_{p.suffix[1:].lower()}",
        lambda p: "_".join([*p.relative_to(root).parent.parts, p.stem, p.suffix[1:].lower()]),
    ):
        repeated = {n for n in names if names.count(n) > 1}
        names = [rule(p) if n in repeated else n for p, n in zip(files, names)]
    return dict(zip(names, files))


def decode_image(
    data: bytes,
    name: str,
    *,
    min_size: int = 8,
    background: Sequence[int] = (255, 255, 255),
) -> Image.Image:
    """Decode encoded image bytes into an RGB PIL image, robustly.

    Args:
        data: the encoded file contents (PNG, JPEG, ... anything PIL reads).
        name: the file name or sample key/member, used in error messages.
        min_size: smallest accepted width and height in pixels.
        background: RGB colour that transparent pixels are composited onto.

    Returns:
        A fully loaded RGB image, EXIF orientation applied.

    Raises:
        ValueError: the bytes are empty, not an image, truncated, too large, or smaller than min_size.
    """
    if not data:
        raise ValueError(f"image {name!r} is empty (0 bytes); re-create the file or drop it from the dataset")
    try:
        img = Image.open(io.BytesIO(data))
        # Truncated files open fine and only fail here; never rely on LOAD_TRUNCATED_IMAGES.
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img, tuple(int(c) for c in background))
    except Image.DecompressionBombError as exc:
        raise ValueError(
            f"image {name!r} exceeds PIL's decompression-bomb limit ({exc}); resize it before adding it "
            "to the dataset"
        ) from exc
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, Image.UnidentifiedImageError) as exc:
        # PIL's UnidentifiedImageError names the in-memory buffer, not the file: say what it means instead.
        detail = "no format PIL reads" if isinstance(exc, Image.UnidentifiedImageError) else exc
        raise ValueError(
            f"cannot decode image {name!r} ({type(exc).__name__}: {detail}); the file is truncated, "
            "corrupt or not an image: re-create it or remove it from the dataset"
        ) from exc
    if rgb.width < min_size or rgb.height < min_size:
        raise ValueError(
            f"image {name!r} is {rgb.width}x{rgb.height}, smaller than min_size={min_size}; remove it or "
            "lower min_size"
        )
    return rgb


def load_image(
    path: str | os.PathLike,
    *,
    min_size: int = 8,
    background: Sequence[int] = (255, 255, 255),
) -> Image.Image:
    """Read and decode an image file; see `decode_image`.

    Args:
        path: the image file.
        min_size: smallest accepted width and height in pixels.
        background: RGB colour that transparent pixels are composited onto.

    Raises:
        ValueError: the file cannot be read or decoded (the message names the path).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read image file {os.fspath(path)!r}: {exc}") from exc
    return decode_image(data, os.fspath(path), min_size=min_size, background=background)


def _to_rgb(img: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """Convert any PIL mode to RGB, compositing alpha and rescaling high bit depths."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        # 16-bit PNGs load as I;16 or I (int32 holding 0..65535). Scale, do not clip: convert("L") would
        # saturate everything above 255 to white.
        arr = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        # Float images are taken as [0, 1] when they fit there, else as already on the 0..255 scale.
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 1.0
        grey = np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        # convert("RGB") would drop alpha and expose whatever colour sits under transparent pixels.
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background[:3], 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    # L, 1, P (opaque), CMYK, YCbCr, LAB, HSV, RGB: PIL's conversions are correct for these.
    return img.convert("RGB")


def pixels_to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (or integer-valued) pixels 0..255, any layout -> float in [-1, 1], the same layout."""
    return pixels.float() / 127.5 - 1.0


def unit_to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] (clamped), any layout -> uint8 pixels, rounded; inverse of pixels_to_unit."""
    return ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def to_tensor(img: Image.Image | np.ndarray) -> torch.Tensor:
    """RGB image (PIL, uint8 H x W x 3 or H x W array) -> float tensor (3, H, W) in [-1, 1]; a uint8 batch
    (N, H, W, 3) -> (N, 3, H, W)."""
    if isinstance(img, Image.Image):
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    elif np.ndim(img) == 4:
        arr = np.asarray(img)
        if arr.dtype != np.uint8 or arr.shape[3] != 3:
            raise ValueError(f"expected a uint8 (N, H, W, 3) batch, got {arr.dtype} {arr.shape}")
    else:
        arr = _check_uint8(img)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
    pixels = torch.from_numpy(np.array(arr, dtype=np.uint8))
    return pixels_to_unit(pixels.permute(0, 3, 1, 2) if pixels.ndim == 4 else pixels.permute(2, 0, 1))


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """Float tensor (3, H, W) or (1, H, W) in [-1, 1] -> uint8 array (H, W, 3) or (H, W); a batch
    (N, 3, H, W) -> (N, H, W, 3). Inverse of to_tensor."""
    if tensor.ndim == 4 and tensor.shape[1] == 3:
        return unit_to_pixels(tensor).permute(0, 2, 3, 1).cpu().numpy()
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
        raise ValueError(f"expected a (3, H, W), (1, H, W) or (N, 3, H, W) tensor, got {tuple(tensor.shape)}")
    arr = unit_to_pixels(tensor).cpu().permute(1, 2, 0).numpy()
    return arr[:, :, 0] if arr.shape[2] == 1 else arr


def square_face(img: Image.Image, size: int) -> torch.Tensor:
    """Centre-crop to a square and resize (bicubic): float (3, size, size) in [-1, 1]."""
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return to_tensor(img)


def encode_png(array: np.ndarray) -> bytes:
    """uint8 (H, W, 3) or (H, W) array -> PNG bytes, deterministically.

    Same array -> same bytes: a fixed compression level and no metadata chunks (PIL writes no time
    chunk unless asked), so shards are byte-identical across reruns and ranks.
    """
    arr = _check_uint8(array)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(
        buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False
    )
    return buf.getvalue()


def encode_jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    """uint8 (H, W, 3) array -> JPEG bytes, for figures on result pages (a third of the PNG's size);
    data (shards, edits) stays PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(_check_uint8(array))).convert("RGB").save(
        buf, format="JPEG", quality=quality
    )
    return buf.getvalue()


def _check_uint8(array: np.ndarray) -> np.ndarray:
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got dtype {arr.dtype}; convert with to_uint8 first")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"expected an (H, W, 3) or (H, W) array, got shape {arr.shape}")
    return arr
