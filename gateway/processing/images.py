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
import struct
from collections.abc import Callable
from typing import NamedTuple

import cv2
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from gateway.errors import InvalidImage, PayloadTooLarge, UnsupportedImageShape, UnsupportedMediaType

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
LETTERBOX_PAD = 114
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


# PIL parses a JPEG's markers before its first scan, and a PNG's chunks, one by one in Python (a few
# microseconds each; fill and junk bytes between JPEG markers one byte at a time): a 19 MB JPEG of empty APP
# segments took its header check 15 s (then on the event loop; now in a worker thread, still that long). Real
# files have tens, a large PNG a few thousand IDAT chunks (libpng writes 8 kB ones).
MAX_IMAGE_SEGMENTS = 10_000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # no length follows (TEM, RSTn, SOI)
_PHOTOSHOP_PREFIX = b"Photoshop 3.0\x00"


def _jpeg_steps(data: bytes, limit: int) -> int:
    """The steps of PIL's marker loop before the first scan (a segment, a fill or junk byte, a Photoshop resource
    block each), counted up to ``limit + 1``."""
    steps, i, size = 0, 2, len(data)
    while i + 1 < size and steps <= limit:
        if data[i] != 0xFF:  # junk, skipped byte by byte
            junk_end = data.find(b"\xff", i)
            junk_end = size if junk_end < 0 else junk_end
            steps, i = steps + junk_end - i, junk_end
            continue
        steps += 1
        marker = data[i + 1]
        if marker == _SOS:
            break
        if marker in (0xFF, 0x00) or marker in _JPEG_STANDALONE:
            i += 1 if marker == 0xFF else 2
        elif i + 4 > size:
            break
        else:
            end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
            if marker == 0xED and data.startswith(_PHOTOSHOP_PREFIX, i + 4):
                steps += _photoshop_blocks(data, i + 4 + len(_PHOTOSHOP_PREFIX), min(end, size), limit - steps)
            i = end
    return steps


def _photoshop_blocks(data: bytes, i: int, end: int, limit: int) -> int:
    """The resource blocks of an APP13 Photoshop segment ``data[i:end]`` that PIL's loop reads one by one
    (at least 12 bytes each: 19.7 MB of them took it 2 s), counted up to ``limit + 1``."""
    blocks = 0
    while blocks <= limit and i + 12 <= end and data.startswith(b"8BIM", i):
        blocks += 1
        i += 6  # signature, resource id
        i += 1 + data[i]  # Pascal name
        i += i & 1
        if i + 4 > end:
            break
        i += 4 + int.from_bytes(data[i : i + 4], "big")
        i += i & 1
    return blocks


def _png_chunks(data: bytes, limit: int) -> int:
    """The chunks of a PNG, counted up to ``limit + 1``."""
    chunks, i, size = 0, len(_PNG_SIGNATURE), len(data)
    while i + 8 <= size and chunks <= limit:
        chunks += 1
        if data[i + 4 : i + 8] == b"IEND":
            break
        i += 12 + int.from_bytes(data[i : i + 4], "big")
    return chunks


def check_segments(data: bytes, max_segments: int) -> None:
    """413 for a JPEG of more than ``max_segments`` markers (and fill or junk bytes) before its first scan, or a PNG
    of more chunks, before PIL parses them (0: no limit). Python steps over the segments, not their bytes:
    microseconds for real files."""
    if not max_segments:
        return
    if data.startswith(_SOI):
        what, count = "markers (or Photoshop resource blocks) before its first scan", _jpeg_steps(data, max_segments)
    elif data.startswith(_PNG_SIGNATURE):
        what, count = "chunks", _png_chunks(data, max_segments)
    else:
        return
    if count > max_segments:
        raise PayloadTooLarge(f"the image has more than {max_segments} {what} (the limit)")


_PIL_FORMATS = tuple(sorted(ACCEPTED_FORMATS))
_JPEG_FAMILY = frozenset({"MPO"})  # PIL's JPEG plugin opens these: a corrupt JPEG is not one of them


