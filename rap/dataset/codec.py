"""Lossless image codecs for dataset shards.

Two codecs, both lossless and deterministic (the same array gives the same bytes, so the same
inputs, config and seed give byte-identical shards):

* ``png`` (:attr:`ImageCodec.PNG`, member extension ``.png``): zlib level 6 through Pillow, no
  ancillary chunks. Opens in any image viewer; about 36 ms to encode a 1920x1080 semantic raster
  on one core (3 ms at 512x256) and 23 ms to decode it.
* ``zst`` (:attr:`ImageCodec.ZSTD`, member extension ``.npy.zst``, **the default**): the array
  as a ``.npy`` file (format 1.0, C order, no pickle) compressed with Zstandard level 3, with the
  content size and a checksum in the frame. About 2 ms to encode the same 1920x1080 raster
  (0.15 ms at 512x256), 1.6 ms to decode, and 25% smaller than the PNG, because semantic rasters
  are long runs of a few flat colours, which zstd's match finder handles better than PNG's
  per-row filters + deflate. Readable without this toolkit::

      import io, numpy as np, zstandard
      image = np.load(io.BytesIO(zstandard.ZstdDecompressor().decompress(data)))

  or ``zstd -d CAM_F0.npy.zst`` on the command line, then ``numpy.load``.

Why ``zst`` is the default: at 1920x1080 PNG encoding costs about as much as rendering a view on a
GPU, so it would dominate generation; zstd is ~18x faster to encode, ~14x faster to decode (the
training loader decodes every image every epoch) and smaller. Choose ``png`` when people will
browse the shards with image tools. Byte-identity holds for one build of the compression library
(libzstd / zlib); another version may compress differently but decodes to the same pixels.

JPEG (``.jpg`` / ``.jpeg``, real camera images) can be decoded but is never written here.
"""

from __future__ import annotations

import io
import os
import threading
import zipfile
import zlib
from enum import Enum

import numpy as np

__all__ = ["ImageCodec", "DEFAULT_CODEC", "EXTENSIONS", "ZSTD_LEVEL", "PNG_LEVEL", "encode", "decode", "codec_for_extension", "npz_bytes"]


class ImageCodec(str, Enum):
    """Image codec of a shard's camera members."""

    PNG = "png"
    ZSTD = "zst"


DEFAULT_CODEC = ImageCodec.ZSTD
# Member extension written by each codec.
EXTENSIONS = {ImageCodec.PNG: "png", ImageCodec.ZSTD: "npy.zst"}
ZSTD_LEVEL = 3  # zstd compression level (fixed: part of the byte-identity contract)
PNG_LEVEL = 6  # zlib level (fixed, as rap.images.save_png)

_JPEG_EXTENSIONS = ("jpg", "jpeg")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # earliest zip timestamp: fixed so npz bytes are deterministic
_local = threading.local()


def _as_codec(codec: ImageCodec | str) -> ImageCodec:
    try:
        return ImageCodec(codec)
    except ValueError:
        known = ", ".join(c.value for c in ImageCodec)
        raise ValueError(f"unknown image codec {codec!r}; known codecs: {known}") from None


def _zstandard():
    try:
        import zstandard
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the 'zst' image codec needs the zstandard package (pip install zstandard), or use codec 'png'") from err
    return zstandard


def _zstd_contexts():
    """(compressor, decompressor) for this thread and process (contexts are not shared)."""
    key = os.getpid()
    cached = getattr(_local, "contexts", None)
    if cached is None or cached[0] != key:
        zstd = _zstandard()
        cctx = zstd.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, write_content_size=True, threads=0)
        cached = (key, cctx, zstd.ZstdDecompressor())
        _local.contexts = cached
    return cached[1], cached[2]


