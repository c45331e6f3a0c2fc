"""Image decoding, letterboxing and resize/centre-crop."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gateway.errors import InvalidImage, PayloadTooLarge, UnsupportedImageShape, UnsupportedMediaType

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
LETTERBOX_PAD = 114


# Bytes a pixel that load_image holds at once, by the mode the header declares (measured): the decoded
# image plus at most one full-size copy (a mode conversion or the EXIF rotation; PIL keeps 3- and
# 4-channel images at 4 bytes a pixel), plus one for the resize's intermediates.
_HELD_BYTES_PER_PIXEL = {"1": 2, "L": 2, "P": 5, "I;16": 6, "I;16B": 6, "I;16L": 6}
DEFAULT_HELD_BYTES_PER_PIXEL = 8
RESIZE_BYTES_PER_PIXEL = 1


def decode_bytes_per_pixel(mode: str) -> int:
    """What decoding and resizing an image of ``mode`` may hold at once, in bytes per source pixel."""
    return _HELD_BYTES_PER_PIXEL.get(mode, DEFAULT_HELD_BYTES_PER_PIXEL) + RESIZE_BYTES_PER_PIXEL


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read before any pixel is decoded.

    Args:
        format: PIL format name (``JPEG``, ``PNG``, ``WEBP``).
        mode: PIL mode the pixels decode to (``RGB``, ``L``, ``1``, ``P``, ...).
        width: stored width in pixels.
        height: stored height in pixels.
    """

    format: str
    mode: str
    width: int
    height: int

    @property
    def decode_bytes(self) -> int:
        """An upper bound of the memory ``load_image`` and a resize hold at once for this image."""
        return self.width * self.height * decode_bytes_per_pixel(self.mode)


def _open(data: bytes, max_pixels: int, max_aspect_ratio: float) -> tuple[Image.Image, ImageHeader]:
    if not data:
        raise InvalidImage("empty image upload")
    try:
        # Image.open reads only the header: format and size are checked before any pixel is decoded.
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise InvalidImage("not a decodable image; send a JPEG, PNG or WebP file") from exc
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image has too many pixels: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt header
        raise InvalidImage(f"cannot decode image: {exc}") from exc
    if image.format not in ACCEPTED_FORMATS:
        raise UnsupportedMediaType(
            f"image format {image.format} is not supported; send one of {sorted(ACCEPTED_FORMATS)}"
        )
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage("image has no pixels")
    if width * height > max_pixels:
        raise PayloadTooLarge(f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
    if max_aspect_ratio and max(width, height) > max_aspect_ratio * min(width, height):
        raise UnsupportedImageShape(
            f"image is {width}x{height} pixels; the longer side may be at most {max_aspect_ratio:g} times the shorter"
        )
    return image, ImageHeader(str(image.format), image.mode, width, height)


def read_header(data: bytes, max_pixels: int, max_aspect_ratio: float = 0.0) -> ImageHeader:
    """Format and size from the header alone; 400/413/415/422 for what ``load_image`` would refuse."""
    return _open(data, max_pixels, max_aspect_ratio)[1]


def load_image(data: bytes, max_pixels: int, max_aspect_ratio: float = 0.0) -> Image.Image:
    """Decode JPEG/PNG/WebP bytes into an upright (EXIF orientation applied) PIL image in mode RGB or L.

    Greyscale and 1-bit images stay one byte a pixel (``resize_center_crop`` and ``letterbox`` convert
    to RGB after resizing, with the same result); every other mode is converted to RGB. At most
    ``ImageHeader.decode_bytes`` are held at once. ``max_aspect_ratio`` 0 means no limit.
    """
    image, _ = _open(data, max_pixels, max_aspect_ratio)
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # without in_place it copies even an upright image
        if image.mode not in ("RGB", "L"):
            image = image.convert("L" if image.mode == "1" else "RGB")
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image has too many pixels: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise InvalidImage(f"cannot decode image: {exc}") from exc
    return image


def decode_image(data: bytes, max_pixels: int, max_aspect_ratio: float = 0.0) -> np.ndarray:
    """Decode JPEG/PNG/WebP bytes into an upright RGB uint8 array [H, W, 3] (EXIF orientation applied)."""
    return np.asarray(load_image(data, max_pixels, max_aspect_ratio).convert("RGB"), dtype=np.uint8)


def _pil(image: np.ndarray | Image.Image) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(image)


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)


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


def letterbox(
    image: np.ndarray | Image.Image, size: int, pad_value: int = LETTERBOX_PAD
) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping aspect ratio to fit ``size`` x ``size`` and pad with grey, as YOLOv5 does.

    ``image`` is an RGB array or a PIL image in mode RGB or L (``load_image``); only the resized image
    is converted to RGB. Neither side shrinks below one pixel.
    """
    source = _pil(image)
    width, height = source.size
    gain = min(size / height, size / width)
    new_w, new_h = max(1, int(round(width * gain))), max(1, int(round(height * gain)))
    if (new_w, new_h) != (width, height):
        source = source.resize((new_w, new_h), Image.Resampling.BILINEAR)
    resized = _rgb(source)
    dw, dh = (size - new_w) / 2, (size - new_h) / 2
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    canvas = np.full((size, size, 3), pad_value, dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas, Letterbox(gain=gain, pad_x=left, pad_y=top, width=width, height=height)


def resize_center_crop(image: np.ndarray | Image.Image, resize: int, crop: int) -> np.ndarray:
    """Resize the shorter side to ``resize`` (bilinear), then take the central ``crop`` x ``crop``.

    The crop box is computed in source coordinates and only that region is resampled, straight to
    ``crop`` x ``crop``: whatever the aspect ratio, no intermediate is larger than the source or the
    output. ``image`` is an RGB array or a PIL image in mode RGB or L (``load_image``).
    """
    source = _pil(image)
    width, height = source.size
    scale = resize / min(height, width)
    new_w, new_h = max(crop, int(round(width * scale))), max(crop, int(round(height * scale)))
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    scale_x, scale_y = new_w / width, new_h / height
    box = (left / scale_x, top / scale_y, (left + crop) / scale_x, (top + crop) / scale_y)
    return _rgb(source.resize((crop, crop), Image.Resampling.BILINEAR, box=box))