# Formats told apart by a signature no other format starts with (at least four fixed bytes; BMP's "BM" with its
# four reserved bytes zero): a 415 names them. Other plugins' prefix checks are too weak to name what they match
# (an uncompressed TGA starts 00 00 02 00, as a CUR does; "P6" begins text too): a 415 then names what the upload is
# not.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"8BPS", "PSD"),
    (0, b"%!PS-Adobe", "EPS"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"%PDF-", "PDF"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (0, b"icns", "ICNS"),
    (0, b"qoif", "QOI"),
    (0, b"DDS ", "DDS"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypavis", "AVIF"),
    (4, b"ftypheic", "HEIF"),
    (4, b"ftypheix", "HEIF"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypmsf1", "HEIF"),
)
_BMP_PREFIX, _BMP_RESERVED = b"BM", slice(6, 10)


def _named_format(prefix: bytes) -> str | None:
    """The format whose signature ``prefix`` starts with (:data:`_SIGNATURES`); None where no signature says."""
    for offset, signature, name in _SIGNATURES:
        if prefix.startswith(signature, offset):
            return name
    if prefix.startswith(_BMP_PREFIX) and prefix[_BMP_RESERVED] == bytes(4):
        return "BMP"
    return None


def _other_plugin_takes(prefix: bytes) -> bool:
    """Whether another PIL plugin's prefix check takes a file starting with ``prefix`` (PIL reads 16 bytes): an
    image, likely, of a format refused. Only the checks run: the plugins' parsers run in Python, on the event loop
    for the header check, before the format is refused (a 19.5 MB EPS of comment lines took 14.5 s, a PPM 7 s, a
    GIF 3.6 s). Their names are no answer: the checks are first come, first served (a TGA is taken as a CUR)."""
    Image.init()
    for name, (_, accept) in Image.OPEN.items():
        if name in ACCEPTED_FORMATS or name in _JPEG_FAMILY or accept is None:
            continue
        try:
            if accept(prefix):
                return True
        except Exception:  # a plugin's check of a short or odd prefix: not that format
            continue
    return False


def _refused_format(prefix: bytes) -> str | None:
    """Why an upload starting with ``prefix`` that no accepted format's plugin opens is refused with 415, naming
    its format only where its signature is plain (:func:`_named_format`); None: not an image we can tell (400)."""
    accepted = "send a JPEG, PNG or WebP image"
    named = _named_format(prefix)
    if named is not None:
        return f"image format {named} is not supported; {accepted}"
    if _other_plugin_takes(prefix):
        return "image format not supported: not a JPEG, PNG or WebP image"
    return None


def _open(
    data: bytes, max_pixels: int, max_aspect_ratio: float, max_segments: int = MAX_IMAGE_SEGMENTS
) -> tuple[Image.Image, ImageHeader]:
    if not data:
        raise InvalidImage("empty image upload")
    check_segments(data, max_segments)
    try:
        # Image.open reads only the header: format and size are checked before any pixel is decoded. Only the
        # accepted formats' plugins may parse it (see _refused_format).
        image = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
    except UnidentifiedImageError as exc:
        refused = _refused_format(data[:16])
        if refused is not None:
            raise UnsupportedMediaType(refused) from exc
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


# The JPEG fast path: libjpeg-turbo through simplejpeg (its TurboJPEG API), for JPEGs it can vouch for; the same
# libjpeg does the work under PIL, so the pixels are the PIL path's, bit for bit (default DCT and upsampling;
# tests/gateway/processing/test_images.py checks a corpus). It skips PIL's Python-level header parse (tens of
# microseconds on the event loop per image request) and its decode overhead. Anything it is not sure about
# (other formats, 12-bit, lossless or arithmetic coding, CMYK, several frames (MPO), an EXIF orientation it
# cannot read plainly, an XMP orientation, any limit exceeded, any libjpeg warning) goes through the PIL path,
# so every refusal and error is the PIL path's own; so does a JPEG of many pixels x scans (see _load_scaled).
_SOI = b"\xff\xd8\xff"
_FAST_SOF = frozenset({0xC0, 0xC1, 0xC2})  # baseline, extended and progressive Huffman-coded DCT
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # every start-of-frame marker (not DHT, JPG, DAC)
_SOS = 0xDA
_MAX_SEGMENTS = 64  # segments before the first scan; a camera's JPEG has about ten
_MODES_BY_COMPONENTS = {1: "L", 3: "RGB", 4: "CMYK"}  # as PIL names them
_FAST_COLORSPACES = frozenset({"YCbCr", "RGB", "Gray"})
_EXIF_PREFIX = b"Exif\x00\x00"
_XMP_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"
_MPF_PREFIX = b"MPF\x00"
_SHORT = 3  # TIFF field type
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}  # bytes a value
_IFD_ENTRY_II = struct.Struct("<HHLL")  # tag, type, count, value or offset
_IFD_ENTRY_MM = struct.Struct(">HHLL")
_SEGMENT = struct.Struct(">BBH")  # 0xFF, marker, length
_FRAME = struct.Struct(">BHHB")  # start of frame: precision, height, width, components
_NO_ORIENTATION = 0


class _Jpeg(NamedTuple):  # a NamedTuple: built in a fraction of a frozen dataclass's time
    """What the fast path read from a JPEG's markers and libjpeg's header.

    Args:
        header: as :func:`read_header` gives it.
        colorspace: libjpeg's colorspace (``YCbCr``, ``RGB``, ``Gray``, ``CMYK``, ``YCCK``).
        orientation: the EXIF orientation, ``_NO_ORIENTATION`` where there is none.
    """

    header: ImageHeader
    colorspace: str
    orientation: int


def _exif_orientation(data: bytes, start: int, end: int) -> int | None:
    """The orientation in IFD0 of the TIFF structure ``data[start:end]`` (an APP1 Exif payload), as PIL's
    ``getexif()`` reads it; ``_NO_ORIENTATION`` when absent; None when not plainly well formed (PIL decides).

    PIL reads IFD0's entries in order, keeps the first of a tag, and stops at the first whose out-of-line
    value lies past the end: every entry before the orientation must be of a known type with its value
    inside the data.
    """
    if end - start < 8:
        return None
    byte_order = data[start : start + 4]
    if byte_order == b"II*\x00":
        entry_format, offset_format = _IFD_ENTRY_II, "<L"
    elif byte_order == b"MM\x00*":
        entry_format, offset_format = _IFD_ENTRY_MM, ">L"
    else:
        return None
    ifd = start + struct.unpack_from(offset_format, data, start + 4)[0]
    if ifd + 2 > end:
        return None
    count = struct.unpack_from(offset_format[0] + "H", data, ifd)[0]
    if ifd + 2 + 12 * count > end:
        return None
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind, values, offset = entry_format.unpack_from(data, entry)
        if tag == _EXIF_ORIENTATION:
            if kind != _SHORT or values != 1:
                return None
            return struct.unpack_from(offset_format[0] + "H", data, entry + 8)[0]
        unit = _TIFF_TYPE_SIZES.get(kind)
        if unit is None or (unit * values > 4 and start + offset + unit * values > end):
            return None
    return _NO_ORIENTATION


def _scan_jpeg(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, components, EXIF orientation) from the segments before the first scan of an
    8-bit Huffman DCT JPEG; None for anything else, or anything unusual (PIL decides)."""
    frame = None
    orientation = _NO_ORIENTATION
    exif = xmp = False
    i, size = 2, len(data)
    for _ in range(_MAX_SEGMENTS):
        if i + 4 > size:
            return None  # truncated
        prefix, marker, length = _SEGMENT.unpack_from(data, i)
        if prefix != 0xFF:
            return None  # fill bytes, junk: not for the fast path
        if marker == _SOS:
            break
        end = i + 2 + length
        if length < 2 or end > size or 0xD0 <= marker <= 0xD9 or marker in (0x01, 0xFF):
            return None  # a standalone marker, a bad length
        if marker in _SOF:
            if frame is not None or marker not in _FAST_SOF or length < 8:
                return None
            precision, height, width, components = _FRAME.unpack_from(data, i + 4)
            if precision != 8:
                return None
            frame = (width, height, components)
        elif marker == 0xE1 and data.startswith(_EXIF_PREFIX, i + 4):
            found = _exif_orientation(data, i + 4 + len(_EXIF_PREFIX), end)
            if exif or found is None:
                return None  # PIL joins several Exif segments: not for the fast path
            exif, orientation = True, found
        elif marker == 0xE1 and data.startswith(_XMP_PREFIX, i + 4):
            xmp = True
        elif marker == 0xE2 and data.startswith(_MPF_PREFIX, i + 4):
            return None  # several frames: PIL opens it as MPO
        i = end
    else:
        return None
    if frame is None or (xmp and orientation == _NO_ORIENTATION):
        return None  # PIL takes the orientation from XMP when EXIF has none
    return (*frame, orientation)


def _fast_jpeg(data: bytes, max_pixels: int, max_aspect_ratio: float) -> _Jpeg | None:
    """The fast path's reading of a JPEG within every limit; None: the PIL path decides."""
    if not data.startswith(_SOI):
        return None
    scanned = _scan_jpeg(data)
    if scanned is None:
        return None
    width, height, components, orientation = scanned
    mode = _MODES_BY_COMPONENTS.get(components)
    pixels = width * height
    bomb = Image.MAX_IMAGE_PIXELS  # past it PIL warns or refuses: its path decides
    if (
        mode is None
        or pixels < 1
        or pixels > max_pixels
        or (bomb is not None and pixels > bomb)
        or (max_aspect_ratio and max(width, height) > max_aspect_ratio * min(width, height))
    ):
        return None
    try:
        tj_height, tj_width, colorspace, _ = simplejpeg.decode_jpeg_header(data, strict=True)
    except (ValueError, RuntimeError, KeyError):  # libjpeg's errors and warnings (strict)
        return None
    if (tj_width, tj_height) != (width, height) or (colorspace == "Gray") != (components == 1):
        return None
    return _Jpeg(ImageHeader("JPEG", mode, width, height), colorspace, orientation)


def _draft_denominator(width: int, height: int, factor: float) -> int | None:
    """The DCT scaling 1/N that PIL's ``draft`` picks in :func:`load_scaled`; None where PIL would fail."""
    if factor > 0.5:
        return 1
    wanted_w, wanted_h = math.ceil(width * factor), math.ceil(height * factor)
    if wanted_w < 1 or wanted_h < 1:
        return None
    ratio = min(width // wanted_w, height // wanted_h)
    return next(s for s in (8, 4, 2, 1) if ratio >= s)


# ImageOps.exif_transpose's transposition by EXIF orientation: the one table of them, for both paths.
_TRANSPOSE: dict[object, Image.Transpose] = {  # keyed as PIL reads the tag: any value
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# What each of PIL's transpositions does to an [H, W, ...] array (the fast path's), keyed by PIL's own name of
# it: nothing here depends on EXIF, so this table cannot drift from the one above.
_TRANSPOSE_ARRAY: dict[Image.Transpose, Callable[[np.ndarray], np.ndarray]] = {
    Image.Transpose.FLIP_LEFT_RIGHT: lambda a: a[:, ::-1],
    Image.Transpose.FLIP_TOP_BOTTOM: lambda a: a[::-1],
    Image.Transpose.ROTATE_90: lambda a: np.rot90(a, 1),  # counter-clockwise, as PIL's
    Image.Transpose.ROTATE_180: lambda a: a[::-1, ::-1],
    Image.Transpose.ROTATE_270: lambda a: np.rot90(a, -1),
    Image.Transpose.TRANSPOSE: lambda a: a.swapaxes(0, 1),
    Image.Transpose.TRANSVERSE: lambda a: a[::-1, ::-1].swapaxes(0, 1),
}
_SWAPS_AXES = frozenset(  # those that swap width and height
    {Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE}
)


def _fast_jpeg_scaled(
    data: bytes,
    max_pixels: int,
    max_aspect_ratio: float,
    scale: Callable[[int, int], float] | None,
    pil: bool = False,
    jpeg: _Jpeg | None = None,
) -> tuple[np.ndarray | Image.Image, tuple[int, int]] | None:
    """What :func:`load_scaled` gives, for a JPEG the fast path takes, as an RGB [H, W, 3] or grey [H, W]
    uint8 array, or (``pil``) as a PIL image in mode RGB or L (PIL holds RGB as RGBX: decoded as RGBX, the
    image is a plain copy, where an RGB array's would be repacked, twice the CPU); None: use
    :func:`load_scaled`. ``jpeg``: what :func:`_fast_jpeg` read of it, when the caller has it."""
    jpeg = jpeg or _fast_jpeg(data, max_pixels, max_aspect_ratio)
    if jpeg is None or jpeg.colorspace not in _FAST_COLORSPACES:
        return None
    width, height = jpeg.header.width, jpeg.header.height
    denominator = _draft_denominator(width, height, scale(width, height) if scale is not None else 1.0)
    if denominator is None:
        return None
    out_w, out_h = -(-width // denominator), -(-height // denominator)
    # TurboJPEG takes the smallest of its scalings M/8 (M = 1..8) that gives at least the size asked for: that
    # is PIL's 1/N unless (M - 1)/8 gives the same size (tiny images), which would decode differently.
    smaller = 8 // denominator - 1
    if smaller and -(-width * smaller // 8) == out_w and -(-height * smaller // 8) == out_h:
        return None
    grey = jpeg.colorspace == "Gray"
    colorspace = "GRAY" if grey else "RGBX" if pil else "RGB"
    try:
        array = simplejpeg.decode_jpeg(data, colorspace, min_width=out_w, min_height=out_h, strict=True)
    except (ValueError, RuntimeError, KeyError):  # corrupt or truncated data, libjpeg warnings (strict)
        return None
    if array.shape[:2] != (out_h, out_w):
        return None
    if grey:
        array = array[..., 0]
    method = _TRANSPOSE.get(jpeg.orientation)
    full = (height, width) if method in _SWAPS_AXES else (width, height)
    if pil:
        # At most two copies at once (the budget's bound, ``ImageHeader.decode_bytes``), as in the PIL path.
        image = Image.fromarray(array) if grey else Image.frombytes("RGB", array.shape[1::-1], array, "raw", "RGBX")
        del array
        return (image if method is None else image.transpose(method)), full
    if method is not None:
        array = np.ascontiguousarray(_TRANSPOSE_ARRAY[method](array))
    return array, full


# A JPEG of several scans (progressive, or sequential with a scan per component) is decoded scan by scan over
# the whole image: each scan costs about a decode of its components, and a scan can be a few bytes. A 94 kB
# progressive 4000x4000 JPEG with its last scan repeated 1000 times took 37 s of CPU to decode (both paths), far
# past any request deadline (its thread cannot be stopped). libjpeg writes 10 scans (6 for grey).
MAX_JPEG_SCANS = 100
# The count alone still let a 40 MP JPEG of 100 scans through: what a decode costs is about its pixels times its
# scans (benchmarks/jpeg_scan_cost.py), bounded by the gateway's ``max_jpeg_scan_pixels`` (checked before
# preprocessing, in ImageTask.admitted; here only where a caller passes it).
_SEQUENTIAL_SOF = frozenset({0xC0, 0xC1})
_SOS_MARKER = b"\xff\xda"


def _first_scan(data: bytes) -> tuple[int, bool]:
    """Where the first scan of ``data`` starts (its SOS marker), stepping over the segments before it by their
    lengths as libjpeg does (an EXIF thumbnail's own scans inside them are never decoded), and whether it is
    plainly a sequential JPEG whose first scan holds every component: libjpeg then reads that one scan and nothing
    after it. (2, False) where the segments are not plain (a standalone marker or EOI, fill or junk bytes, a bad
    length, two frames, more than ``_MAX_SEGMENTS``): every SOS marker in the file then counts."""
    components, sequential = None, True
    i, size = 2, len(data)
    for _ in range(_MAX_SEGMENTS):
        if i + 5 > size:
            break
        prefix, marker, length = _SEGMENT.unpack_from(data, i)
        if prefix != 0xFF or length < 2 or marker in _JPEG_STANDALONE or marker in (0x00, 0xD9, 0xFF):
            break  # where libjpeg would step otherwise than by a length
        if marker == _SOS:
            return i, sequential and components is not None and data[i + 4] == components
        if marker in _SOF:
            if components is not None or i + 10 > size:
                break
            sequential, components = marker in _SEQUENTIAL_SOF, data[i + 9]
        i += 2 + length
    return 2, False


def _one_scan(data: bytes) -> bool:
    """Whether ``data`` is plainly a sequential JPEG whose first scan holds every component: libjpeg then
    reads that one scan and nothing after it (cheap to tell from the markers before it)."""
    return _first_scan(data)[1]


def jpeg_scans(data: bytes) -> int:
    """The scans libjpeg may decode from a JPEG ``data``: 1 for a sequential JPEG whose first scan holds every
    component (the usual camera or encoder output), else every start-of-scan marker from the first scan on
    (0xFF 0xDA cannot occur in entropy-coded data; a thumbnail's scans before it are not counted), about 1 ms a
    megabyte."""
    start, one = _first_scan(data)
    return 1 if one else data.count(_SOS_MARKER, start)


def scan_count_matters(data: bytes, pixels: int, max_scans: int, max_scan_pixels: int) -> bool:
    """Whether ``max_scan_pixels`` could refuse a JPEG ``data`` of ``pixels`` pixels that ``max_scans`` lets
    through (microseconds: the markers before its first scan only, no count); False for anything but a JPEG."""
    if not max_scan_pixels or (max_scans and pixels * max_scans <= max_scan_pixels):
        return False
    return data.startswith(_SOI) and not _one_scan(data)


def check_jpeg_scans(data: bytes, max_scans: int, pixels: int = 0, max_scan_pixels: int = 0) -> int:
    """413 for a JPEG with more than ``max_scans`` scans, or (of ``pixels`` pixels) more than ``max_scan_pixels``
    pixels times scans (each 0: no limit), before any of it is decoded. Scans counted by :func:`jpeg_scans`,
    once for both limits (a sequential JPEG with one interleaved scan, the usual camera or encoder output, costs
    nothing); returns the count, 0 where there was none to make (no limit, or not a JPEG)."""
    if not (max_scans or (pixels and max_scan_pixels)) or not data.startswith(_SOI):
        return 0
    scans = jpeg_scans(data)
    if max_scans and scans > max_scans:
        raise PayloadTooLarge(f"the JPEG has {scans} scans; the limit is {max_scans}")
    if max_scan_pixels and pixels * scans > max_scan_pixels:
        raise PayloadTooLarge(
            f"the JPEG has {scans} scans of {pixels} pixels (each costs about a decode of the image); "
            f"the limit is {max_scan_pixels} pixels x scans"
        )
    return scans


def fast_header(data: bytes, max_pixels: int, max_aspect_ratio: float = 0.0) -> ImageHeader | None:
    """A JPEG's header as libjpeg-turbo reads it (microseconds, bounded by ``max_image_segments``
    through :func:`_scan_jpeg`); None for anything the fast path leaves to PIL (:func:`read_header`)."""
    jpeg = _fast_jpeg(data, max_pixels, max_aspect_ratio)
    return None if jpeg is None else jpeg.header


def read_header(
    data: bytes,
    max_pixels: int,
    max_aspect_ratio: float = 0.0,
    fast_jpeg: bool = True,
    max_segments: int = MAX_IMAGE_SEGMENTS,
) -> ImageHeader:
    """Format and size from the header alone; 400/413/415/422 for what ``load_image`` would refuse.
    ``fast_jpeg``: a JPEG's header read by libjpeg-turbo directly (the same answer, a few microseconds
    instead of PIL's tens). ``max_segments``: see :func:`check_segments`."""
    if fast_jpeg and (header := fast_header(data, max_pixels, max_aspect_ratio)) is not None:
        return header
    return _open(data, max_pixels, max_aspect_ratio, max_segments)[1]


def load_image(data: bytes, max_pixels: int, max_aspect_ratio: float = 0.0) -> Image.Image:
    """Decode JPEG/PNG/WebP bytes into an upright (EXIF orientation applied) PIL image in mode RGB or L.

    Greyscale and 1-bit images stay one byte a pixel (``resize_center_crop`` and ``letterbox`` convert
    to RGB after resizing, with the same result); every other mode is converted to RGB. At most
    ``ImageHeader.decode_bytes`` are held at once. ``max_aspect_ratio`` 0 means no limit.
    """
    return load_scaled(data, max_pixels, max_aspect_ratio)[0]


def load_scaled(
    data: bytes,
    max_pixels: int,
    max_aspect_ratio: float = 0.0,
    scale: Callable[[int, int], float] | None = None,
    max_jpeg_scans: int = MAX_JPEG_SCANS,
    max_segments: int = MAX_IMAGE_SEGMENTS,
    max_scan_pixels: int = 0,
) -> tuple[Image.Image, tuple[int, int]]:
    """As :func:`load_image`, for an image about to be resized; also its full upright size.

    ``scale(width, height)`` is the factor the caller will resize the (width, height) image by
    (symmetric in width and height, so EXIF rotation does not change it). A JPEG is then decoded at
    the smallest DCT-domain scale (1/2, 1/4, 1/8) that still keeps both sides at least that factor
    times the full size (PIL ``draft``), so the resize that follows gets at least the pixels it
    needs; other formats, and factors above 1/2, decode in full. Returns the image and the
    (width, height) the full decode has. A JPEG of more than ``max_jpeg_scans`` scans, or more than
    ``max_scan_pixels`` pixels x scans: 413 (:func:`check_jpeg_scans`; each 0: no limit); ``max_segments``: see
    :func:`check_segments`.
    """
    image, header = _open(data, max_pixels, max_aspect_ratio, max_segments)
    if header.format == "JPEG":
        check_jpeg_scans(data, max_jpeg_scans, header.width * header.height, max_scan_pixels)
    factor = scale(header.width, header.height) if scale is not None else 1.0
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION)  # as ImageOps.exif_transpose reads it
        method = _TRANSPOSE.get(orientation)
        if header.format == "JPEG" and factor <= 0.5:
            image.draft(None, (math.ceil(header.width * factor), math.ceil(header.height * factor)))
        image.load()
        if method is not None:
            # exif_transpose's rotation alone: it would also rewrite the EXIF (of no use here), which raises
            # TypeError or struct.error on some corrupt ones (a 500).
            image = image.transpose(method)
        if image.mode not in ("RGB", "L"):
            image = image.convert("L" if image.mode == "1" else "RGB")
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image has too many pixels: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise InvalidImage(f"cannot decode image: {exc}") from exc
    full = (header.height, header.width) if method in _SWAPS_AXES else (header.width, header.height)
    return image, full


# A JPEG of more pixels x scans than this is PIL's to decode: TurboJPEG (strict) tells a libjpeg warning (a bogus
# progression, corrupt data) only after it has decoded every scan, and PIL then decoded them all again (a 40 MP JPEG
# of 100 scans: 8 s of CPU instead of 4, benchmarks/jpeg_scan_cost.py). Below it the fast path's gain is worth the
# risk (a 512x512 progressive JPEG's detect_input: 4 ms against PIL's 8); at 12 MP and 10 scans it gained nothing.
_FAST_MAX_SCAN_PIXELS = 50_000_000


def _load_scaled(
    data: bytes,
    max_pixels: int,
    max_aspect_ratio: float,
    scale: Callable[[int, int], float] | None,
    fast_jpeg: bool,
    pil: bool = False,
    max_jpeg_scans: int = MAX_JPEG_SCANS,
    max_segments: int = MAX_IMAGE_SEGMENTS,
    max_scan_pixels: int = 0,
) -> tuple[np.ndarray | Image.Image, tuple[int, int]]:
    """:func:`load_scaled`, through the JPEG fast path first when ``fast_jpeg`` (see :func:`_fast_jpeg_scaled`)."""
    if fast_jpeg and (jpeg := _fast_jpeg(data, max_pixels, max_aspect_ratio)) is not None:
        pixels = jpeg.header.width * jpeg.header.height
        scans = check_jpeg_scans(data, max_jpeg_scans, pixels, max_scan_pixels) or jpeg_scans(data)
        max_jpeg_scans = max_scan_pixels = 0  # checked
        if pixels * scans <= _FAST_MAX_SCAN_PIXELS:
            fast = _fast_jpeg_scaled(data, max_pixels, max_aspect_ratio, scale, pil, jpeg)
            if fast is not None:
                return fast
    return load_scaled(data, max_pixels, max_aspect_ratio, scale, max_jpeg_scans, max_segments, max_scan_pixels)


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
    fast_jpeg: bool = True,
    max_jpeg_scans: int = MAX_JPEG_SCANS,
    max_segments: int = MAX_IMAGE_SEGMENTS,
    max_scan_pixels: int = 0,
) -> tuple[np.ndarray, Letterbox]:
    """The whole detection preprocessing: decode (a JPEG at a reduced scale when the letterbox shrinks
    it 2x or more and ``reduced_decode``; through the JPEG fast path when ``fast_jpeg``, the same pixels)
    and letterbox to ``size`` (into ``out`` when given, see :func:`letterbox`). The served path and every
    reference use this. A JPEG of more than ``max_jpeg_scans`` scans or ``max_scan_pixels`` pixels x scans: 413
    (:func:`check_jpeg_scans`); more than ``max_segments``: 413 (:func:`check_segments`)."""
    scale = (lambda w, h: letterbox_gain(w, h, size)) if reduced_decode else None
    image, full = _load_scaled(
        data,
        max_pixels,
        max_aspect_ratio,
        scale,
        fast_jpeg,
        max_jpeg_scans=max_jpeg_scans,
        max_segments=max_segments,
        max_scan_pixels=max_scan_pixels,
    )
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
    data: bytes,
    max_pixels: int,
    max_aspect_ratio: float,
    resize: int,
    crop: int,
    reduced_decode: bool = True,
    fast_jpeg: bool = True,
    max_jpeg_scans: int = MAX_JPEG_SCANS,
    max_segments: int = MAX_IMAGE_SEGMENTS,
    max_scan_pixels: int = 0,
) -> np.ndarray:
    """The whole classification preprocessing: decode (a JPEG at a reduced scale when the resize
    shrinks it 2x or more and ``reduced_decode``; through the JPEG fast path when ``fast_jpeg``, the
    same pixels), resize the shorter side to ``resize`` and centre-crop ``crop``. The served path and
    every reference use this. A JPEG of more than ``max_jpeg_scans`` scans or ``max_scan_pixels`` pixels x scans:
    413 (:func:`check_jpeg_scans`); more than ``max_segments``: 413 (:func:`check_segments`)."""
    scale = (lambda w, h: resize / min(w, h)) if reduced_decode else None
    image, full = _load_scaled(
        data,
        max_pixels,
        max_aspect_ratio,
        scale,
        fast_jpeg,
        pil=True,
        max_jpeg_scans=max_jpeg_scans,
        max_segments=max_segments,
        max_scan_pixels=max_scan_pixels,
    )
    return resize_center_crop(image, resize, crop, full)