def _copy_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src``, fast for (H, W, C) views into wider pixels.

    Renderer outputs are often (H, W, 3) views into an (H, W, 4) RGBA readback; numpy's generic
    strided copy of such a view costs ~9 ms at 1920x1080, one strided copy per channel ~2-3 ms.
    """
    if src.ndim == 3 and src.shape[2] <= 4 and not src.flags.c_contiguous:
        for c in range(src.shape[2]):
            dst[..., c] = src[..., c]
    else:
        np.copyto(dst, src)


def _npy_bytes(array: np.ndarray) -> bytearray:
    """The ``.npy`` (format 1.0, C order) file of ``array``, built with a single copy of the data."""
    header = np.lib.format.header_data_from_array_1_0(array)
    header["fortran_order"] = False  # the data below is always written in C order
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, header)
    h = head.getvalue()
    buf = bytearray(len(h) + array.nbytes)
    buf[: len(h)] = h
    if array.size:
        _copy_into(np.frombuffer(buf, dtype=array.dtype, count=array.size, offset=len(h)).reshape(array.shape), array)
    return buf


def codec_for_extension(extension: str) -> ImageCodec | None:
    """The codec that writes ``extension`` (``"png"``, ``"npy.zst"``), None for JPEG."""
    ext = extension.lower().lstrip(".")
    for codec, codec_ext in EXTENSIONS.items():
        if ext == codec_ext:
            return codec
    if ext in _JPEG_EXTENSIONS:
        return None
    known = ", ".join(list(EXTENSIONS.values()) + list(_JPEG_EXTENSIONS))
    raise ValueError(f"no image codec for extension {extension!r}; known extensions: {known}")


def encode(codec: ImageCodec | str, array: np.ndarray) -> tuple[str, bytes]:
    """Encode an image losslessly.

    Args:
        codec: :class:`ImageCodec` or its value (``"png"``, ``"zst"``).
        array: the image. ``png``: (H, W, 3) or (H, W, 4) uint8, (H, W) uint8 or uint16.
            ``zst``: any numeric or bool array (e.g. (H, W, 3) uint8 RGB, (H, W) float32 depth).

    Returns:
        ``(extension, data)``: the member extension without the leading dot (``"png"`` or
        ``"npy.zst"``) and the encoded bytes, identical for identical arrays.

    Raises:
        ValueError: unknown codec, or an array the codec cannot store.
    """
    codec = _as_codec(codec)
    array = np.asarray(array)
    if codec is ImageCodec.PNG:
        return EXTENSIONS[codec], _encode_png(array)
    if array.dtype.hasobject or array.dtype.kind not in "biuf":
        raise ValueError(f"zst codec stores numeric arrays only, got dtype {array.dtype}")
    cctx, _ = _zstd_contexts()
    return EXTENSIONS[codec], cctx.compress(_npy_bytes(array))


def _encode_png(array: np.ndarray) -> bytes:
    from PIL import Image

    ok = (array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)))) or (
        array.dtype == np.uint16 and array.ndim == 2
    )
    if not ok:
        raise ValueError(f"png codec stores (H, W, 3|4) uint8 or (H, W) uint8/uint16 arrays, got shape {array.shape} dtype {array.dtype}")
    if array.dtype == np.uint16:
        array = array.astype("<u2")
    if not array.flags.c_contiguous:
        out = np.empty(array.shape, dtype=array.dtype)
        _copy_into(out, array)
        array = out
    image = Image.fromarray(array)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def decode(extension: str, data: bytes) -> np.ndarray:
    """Decode bytes written by :func:`encode` (or a JPEG).

    Args:
        extension: the member extension, with or without a leading dot (``"png"``,
            ``"npy.zst"``, ``"jpg"``); a full member name's last fields also work
            (``"CAM_F0.npy.zst"`` → ``npy.zst``).
        data: the encoded bytes.

    Returns:
        A writable array: (H, W, 3) uint8 for RGB images, otherwise the stored shape and dtype.

    Raises:
        ValueError: unknown extension, or corrupt data (``"corrupt .<ext> data: ..."``; also
            for a PNG chunk whose CRC-32 fails, which Pillow alone would not notice in the
            image data).
    """
    ext = extension.lower().lstrip(".")
    if ext.endswith("npy.zst"):
        ext = "npy.zst"
    elif "." in ext:
        ext = ext.rsplit(".", 1)[1]
    codec = codec_for_extension(ext)
    try:
        if codec is ImageCodec.ZSTD:
            return _decode_zst(data)
        if ext == "png":
            _check_png_chunks(data)
        return _decode_pil(data)
    except ValueError as err:
        raise ValueError(f"corrupt .{ext} data: {err}") from err
    except MemoryError:
        raise
    except Exception as err:  # zlib.error, struct.error, SyntaxError, EOFError, ... from the decoders
        raise ValueError(f"corrupt .{ext} data: {type(err).__name__}: {err}") from err


def _decode_zst(data: bytes) -> np.ndarray:
    zstd = _zstandard()
    _, dctx = _zstd_contexts()
    try:
        raw = dctx.decompress(data)
    except zstd.ZstdError:
        # Frames without a content size (e.g. from streaming tools) need the stream API.
        try:
            raw = dctx.stream_reader(io.BytesIO(data)).read()
        except zstd.ZstdError as err:
            raise ValueError(str(err)) from err
    return np.load(io.BytesIO(raw), allow_pickle=False)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png_chunks(data: bytes) -> None:
    """Check every chunk's CRC-32 and that the file ends with IEND (Pillow skips the CRCs of
    the image data, so a flipped pixel byte could otherwise decode silently)."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("no PNG signature")
    view = memoryview(data)
    at = len(_PNG_SIGNATURE)
    while True:
        if at + 12 > len(data):
            raise ValueError(f"truncated chunk at byte {at}")
        length = int.from_bytes(view[at : at + 4], "big")
        end = at + 8 + length
        if end + 4 > len(data):
            raise ValueError(f"chunk at byte {at} runs past the end of the data")
        kind = bytes(view[at + 4 : at + 8])
        if zlib.crc32(view[at + 4 : end]) != int.from_bytes(view[end : end + 4], "big"):
            raise ValueError(f"bad CRC in chunk {kind!r} at byte {at}")
        at = end + 4
        if kind == b"IEND":
            return


def _decode_pil(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.mode == "I;16":
            return np.array(image, dtype=np.uint16)
        if image.mode in ("P", "CMYK", "YCbCr", "LA"):
            image = image.convert("RGB")
        return np.array(image)


def npz_bytes(arrays: dict[str, np.ndarray], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A ``numpy.load``-able ``.npz`` with deterministic bytes (entries in name order, fixed
    timestamps and attributes; ``numpy.savez`` stamps the current time). ``compression``:
    ``zipfile.ZIP_STORED`` (default) or ``zipfile.ZIP_DEFLATED``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name in sorted(arrays):
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.create_system = 3  # unix
            info.external_attr = 0o644 << 16
            info.compress_type = compression
            zf.writestr(info, npy.getvalue())
    return buf.getvalue()
