"""Image decoding, letterboxing and resize/centre-crop.

A JPEG much larger than the model input is decoded at a reduced scale (libjpeg's DCT-domain scaling
by 1/2, 1/4 or 1/8, through PIL's ``draft``), never below the size the resize needs, and then
resized as usual: :func:`classify_input` and :func:`detect_input` are the whole preprocessing, used
by the tasks and by every reference (bare) path alike, so served and bare inputs stay identical.
The letterbox resizes with OpenCV's bilinear (``cv2.INTER_LINEAR``, as YOLOv5's and NanoDet's own
letterboxes do); resize/centre-crop keeps PIL's antialiased bilinear (torchvision's preprocessing).
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gateway.errors import InvalidImage, PayloadTooLarge, UnsupportedImageShape, UnsupportedMediaType

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
LETTERBOX_PAD = 114
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112

cv2.setNumThreads(1)  # small images: its thread pool costs more CPU than it saves; tasks run in threads


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
    return load_scaled(data, max_pixels, max_aspect_ratio)[0]


def load_scaled(
    data: bytes, max_pixels: int, max_aspect_ratio: float = 0.0, scale: Callable[[int, int], float] | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """As :func:`load_image`, for an image about to be resized; also its full upright size.

    ``scale(width, height)`` is the factor the caller will resize the (width, height) image by
    (symmetric in width and height, so EXIF rotation does not change it). A JPEG is then decoded at
    the smallest DCT-domain scale (1/2, 1/4, 1/8) that still keeps both sides at least that factor
    times the full size (PIL ``draft``), so the resize that follows gets at least the pixels it
    needs; other formats, and factors above 1/2, decode in full. Returns the image and the
    (width, height) the full decode has.
    """
    image, header = _open(data, max_pixels, max_aspect_ratio)
    factor = scale(header.width, header.height) if scale is not None else 1.0
    try:
        transposed = image.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSING_ORIENTATIONS
        if header.format == "JPEG" and factor <= 0.5:
            image.draft(None, (math.ceil(header.width * factor), math.ceil(header.height * factor)))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # without in_place it copies even an upright image
        if image.mode not in ("RGB", "L"):
            image = image.convert("L" if image.mode == "1" else "RGB")
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image has too many pixels: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise InvalidImage(f"cannot decode image: {exc}") from exc
    full = (header.height, header.width) if transposed else (header.width, header.height)
    return image, full


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


def letterbox_gain(width: int, height: int, size: int) -> float:
    """The scale :func:`letterbox` applies to a ``width`` x ``height`` image."""
    return min(size / height, size / width)


def letterbox(
    image: np.ndarray | Image.Image,
    size: int,
    pad_value: int = LETTERBOX_PAD,
    full_size: tuple[int, int] | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping aspect ratio to fit ``size`` x ``size`` and pad with grey, as YOLOv5 does.

    ``image`` is an RGB array or a PIL image in mode RGB or L (``load_image``); only the resized image
    is converted to RGB. Neither side shrinks below one pixel. The resize is OpenCV's bilinear
    (``INTER_LINEAR``), or area averaging (``INTER_AREA``) where it shrinks more than 2x.
    ``full_size``: the (width, height) of the image ``image`` was decoded at a reduced scale from
    (:func:`load_scaled`); geometry and the returned box are in its pixels. ``out``: a ``size`` x
    ``size`` x 3 uint8 array to draw the canvas into (a shared-memory region), returned; a new one
    when None.
    """
    array: np.ndarray = np.asarray(image, dtype=np.uint8)
    width, height = full_size or (array.shape[1], array.shape[0])
    gain = letterbox_gain(width, height, size)
    new_w, new_h = max(1, int(round(width * gain))), max(1, int(round(height * gain)))
    dw, dh = (size - new_w) / 2, (size - new_h) / 2
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    canvas = np.empty((size, size, 3), dtype=np.uint8) if out is None else out
    canvas[:top] = pad_value  # only the borders: the image covers the rest
    canvas[top + new_h :] = pad_value
    canvas[top : top + new_h, :left] = pad_value
    canvas[top : top + new_h, left + new_w :] = pad_value
    window = canvas[top : top + new_h, left : left + new_w]
    if (new_w, new_h) == (array.shape[1], array.shape[0]):
        # A grey image (2-D) is broadcast into the three channels.
        window[...] = array[..., None] if array.ndim == 2 else array
    else:
        # Shrinking more than 2x (a large PNG or WebP; a large JPEG is decoded reduced first), bilinear
        # would skip pixels and alias: area averaging then, as YOLOv5's own loader does.
        shrink = 2 * new_w < array.shape[1] or 2 * new_h < array.shape[0]
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        if array.ndim == 3:
            # Straight into the canvas (OpenCV writes through the view's row stride): no temporary
            # image, whose fresh pages cost more than the resize itself.
            resized = cv2.resize(array, (new_w, new_h), dst=window, interpolation=interpolation)
            if resized is not window and not np.shares_memory(resized, window):
                window[...] = resized  # an OpenCV that would not write into the view
        else:
            window[...] = cv2.resize(array, (new_w, new_h), interpolation=interpolation)[..., None]
    return canvas, Letterbox(gain=gain, pad_x=left, pad_y=top, width=width, height=height)


def detect_input(
    data: bytes,
    max_pixels: int,
    max_aspect_ratio: float,
    size: int,
    pad_value: int = LETTERBOX_PAD,
    reduced_decode: bool = True,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, Letterbox]:
    """The whole detection preprocessing: decode (a JPEG at a reduced scale when the letterbox shrinks
    it 2x or more and ``reduced_decode``) and letterbox to ``size`` (into ``out`` when given, see
    :func:`letterbox`). The served path and every reference use this."""
    scale = (lambda w, h: letterbox_gain(w, h, size)) if reduced_decode else None
    image, full = load_scaled(data, max_pixels, max_aspect_ratio, scale)
    return letterbox(image, size, pad_value, full, out)


def resize_center_crop(
    image: np.ndarray | Image.Image, resize: int, crop: int, full_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Resize the shorter side to ``resize`` (bilinear), then take the central ``crop`` x ``crop``.

    The crop box is computed in source coordinates and only that region is resampled, straight to
    ``crop`` x ``crop``: whatever the aspect ratio, no intermediate is larger than the source or the
    output. ``image`` is an RGB array or a PIL image in mode RGB or L (``load_image``). ``full_size``:
    the (width, height) of the image ``image`` was decoded at a reduced scale from
    (:func:`load_scaled`); the geometry is computed in its pixels, then scaled to ``image``'s.
    """
    source = _pil(image)
    width, height = full_size or source.size
    scale = resize / min(height, width)
    new_w, new_h = max(crop, int(round(width * scale))), max(crop, int(round(height * scale)))
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    scale_x, scale_y = new_w / source.width, new_h / source.height
    box = (left / scale_x, top / scale_y, (left + crop) / scale_x, (top + crop) / scale_y)
    return _rgb(source.resize((crop, crop), Image.Resampling.BILINEAR, box=box))


def classify_input(
    data: bytes, max_pixels: int, max_aspect_ratio: float, resize: int, crop: int, reduced_decode: bool = True
) -> np.ndarray:
    """The whole classification preprocessing: decode (a JPEG at a reduced scale when the resize
    shrinks it 2x or more and ``reduced_decode``), resize the shorter side to ``resize`` and
    centre-crop ``crop``. The served path and every reference use this."""
    scale = (lambda w, h: resize / min(w, h)) if reduced_decode else None
    image, full = load_scaled(data, max_pixels, max_aspect_ratio, scale)
    return resize_center_crop(image, resize, crop, full)
