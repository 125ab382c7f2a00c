"""sensor_msgs/Image <-> numpy without cv_bridge (which is not installable here).

Works on the message's plain fields so it stays ROS-free and testable. Only
the encodings a camera driver commonly sends are accepted; anything else is
refused with a message naming the topic and the fix.
"""

from __future__ import annotations

import numpy as np

from wmpo_core.errors import WmpoError

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


class ImageFormatError(WmpoError):
    """An image message that cannot be turned into an upright RGB uint8 array."""


def image_fields_to_rgb(
    height: int,
    width: int,
    encoding: str,
    step: int,
    data: bytes | memoryview,
    topic: str = "image",
) -> np.ndarray:
    """Decode image message fields to uint8 [H, W, 3] RGB (a copy)."""
    channels = _CHANNELS.get(encoding)
    if channels is None:
        raise ImageFormatError(
            f"{topic}: unsupported encoding '{encoding}', expected one of {sorted(_CHANNELS)} "
            "(configure the camera driver for rgb8)"
        )
    row = width * channels
    if step < row or len(data) < step * height:
        raise ImageFormatError(
            f"{topic}: {encoding} {width}x{height} needs step >= {row} and {row * height} bytes, "
            f"got step {step} and {len(data)} bytes"
        )
    buf = np.frombuffer(data, dtype=np.uint8, count=step * height).reshape(height, step)
    img = buf[:, :row].reshape(height, width, channels)
    if encoding == "mono8":
        img = np.repeat(img, 3, axis=2)
    elif encoding.startswith("bgr"):
        img = img[:, :, 2::-1]
    else:
        img = img[:, :, :3]
    return np.ascontiguousarray(img)


def rgb_to_image_fields(img: np.ndarray) -> dict:
    """uint8 [H, W, 3] RGB -> kwargs for sensor_msgs/Image (height, width, encoding, step, data)."""
    img = np.ascontiguousarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ImageFormatError(f"expected uint8 [H, W, 3] RGB, got {img.dtype} {img.shape}")
    h, w, _ = img.shape
    return {"height": h, "width": w, "encoding": "rgb8", "step": w * 3, "data": img.tobytes()}


def resize_rgb(img: np.ndarray, size: int) -> np.ndarray:
    """Square resize by area averaging / nearest (no cv2 dependency in the core)."""
    h, w, _ = img.shape
    if h == size and w == size:
        return img
    if h % size == 0 and w % size == 0:
        fh, fw = h // size, w // size
        return img.reshape(size, fh, size, fw, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    ys = (np.arange(size) * h / size).astype(int)
    xs = (np.arange(size) * w / size).astype(int)
    return img[ys][:, xs]
