"""Image decoding, letterboxing and resize/centre-crop."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gateway.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
LETTERBOX_PAD = 114


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode JPEG/PNG/WebP bytes into an upright RGB uint8 array [H, W, 3] (EXIF orientation applied)."""
    if not data:
        raise InvalidImage("empty image upload")
    try:
        # Image.open reads only the header: format and size are checked before any pixel is decoded.
        image = Image.open(io.BytesIO(data))
        if image.format not in ACCEPTED_FORMATS:
            raise UnsupportedMediaType(
                f"image format {image.format} is not supported; send one of {sorted(ACCEPTED_FORMATS)}"
            )
        width, height = image.size
        if width * height > max_pixels:
            raise PayloadTooLarge(f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
        image.load()
        rgb = ImageOps.exif_transpose(image).convert("RGB")
    except UnidentifiedImageError as exc:
        raise InvalidImage("not a decodable image; send a JPEG, PNG or WebP file") from exc
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image has too many pixels: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise InvalidImage(f"cannot decode image: {exc}") from exc
    if rgb.width < 1 or rgb.height < 1:
        raise InvalidImage("image has no pixels")
    return np.asarray(rgb, dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class Letterbox:
    """Where the original image sits inside the letterboxed square.

    Args:
        gain: scale applied to the original image.
        pad_x: left padding in letterboxed pixels.
        pad_y: top padding in letterboxed pixels.
        width: original width.
        height: original height.
    """

    gain: float
    pad_x: float
    pad_y: float
    width: int
    height: int


def letterbox(image: np.ndarray, size: int, pad_value: int = LETTERBOX_PAD) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping aspect ratio to fit ``size`` x ``size`` and pad with grey, as YOLOv5 does."""
    height, width = image.shape[:2]
    gain = min(size / height, size / width)
    new_w, new_h = int(round(width * gain)), int(round(height * gain))
    dw, dh = (size - new_w) / 2, (size - new_h) / 2
    if (new_w, new_h) != (width, height):
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    else:
        resized = image
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    canvas = np.full((size, size, 3), pad_value, dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas, Letterbox(gain=gain, pad_x=left, pad_y=top, width=width, height=height)


def resize_center_crop(image: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """Resize the shorter side to ``resize`` (bilinear), then take the central ``crop`` x ``crop``."""
    height, width = image.shape[:2]
    scale = resize / min(height, width)
    new_w, new_h = max(crop, int(round(width * scale))), max(crop, int(round(height * scale)))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    return np.ascontiguousarray(resized[top : top + crop, left : left + crop])
