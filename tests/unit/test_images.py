"""Robust decoding: every awkward file either decodes to the right pixels or raises a ValueError naming it."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from portrait_edit.images import decode_image, encode_png, load_image, to_tensor, to_uint8


def _save(img: Image.Image, path, fmt: str, **kw) -> str:
    img.save(path, format=fmt, **kw)
    return str(path)


def test_truncated_jpeg_raises_naming_file(tmp_path):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ValueError, match="cut.jpg") as info:
        load_image(path)
    assert "truncated" in str(info.value)


def test_cmyk_jpeg_converts_to_rgb(tmp_path):
    # Pure cyan ink (C=255) is RGB (0, 255, 255); no ink is white.
    img = Image.new("CMYK", (16, 16), (255, 0, 0, 0))
    img.paste((0, 0, 0, 0), (0, 0, 8, 16))
    out = np.asarray(load_image(_save(img, tmp_path / "cmyk.jpg", "JPEG", quality=95)), dtype=int)
    assert out.shape == (16, 16, 3)
    np.testing.assert_allclose(out[8, 2], [255, 255, 255], atol=6)
    np.testing.assert_allclose(out[8, 13], [0, 255, 255], atol=6)


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 32896, 1000, 40000, 65535, 0]], dtype=np.uint16)
    arr = np.repeat(values, 8, axis=0)
    path = _save(Image.fromarray(arr), tmp_path / "deep.png", "PNG")
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image(path))
    # 8-bit value = round(v / 257): 1000 -> 3.89 -> 4; 40000 -> 155.6 -> 156.
    expected = np.array([0, 100, 255, 128, 4, 156, 255, 0], dtype=np.uint8)
    np.testing.assert_array_equal(out[3, :, 0], expected)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_rgba_png_is_composited_on_background(tmp_path):
    img = Image.new("RGBA", (10, 10), (200, 100, 50, 128))
    path = _save(img, tmp_path / "alpha.png", "PNG")
    # c * a + 255 * (1 - a) with a = 128 / 255.
    a = 128 / 255
    expected = [200 * a + 255 * (1 - a), 100 * a + 255 * (1 - a), 50 * a + 255 * (1 - a)]
    out = np.asarray(load_image(path), dtype=float)
    np.testing.assert_allclose(out[5, 5], expected, atol=1.0)
    black = np.asarray(decode_image(open(path, "rb").read(), "alpha.png", background=(0, 0, 0)), dtype=float)
    np.testing.assert_allclose(black[5, 5], [200 * a, 100 * a, 50 * a], atol=1.0)


def test_palette_png_with_transparency(tmp_path):
    img = Image.new("P", (12, 12), 0)
    img.putpalette([255, 0, 0, 0, 200, 0] + [0] * (256 * 3 - 6))
    img.paste(1, (6, 0, 12, 12))
    path = _save(img, tmp_path / "pal.png", "PNG", transparency=0)
    out = np.asarray(load_image(path))
    np.testing.assert_array_equal(out[3, 2], [255, 255, 255])  # transparent red -> background
    np.testing.assert_array_equal(out[3, 9], [0, 200, 0])


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_jpeg(tmp_path, orientation):
    # Stored 32 wide x 16 high, red top-left quadrant, blue elsewhere.
    img = Image.new("RGB", (32, 16), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 16, 8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(img, tmp_path / f"rot{orientation}.jpg", "JPEG", exif=exif, quality=95)
    out = np.asarray(load_image(path), dtype=int)
    assert out.shape == (32, 16, 3)  # displayed portrait: H=32, W=16
    # Orientation 6: stored row 0 is the displayed right edge, stored column 0 the top -> red top-right.
    # Orientation 8: stored row 0 is the displayed left edge, stored column 0 the bottom -> red bottom-left.
    red_corner = (1, 14) if orientation == 6 else (30, 1)
    blue_corner = (30, 1) if orientation == 6 else (1, 14)
    np.testing.assert_allclose(out[red_corner], [255, 0, 0], atol=12)
    np.testing.assert_allclose(out[blue_corner], [0, 0, 255], atol=12)


def test_one_pixel_image(tmp_path):
    path = _save(Image.new("RGB", (1, 1), (10, 20, 30)), tmp_path / "dot.png", "PNG")
    with pytest.raises(ValueError, match=r"dot.png.*1x1.*min_size=8"):
        load_image(path)
    assert np.asarray(load_image(path, min_size=1)).tolist() == [[[10, 20, 30]]]


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ValueError, match="notes.png"):
        load_image(path)
    with pytest.raises(ValueError, match="empty"):
        decode_image(b"", "sample/src.png")


def test_grey_and_grey_alpha_modes():
    buf = io.BytesIO()
    Image.new("L", (8, 8), 77).save(buf, format="PNG")
    assert np.asarray(decode_image(buf.getvalue(), "g.png"))[0, 0].tolist() == [77, 77, 77]
    buf = io.BytesIO()
    Image.new("LA", (8, 8), (0, 0)).save(buf, format="PNG")  # fully transparent black
    assert np.asarray(decode_image(buf.getvalue(), "la.png"))[0, 0].tolist() == [255, 255, 255]


def test_encode_png_is_deterministic_and_round_trips():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    assert encode_png(rgb) == encode_png(rgb.copy())
    np.testing.assert_array_equal(np.asarray(decode_image(encode_png(rgb), "x", min_size=1)), rgb)
    grey = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(decode_image(encode_png(grey), "x", min_size=1))[..., 1], grey)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(rgb.astype(np.float32))


def test_to_tensor_range_and_inverse():
    arr = np.array([[[0, 255, 128]]], dtype=np.uint8)
    t = to_tensor(arr)
    assert t.shape == (3, 1, 1) and t.dtype == torch.float32
    torch.testing.assert_close(t[:, 0, 0], torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]))
    np.testing.assert_array_equal(to_uint8(t), arr)
    torch.testing.assert_close(to_tensor(Image.fromarray(arr)), t)


def test_a_batch_converts_as_its_images_do():
    batch = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    t = to_tensor(batch)
    assert t.shape == (3, 3, 4, 5)
    torch.testing.assert_close(t, torch.stack([to_tensor(image) for image in batch]), rtol=0, atol=0)
    np.testing.assert_array_equal(to_uint8(t), batch)
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(batch.astype(np.float32))
