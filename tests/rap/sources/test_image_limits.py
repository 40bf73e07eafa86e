"""Hostile camera images (issue 9): a JPEG whose header claims 30000 x 30000 (Pillow's
``DecompressionBombError`` today) or 12000 x 12000 (decoded into 2 GB today before the size is
checked) in a perception ``Frame`` (:mod:`rap.sources.waymo_frame`, what ``rap check-projection``
reads) or a WOD-E2E ``E2EDFrame`` (:mod:`rap.sources.wod_e2e`). The header is read first; a size
beyond ``MAX_IMAGE_SIDE`` or other than the calibration's is refused, naming the file, the record,
the camera and the size, without decoding. The decoding runs in a child interpreter limited to
1.5 GB (``run_limited``)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from rap.sources.tfrecord import read_records, write_records
from rap.sources.waymo_frame import WaymoFrameError, frame_from_bytes
from rap.sources.wod_e2e import E2EFrameError, e2e_frame_from_bytes

FRAME_FILE = Path(__file__).resolve().parents[3] / "data" / "waymo" / "perception_frame_1024360143612057520.tfrecord"
MAX_IMAGE_SIDE = 8192  # [px] rap.sources.waymo_frame.MAX_IMAGE_SIDE
PEAK_RSS_MB = 250  # the child holds the 1 MB frame; a 12000 x 12000 decode alone is 432 MB


def jpeg(size: tuple[int, int] = (16, 16)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def claiming(width: int, height: int) -> bytes:
    """A real 16 x 16 JPEG whose SOF0 header says ``width`` x ``height``."""
    data = bytearray(jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    data[sof + 7 : sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def _frame_message():
    from waymo_open_dataset import dataset_pb2

    (payload,) = read_records(FRAME_FILE)
    msg = dataset_pb2.Frame()
    msg.ParseFromString(payload)
    return msg


def _e2e_message(image: bytes, width: int = 32, height: int = 24):
    """A minimal E2EDFrame: the FRONT camera (calibrated ``width`` x ``height``) and ``image``."""
    from waymo_open_dataset.protos import end_to_end_driving_data_pb2 as e2e

    msg = e2e.E2EDFrame()
    msg.frame.context.name = "hostile"
    calib = msg.frame.context.camera_calibrations.add()
    calib.name = 1
    calib.width, calib.height = width, height
    calib.intrinsic.extend([20.0, 20.0, width / 2, height / 2, 0.0, 0.0, 0.0, 0.0, 0.0])
    calib.extrinsic.transform.extend(np.eye(4).ravel().tolist())
    msg.frame.images.add(name=1, image=image)
    msg.past_states.pos_x.extend([0.0])
    msg.past_states.pos_y.extend([0.0])
    msg.past_states.vel_x.extend([1.0])
    msg.past_states.vel_y.extend([0.0])
    return msg


def test_jpeg_size_reads_the_header():
    from rap.sources.waymo_frame import MAX_IMAGE_SIDE as limit
    from rap.sources.waymo_frame import jpeg_size

    assert limit == MAX_IMAGE_SIDE
    assert jpeg_size(jpeg((40, 20))) == (40, 20)
    assert jpeg_size(claiming(30000, 12000)) == (30000, 12000)
    assert jpeg_size(b"not a jpeg") is None
    assert jpeg_size(jpeg()[:4]) is None
    (payload,) = read_records(FRAME_FILE)
    frame = frame_from_bytes(payload)
    assert [jpeg_size(frame.jpegs[n]) for n in ("FRONT", "SIDE_LEFT")] == [(1920, 1280), (1920, 886)]


@pytest.mark.parametrize("side", [30000, 12000])
def test_perception_frame_jpeg_bomb(tmp_path, run_limited, side):
    msg = _frame_message()
    msg.images[0].image = claiming(side, side)
    camera = ("FRONT", "FRONT_LEFT", "FRONT_RIGHT", "SIDE_LEFT", "SIDE_RIGHT")[msg.images[0].name - 1]
    path = tmp_path / "bomb.tfrecord"
    write_records(path, [msg.SerializeToString()])
    code = f"from rap.sources.waymo_frame import load_frame\nreport(lambda: load_frame(sys.argv[1]).images[{camera!r}])\n"
    result = run_limited(code, path)
    assert result["type"] == "WaymoFrameError", result
    assert result["message"] == (
        f"{path}: record 0: field images[{camera}].image: camera {camera}: JPEG header says the "
        f"image is {side}x{side}, more than the limit of {MAX_IMAGE_SIDE} px a side; not decoded"
    )
    assert result["peak_rss_mb"] < PEAK_RSS_MB, result


def test_perception_frame_header_other_than_calibration_is_not_decoded(tmp_path, run_limited):
    msg = _frame_message()
    msg.images[0].image = claiming(8000, 8000)  # within the limit, but not this camera's size
    camera = ("FRONT", "FRONT_LEFT", "FRONT_RIGHT", "SIDE_LEFT", "SIDE_RIGHT")[msg.images[0].name - 1]
    path = tmp_path / "mismatch.tfrecord"
    write_records(path, [msg.SerializeToString()])
    code = f"from rap.sources.waymo_frame import load_frame\nreport(lambda: load_frame(sys.argv[1]).images[{camera!r}])\n"
    result = run_limited(code, path)
    assert result["type"] == "WaymoFrameError", result
    assert result["message"].endswith(
        f"camera {camera}: JPEG header says the image is 8000x8000, calibration says "
        "1920x1280; not decoded"
    ), result
    assert result["peak_rss_mb"] < 150, result  # today: 192 MB of pixels and more


@pytest.mark.parametrize("side", [30000, 12000])
def test_e2e_frame_jpeg_bomb(tmp_path, run_limited, side):
    path = tmp_path / "bomb.tfrecord"
    write_records(path, [_e2e_message(claiming(side, side)).SerializeToString()])
    code = "from rap.sources.wod_e2e import load_e2e_frames\nreport(lambda: load_e2e_frames(sys.argv[1])[0].images['FRONT'])\n"
    result = run_limited(code, path)
    assert result["type"] == "E2EFrameError", result
    assert result["message"] == (
        f"{path}: record 0: field frame.images[0].image: camera FRONT: JPEG header says the "
        f"image is {side}x{side}, more than the limit of {MAX_IMAGE_SIDE} px a side; not decoded"
    )
    assert result["peak_rss_mb"] < PEAK_RSS_MB, result


def test_e2e_frame_small_image_still_decodes():
    frame = e2e_frame_from_bytes(_e2e_message(jpeg((32, 24))).SerializeToString())
    assert frame.images["FRONT"].shape == (24, 32, 3)


def test_other_image_formats_are_refused():
    """The field holds a JPEG: a PNG (or any other format Pillow knows) is not decoded."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 24)).save(buf, format="PNG")
    frame = e2e_frame_from_bytes(_e2e_message(buf.getvalue()).SerializeToString(), path="p.tfrecord")
    with pytest.raises(E2EFrameError, match=r"p.tfrecord: record 0: field frame.images\[0\].image: camera FRONT: cannot decode JPEG"):
        frame.images["FRONT"]


@pytest.mark.parametrize("size", [(30000, 1280), (1920, 30000)])
def test_calibration_beyond_the_limit(size):
    """A calibration of 30000 px would make ``rap check-projection`` render 30000 px images."""
    msg = _frame_message()
    msg.context.camera_calibrations[0].width, msg.context.camera_calibrations[0].height = size
    with pytest.raises(WaymoFrameError, match=rf"x.tfrecord: record 1: field context.camera_calibrations\[0\].width/height: camera \w+: size {size[0]}x{size[1]} is more than the limit of {MAX_IMAGE_SIDE} px a side"):
        frame_from_bytes(msg.SerializeToString(), path="x.tfrecord", record=1)
    e2e = _e2e_message(jpeg(), *size)
    with pytest.raises(E2EFrameError, match=rf"field frame.context.camera_calibrations\[0\].width/height: camera FRONT: size {size[0]}x{size[1]} is more than the limit"):
        e2e_frame_from_bytes(e2e.SerializeToString())
