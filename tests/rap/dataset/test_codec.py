"""Tests for rap.dataset.codec: lossless round trips and deterministic bytes."""

from __future__ import annotations

import numpy as np
import pytest

from rap.dataset.codec import DEFAULT_CODEC, EXTENSIONS, ImageCodec, codec_for_extension, decode, encode


def _raster(h: int = 48, w: int = 80) -> np.ndarray:
    """A semantic-raster-like image: black sky, grey road, coloured boxes and lines."""
    rng = np.random.default_rng(7)
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[h // 2 :] = (45, 45, 45)
    for _ in range(5):
        y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
        img[y0 : y0 + 8, x0 : x0 + 8] = rng.integers(0, 256, 3, dtype=np.uint8)
    img[np.arange(h // 2, h), np.arange(h // 2, h)] = (30, 100, 240)
    return img


@pytest.mark.parametrize("codec", list(ImageCodec))
@pytest.mark.parametrize("kind", ["raster", "noise"])
def test_rgb_round_trip_is_exact_and_deterministic(codec, kind):
    img = _raster() if kind == "raster" else np.random.default_rng(1).integers(0, 256, (33, 65, 3), dtype=np.uint8)
    ext, data = encode(codec, img)
    assert ext == EXTENSIONS[codec]
    out = decode(ext, data)
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, img)
    assert out.flags.writeable
    assert encode(codec.value, img.copy()) == (ext, data)  # same pixels, same bytes


@pytest.mark.parametrize(
    "codec, array",
    [
        ("png", np.arange(12 * 7, dtype=np.uint8).reshape(12, 7)),
        ("png", (np.arange(12 * 7, dtype=np.uint16) * 700).reshape(12, 7)),
        ("zst", np.linspace(0.0, 80.0, 12 * 7, dtype=np.float32).reshape(12, 7)),
        ("zst", np.arange(12 * 7, dtype=np.uint32).reshape(12, 7)),
        ("zst", np.eye(5, dtype=bool)),
    ],
)
def test_other_dtypes_round_trip(codec, array):
    ext, data = encode(codec, array)
    out = decode(ext, data)
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_zst_is_the_default_and_smaller_than_png_on_a_raster():
    assert DEFAULT_CODEC is ImageCodec.ZSTD
    img = np.tile(_raster(), (4, 4, 1))
    assert len(encode("zst", img)[1]) < len(encode("png", img)[1])


def test_decode_accepts_member_suffixes():
    img = _raster()
    _, data = encode("zst", img)
    np.testing.assert_array_equal(decode("CAM_F0.npy.zst", data), img)
    np.testing.assert_array_equal(decode(".npy.zst", data), img)
    _, data = encode("png", img)
    np.testing.assert_array_equal(decode("CAM_F0.png", data), img)
    assert codec_for_extension("jpg") is None


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown image codec 'webp'"):
        encode("webp", _raster())
    with pytest.raises(ValueError, match="png codec stores"):
        encode("png", np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="numeric arrays only"):
        encode("zst", np.array(["a", "b"]))
    with pytest.raises(ValueError, match="no image codec for extension"):
        decode("tiff", b"")
    with pytest.raises(ValueError, match="corrupt"):
        decode("npy.zst", b"not zstd")
    with pytest.raises(ValueError, match="corrupt"):
        decode("png", b"not a png")


@pytest.mark.parametrize("codec", list(ImageCodec))
def test_non_contiguous_inputs_encode_like_their_copies(codec):
    rgba = np.random.default_rng(2).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    views = [rgba[..., :3], rgba[::-1, :, :3], np.asfortranarray(rgba[..., :3])]  # renderer-style views
    for view in views:
        ext, data = encode(codec, view)
        assert data == encode(codec, np.ascontiguousarray(view))[1]
        np.testing.assert_array_equal(decode(ext, data), view)
    depth = np.asfortranarray(np.random.default_rng(3).random((9, 7), dtype=np.float32))
    if codec is ImageCodec.ZSTD:
        np.testing.assert_array_equal(decode(*encode(codec, depth)), depth)
