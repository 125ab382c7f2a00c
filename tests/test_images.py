"""sensor_msgs/Image field conversion (wmpo_core/images.py) without cv_bridge."""

from __future__ import annotations

import numpy as np
import pytest

from wmpo_core.images import ImageFormatError, image_fields_to_rgb, resize_rgb, rgb_to_image_fields


def _rgb(h: int = 6, w: int = 5) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb8_round_trip_is_exact():
    img = _rgb()
    f = rgb_to_image_fields(img)
    assert (f["height"], f["width"], f["encoding"], f["step"]) == (6, 5, "rgb8", 15)
    out = image_fields_to_rgb(**f)
    np.testing.assert_array_equal(out, img)
    assert out.flags["C_CONTIGUOUS"] and out.dtype == np.uint8


def test_bgr8_is_swapped_to_rgb():
    img = _rgb()
    bgr = np.ascontiguousarray(img[:, :, ::-1])
    out = image_fields_to_rgb(6, 5, "bgr8", 15, bgr.tobytes())
    np.testing.assert_array_equal(out, img)


def test_mono8_becomes_grey_rgb():
    grey = np.arange(30, dtype=np.uint8).reshape(6, 5)
    out = image_fields_to_rgb(6, 5, "mono8", 5, grey.tobytes())
    assert out.shape == (6, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_row_padding_in_step_is_skipped():
    img = _rgb()
    padded = np.zeros((6, 16), dtype=np.uint8)  # step 16 > 15: one padding byte per row
    padded[:, :15] = img.reshape(6, 15)
    padded[:, 15] = 255
    np.testing.assert_array_equal(image_fields_to_rgb(6, 5, "rgb8", 16, padded.tobytes()), img)


def test_unknown_encoding_is_refused_with_topic_and_fix():
    with pytest.raises(ImageFormatError, match=r"/camera/image_raw: unsupported encoding '16UC1'"):
        image_fields_to_rgb(2, 2, "16UC1", 4, bytes(8), topic="/camera/image_raw")


@pytest.mark.parametrize(
    "step, nbytes", [(14, 6 * 15), (15, 6 * 15 - 1)], ids=["step too small", "data too short"]
)
def test_wrong_step_or_size_is_refused(step, nbytes):
    with pytest.raises(ImageFormatError, match="needs step >= 15"):
        image_fields_to_rgb(6, 5, "rgb8", step, bytes(nbytes))


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8)],
    ids=["float", "2-D", "rgba"],
)
def test_rgb_to_fields_refuses_non_rgb_uint8(bad):
    with pytest.raises(ImageFormatError, match=r"expected uint8 \[H, W, 3\] RGB"):
        rgb_to_image_fields(bad)


def test_resize_area_average_and_nearest():
    img = np.zeros((4, 4, 3), np.uint8)
    img[:2, :2] = 200  # top-left block
    small = resize_rgb(img, 2)
    assert small.shape == (2, 2, 3) and small[0, 0, 0] == 200 and small[1, 1, 0] == 0
    assert resize_rgb(img, 3).shape == (3, 3, 3)
    assert resize_rgb(img, 4) is img
