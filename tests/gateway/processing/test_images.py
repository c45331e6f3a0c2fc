"""Image decoding and resizing: bounded intermediates, shape limits, and the served path equal to the array path."""

from __future__ import annotations

import io
import pathlib
import zlib
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pytest
from PIL import Image, ImageFile

from gateway.errors import GatewayError, InvalidImage, PayloadTooLarge, UnsupportedImageShape, UnsupportedMediaType
from gateway.processing import images
from gateway.processing.images import (
    classify_input,
    decode_bytes_per_pixel,
    decode_image,
    detect_input,
    letterbox,
    load_image,
    load_scaled,
    read_header,
    resize_center_crop,
)

_RNG = np.random.default_rng(0)
_BASE = Image.fromarray(_RNG.integers(0, 256, (61, 93, 3), dtype=np.uint8))


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


_MODES = {
    "rgb-png": _encode(_BASE),
    "rgb-jpeg": _encode(_BASE, "JPEG"),
    "rgb-webp": _encode(_BASE, "WEBP"),
    "grey": _encode(_BASE.convert("L")),
    "bilevel": _encode(_BASE.convert("1")),
    "palette": _encode(_BASE.convert("P")),
    "rgba": _encode(_BASE.convert("RGBA")),
    "grey-alpha": _encode(_BASE.convert("LA")),
    "grey-16": _encode(Image.fromarray(_RNG.integers(0, 65535, (61, 93)).astype(np.uint16))),
    "cmyk-jpeg": _encode(_BASE.convert("CMYK"), "JPEG"),
    "tall-grey": _encode(_BASE.convert("L").resize((9, 170))),
}


@pytest.mark.parametrize("data", list(_MODES.values()), ids=list(_MODES))
def test_the_served_path_equals_the_array_path(data: bytes) -> None:
    """The tasks resize ``load_image``'s PIL image (grey stays one byte a pixel until resized); tests and
    references resize ``decode_image``'s RGB array. Both must give the same model input."""
    image = load_image(data, 10**6)
    assert image.mode in ("RGB", "L")
    array = decode_image(data, 10**6)
    assert array.shape == (image.height, image.width, 3)
    assert np.array_equal(resize_center_crop(image, 32, 28), resize_center_crop(array, 32, 28))
    served, served_box = letterbox(image, 64)
    reference, reference_box = letterbox(array, 64)
    assert np.array_equal(served, reference) and served_box == reference_box


@pytest.mark.parametrize(("width", "height"), [(40000, 1), (1, 40000), (1, 1), (3, 2000)])
def test_extreme_shapes_give_model_sized_outputs(width: int, height: int) -> None:
    """No intermediate grows with the aspect ratio: 40000x1 used to be resized to 10240000x256 first."""
    image = Image.new("L", (width, height), 200)
    crop = resize_center_crop(image, 256, 224)
    assert crop.shape == (224, 224, 3) and (crop == 200).all()
    canvas, box = letterbox(image, 640)
    assert canvas.shape == (640, 640, 3)
    assert (box.width, box.height) == (width, height)
    assert (canvas == 200).sum() >= 3  # at least one pixel of the image survives, never 0 wide


def test_aspect_ratio_limit_is_checked_from_the_header() -> None:
    wide = _encode(Image.new("RGB", (210, 10)))
    assert read_header(wide, 10**6, 21.0).width == 210
    with pytest.raises(UnsupportedImageShape) as raised:
        read_header(wide, 10**6, 20.0)
    assert raised.value.status_code == 422 and raised.value.code == "unsupported_image_shape"
    with pytest.raises(UnsupportedImageShape):
        load_image(_encode(Image.new("RGB", (10, 210))), 10**6, 20.0)
    assert load_image(wide, 10**6, 0.0).size == (210, 10)  # 0: no limit


def test_header_checks_refuse_before_decoding() -> None:
    header = read_header(_MODES["bilevel"], 10**6)
    assert (header.format, header.mode, header.width, header.height) == ("PNG", "1", 93, 61)
    assert header.decode_bytes == 93 * 61 * decode_bytes_per_pixel("1")
    assert decode_bytes_per_pixel("1") < decode_bytes_per_pixel("P") < decode_bytes_per_pixel("RGB")
    with pytest.raises(PayloadTooLarge):
        read_header(_MODES["rgb-png"], 93 * 61 - 1)
    with pytest.raises(InvalidImage):
        read_header(b"", 10**6)


def _photo_jpeg(size: tuple[int, int], orientation: int = 1) -> bytes:
    """scikit-image's astronaut resized to ``size``, as a JPEG q90 with an EXIF orientation."""
    from skimage import data

    exif = Image.Exif()
    exif[0x0112] = orientation
    photo = Image.fromarray(data.astronaut()).resize(size, Image.Resampling.BICUBIC)
    return _encode(photo, "JPEG", quality=90, exif=exif.tobytes())


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_never_below_what_the_resize_needs() -> None:
    data = _photo_jpeg((1024, 768))
    image, full = load_scaled(data, 10**7, 0.0, lambda w, h: 0.25)
    assert (image.size, full) == ((256, 192), (1024, 768))
    image, full = load_scaled(data, 10**7, 0.0, lambda w, h: 0.26)  # 1/4 would be too small: 1/2
    assert (image.size, full) == ((512, 384), (1024, 768))
    image, _ = load_scaled(data, 10**7, 0.0, lambda w, h: 0.6)  # no DCT scale between 1/2 and 1
    assert image.size == (1024, 768)
    png = _encode(Image.open(io.BytesIO(data)))  # not a JPEG: always in full
    assert load_scaled(png, 10**7, 0.0, lambda w, h: 0.25)[0].size == (1024, 768)


@pytest.mark.parametrize("orientation", [1, 6])
def test_reduced_decode_keeps_the_full_decode_geometry(orientation: int) -> None:
    """What reduced-scale decoding changes against a full decode: pixel values by a few levels at most
    on average (DCT-domain scaling instead of bilinear), never the geometry (gain, padding, box)."""
    data = _photo_jpeg((1024, 768), orientation)
    full = decode_image(data, 10**7)
    assert full.shape == ((768, 1024, 3) if orientation == 1 else (1024, 768, 3))

    crop = classify_input(data, 10**7, 0.0, 256, 224)
    reference_crop = resize_center_crop(full, 256, 224)
    assert crop.shape == reference_crop.shape == (224, 224, 3)
    assert np.abs(crop.astype(int) - reference_crop).mean() < 3.0

    canvas, box = detect_input(data, 10**7, 0.0, 320)  # 1024 -> 320: decoded at 1/2
    reference_canvas, reference_box = letterbox(full, 320)
    assert box == reference_box and (box.width, box.height) == (full.shape[1], full.shape[0])
    assert np.abs(canvas.astype(int) - reference_canvas).mean() < 3.0


def test_small_images_and_other_formats_decode_in_full() -> None:
    """Nothing is reduced unless the resize shrinks the image by 2x or more: then the array path is exact."""
    data = _photo_jpeg((512, 512))
    full = decode_image(data, 10**7)
    canvas, box = detect_input(data, 10**7, 0.0, 416)
    reference, reference_box = letterbox(full, 416)
    assert np.array_equal(canvas, reference) and box == reference_box
    assert np.array_equal(classify_input(data, 10**7, 0.0, 384, 224), resize_center_crop(full, 384, 224))
    png = _encode(Image.fromarray(full))
    assert np.array_equal(classify_input(png, 10**7, 0.0, 256, 224), resize_center_crop(full, 256, 224))


def test_reduced_decode_off_is_the_full_decode_path() -> None:
    data = _photo_jpeg((1024, 768))
    full = decode_image(data, 10**7)
    crop = classify_input(data, 10**7, 0.0, 256, 224, reduced_decode=False)
    assert np.array_equal(crop, resize_center_crop(full, 256, 224))
    canvas, box = detect_input(data, 10**7, 0.0, 320, reduced_decode=False)
    reference, reference_box = letterbox(full, 320)
    assert np.array_equal(canvas, reference) and box == reference_box


def test_a_large_shrink_averages_instead_of_skipping_pixels() -> None:
    """Columns alternating 0 and 255, shrunk 8x: area averaging gives mid grey, not stripes of 0 or 255."""
    stripes = np.zeros((640, 5120), np.uint8)
    stripes[:, 1::2] = 255
    canvas, box = letterbox(Image.fromarray(stripes), 640)
    assert box.gain == 0.125
    image = canvas[box.pad_y : box.pad_y + 80]
    assert image.shape == (80, 640, 3) and np.abs(image.astype(int) - 127.5).max() <= 1


@pytest.mark.parametrize("shape", [(480, 640, 3), (640, 200, 3), (300, 300), (1, 2000, 3), (640, 640, 3)])
def test_letterbox_into_a_given_array_equals_a_new_canvas(shape: tuple[int, ...]) -> None:
    """The served /detect draws into a reused shared-memory region: every pixel is written, whatever
    the region held before."""
    image = np.random.default_rng(1).integers(0, 255, shape, np.uint8)
    expected, box = letterbox(image, 320)
    out = np.full((320, 320, 3), 3, np.uint8)  # what an earlier request left
    got, got_box = letterbox(image, 320, out=out)
    assert got is out and got_box == box
    np.testing.assert_array_equal(got, expected)


# The JPEG fast path (libjpeg-turbo through simplejpeg) against the PIL path it replaces: the same pixels, bit
# for bit, and the same refusals.
_ROOT = pathlib.Path(__file__).resolve().parents[3]
_MAX = 10**8


def _astronaut_jpeg(size: tuple[int, int] | None = None, mode: str = "RGB", orientation: int = 1, **save: Any) -> bytes:
    """scikit-image's astronaut (resized to ``size``, converted to ``mode``) as a JPEG, quality 90 unless
    ``save`` says otherwise, with an EXIF orientation unless it is 1."""
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    if size is not None:
        photo = photo.resize(size, Image.Resampling.BICUBIC)
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        save["exif"] = exif.tobytes()
    return _encode(photo.convert(mode), "JPEG", **{"quality": 90, **save})


_FAST_CORPUS = {
    "benchmark-512": _astronaut_jpeg(),  # benchmarks/loadgen.py::jpeg_512
    "examples-astronaut": (_ROOT / "examples" / "astronaut.jpg").read_bytes(),
    "444": _astronaut_jpeg((640, 480), subsampling=0),
    "422": _astronaut_jpeg((640, 480), subsampling=1),
    "420": _astronaut_jpeg((640, 480), subsampling=2),
    "progressive": _astronaut_jpeg((480, 640), progressive=True),
    "optimized-q75": _astronaut_jpeg((600, 400), quality=75, optimize=True),
    "grey": _astronaut_jpeg((640, 480), "L"),
    "grey-progressive": _astronaut_jpeg((333, 517), "L", progressive=True),
    "odd-333x517": _astronaut_jpeg((333, 517)),
    "odd-517x333-444": _astronaut_jpeg((517, 333), subsampling=0),
    "odd-1001x77-progressive": _astronaut_jpeg((1001, 77), progressive=True),
    "rgb-colorspace": _astronaut_jpeg((640, 480), keep_rgb=True),
    "restart-markers": _astronaut_jpeg((640, 480), restart_marker_blocks=3),
    **{f"exif-{o}": _astronaut_jpeg((333, 517), orientation=o) for o in range(1, 9)},
    "exif-6-grey-422": _astronaut_jpeg((517, 333), "L", orientation=6),
    "exif-8-progressive": _astronaut_jpeg((517, 333), orientation=8, progressive=True, subsampling=1),
}


def _outcome(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """What ``function`` gives, or the class and message of what it raises."""
    try:
        return function(*args, **kwargs)
    except Exception as exc:  # every outcome is compared, errors included
        return type(exc), str(exc)


def _assert_same(fast: Any, pil: Any) -> None:
    if isinstance(pil, tuple) and len(pil) == 2 and isinstance(pil[0], type):
        assert fast == pil  # the same error
    elif isinstance(pil, np.ndarray):
        np.testing.assert_array_equal(fast, pil)
    elif isinstance(pil, tuple):  # detect_input's (canvas, box)
        np.testing.assert_array_equal(fast[0], pil[0])
        assert fast[1] == pil[1]
    else:
        assert fast == pil


def _same_everywhere(data: bytes, max_pixels: int = _MAX, max_aspect_ratio: float = 0.0) -> None:
    """read_header, classify_input and detect_input at several scales: fast path == PIL path."""
    limits = (data, max_pixels, max_aspect_ratio)
    _assert_same(_outcome(read_header, *limits), _outcome(read_header, *limits, fast_jpeg=False))
    for resize in (320, 64, 24):
        fast = _outcome(classify_input, *limits, resize, 16)
        _assert_same(fast, _outcome(classify_input, *limits, resize, 16, fast_jpeg=False))
    for size in (640, 128, 32):
        _assert_same(_outcome(detect_input, *limits, size), _outcome(detect_input, *limits, size, fast_jpeg=False))


@pytest.mark.parametrize("denominator", [1, 2, 4, 8])
@pytest.mark.parametrize("name", list(_FAST_CORPUS))
def test_the_jpeg_fast_path_equals_the_pil_path_bit_for_bit(name: str, denominator: int) -> None:
    """Each corpus JPEG at each DCT scale (1, 1/2, 1/4, 1/8) and EXIF orientation: the fast path takes it
    and decodes exactly what PIL's ``draft`` + ``load`` + ``exif_transpose`` give; classify_input and
    detect_input (the served and the bare path) are then equal too."""
    data = _FAST_CORPUS[name]
    header = read_header(data, _MAX, fast_jpeg=False)
    assert read_header(data, _MAX) == header and header.format == "JPEG"
    resize = min(header.width, header.height) // denominator
    scale = lambda w, h: resize / min(w, h)  # noqa: E731  (classify_input's)

    fast = images._fast_jpeg_scaled(data, _MAX, 0.0, scale)
    assert fast is not None, "the fast path declined it"
    image, full = load_scaled(data, _MAX, 0.0, scale)
    stored = (header.width, header.height)
    assert full == fast[1] == (stored[::-1] if name.startswith("exif-") and int(name[5]) >= 5 else stored)
    assert image.size == (-(-full[0] // denominator), -(-full[1] // denominator))  # this scale was tested
    assert isinstance(fast[0], np.ndarray) and fast[0].dtype == np.uint8 and fast[0].flags.c_contiguous
    np.testing.assert_array_equal(fast[0], np.asarray(image))
    as_pil = images._fast_jpeg_scaled(data, _MAX, 0.0, scale, pil=True)  # what classify_input resizes
    assert as_pil is not None and isinstance(as_pil[0], Image.Image) and as_pil[1] == full
    assert as_pil[0].mode == image.mode
    np.testing.assert_array_equal(np.asarray(as_pil[0]), np.asarray(image))

    crop = min(resize, 56)
    served = classify_input(data, _MAX, 0.0, resize, crop)
    np.testing.assert_array_equal(served, classify_input(data, _MAX, 0.0, resize, crop, fast_jpeg=False))
    size = max(header.width, header.height) // denominator
    canvas, box = detect_input(data, _MAX, 0.0, size)
    reference, reference_box = detect_input(data, _MAX, 0.0, size, fast_jpeg=False)
    np.testing.assert_array_equal(canvas, reference)
    assert box == reference_box


def _xmp(orientation: int) -> bytes:
    return (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="'
        + str(orientation).encode()
        + b'"/></rdf:RDF></x:xmpmeta>'
    )


def _with_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """``jpeg`` with one more segment right after SOI."""
    return jpeg[:2] + bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def _exif_payload(order: bytes, entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """An APP1 Exif payload with one IFD0 of (tag, type, count, 4-byte value) entries, byte order ``II`` or ``MM``."""
    endian: Literal["little", "big"] = "little" if order == b"II" else "big"
    tiff = order + (42).to_bytes(2, endian) + (8).to_bytes(4, endian) + len(entries).to_bytes(2, endian)
    for tag, kind, count, value in entries:
        tiff += tag.to_bytes(2, endian) + kind.to_bytes(2, endian) + count.to_bytes(4, endian) + value
    return b"Exif\x00\x00" + tiff + bytes(4)


def _mpo() -> bytes:
    buffer = io.BytesIO()
    first = Image.fromarray(_RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    first.save(buffer, "MPO", save_all=True, append_images=[first.rotate(90)])
    return buffer.getvalue()


_PLAIN = _astronaut_jpeg((96, 64))
_DECLINED = {
    "cmyk": _astronaut_jpeg((96, 64), "CMYK"),
    "xmp-orientation-6": _astronaut_jpeg((96, 64), xmp=_xmp(6)),
    "exif-orientation-as-long": _with_segment(
        _PLAIN, 0xE1, _exif_payload(b"MM", [(0x0112, 4, 1, bytes([0, 0, 0, 6]))])
    ),
    "two-exif-segments": _with_segment(_FAST_CORPUS["exif-6"], 0xE1, _exif_payload(b"II", [])),
    "exif-ifd-past-the-end": _with_segment(_PLAIN, 0xE1, b"Exif\x00\x00II*\x00\xff\x00\x00\x00"),
    "exif-not-tiff": _with_segment(_PLAIN, 0xE1, b"Exif\x00\x00XX*\x00\x08\x00\x00\x00"),
    "mpo": _mpo(),
    "1x1": _astronaut_jpeg((1, 1)),
    "5x3": _astronaut_jpeg((5, 3)),
    "truncated-header": _PLAIN[:200],
    "truncated-scan": _PLAIN[: len(_PLAIN) // 2],
    "png-in-disguise": b"\xff\xd8\xff" + _MODES["rgb-png"],
}


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # PIL's, for exif-ifd-past-the-end
@pytest.mark.parametrize("name", list(_DECLINED))
def test_what_the_jpeg_fast_path_declines_goes_through_pil_with_the_same_outcome(name: str) -> None:
    """CMYK, an orientation only in XMP, an EXIF orientation it cannot read plainly, several frames (MPO,
    refused 415), images so small a coarser DCT scale gives the same size, corrupt data: PIL decides, so
    results and refusals (their class and message) are the PIL path's."""
    data = _DECLINED[name]
    declined = _outcome(images._fast_jpeg_scaled, data, _MAX, 0.0, lambda w, h: 0.5)
    assert declined is None
    _same_everywhere(data)


def test_the_jpeg_fast_path_reads_what_it_can_of_an_exif_orientation() -> None:
    """SHORT orientations in either byte order are read (and applied: equal to PIL); one only in XMP, or
    none at all with XMP present, is PIL's to read."""
    for order, value in ((b"II", bytes([6, 0, 0, 0])), (b"MM", bytes([0, 6, 0, 0]))):
        data = _with_segment(_PLAIN, 0xE1, _exif_payload(order, [(0x0110, 2, 4, b"abc\x00"), (0x0112, 3, 1, value)]))
        fast = images._fast_jpeg_scaled(data, _MAX, 0.0, None)
        assert fast is not None and fast[1] == (64, 96)
        _same_everywhere(data)
    both = _astronaut_jpeg((96, 64), orientation=3, xmp=_xmp(6))  # EXIF wins over XMP, as in PIL
    assert images._fast_jpeg_scaled(both, _MAX, 0.0, None) is not None
    _same_everywhere(both)


def test_the_jpeg_fast_path_refuses_nothing_itself() -> None:
    """Every limit exceeded goes through PIL's path: the same 413/422 and message."""
    data = _FAST_CORPUS["odd-333x517"]
    _same_everywhere(data, max_pixels=333 * 517 - 1)
    _same_everywhere(data, max_aspect_ratio=1.5)
    _same_everywhere(data, max_pixels=333 * 517, max_aspect_ratio=1.6)
    with pytest.raises(PayloadTooLarge):
        read_header(data, 333 * 517 - 1)
    with pytest.raises(UnsupportedImageShape):
        classify_input(data, _MAX, 1.5, 256, 224)


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL's, on corrupt EXIF
@pytest.mark.parametrize("seed", range(8))
def test_corrupt_jpegs_give_the_pil_paths_outcome(seed: int) -> None:
    """Random bytes overwritten in the markers and in the scan, and random truncations, of EXIF-rotated
    and plain JPEGs: whatever the PIL path gives (an image or an error), the fast path gives too."""
    rng = np.random.default_rng(seed)
    for source in (_FAST_CORPUS["exif-6"], _PLAIN, _FAST_CORPUS["grey-progressive"]):
        for _ in range(12):
            data = bytearray(source)
            for where in rng.integers(2, 400 if rng.random() < 0.7 else len(data), rng.integers(1, 4)):
                data[where] = int(rng.integers(0, 256))
            if rng.random() < 0.2:
                data = data[: rng.integers(2, len(data))]
            _same_everywhere(bytes(data))


def _camera_exif_jpeg() -> bytes:
    """A small rotated JPEG (orientation 6) with a camera-like EXIF: IFD0 text and rational tags, an Exif
    IFD and a GPS IFD."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Camera Maker"
    exif[0x011A] = 72.0
    exif[0x0131] = "firmware 1.0"
    exif.get_ifd(0x8769).update({0x9003: "2024:01:01 00:00:00", 0x829A: 0.01})
    exif.get_ifd(0x8825).update({1: "N", 2: (1.0, 2.0, 3.0)})
    return _encode(Image.open(io.BytesIO(_PLAIN)), "JPEG", quality=90, exif=exif.tobytes())


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL's, on the corrupt EXIF
def test_a_corrupt_exif_of_a_rotated_jpeg_is_rotated_the_same_both_ways_never_a_500() -> None:
    """Random bytes in a camera-like EXIF of a rotated JPEG: both paths give the same outcome, and it is
    an image or a 4xx, never an error of another kind (``ImageOps.exif_transpose`` also rewrote the EXIF,
    which raised TypeError or struct.error on some of these: a 500; the rotation alone is applied now)."""
    source = _camera_exif_jpeg()
    start = source.find(b"Exif\x00\x00") + 6
    end = start + int.from_bytes(source[start - 8 : start - 6], "big") - 8
    rng = np.random.default_rng(7)
    taken = 0
    for _ in range(300):
        data = bytearray(source)
        for where in rng.integers(start, end, rng.integers(1, 4)):
            data[where] = int(rng.integers(0, 256))
        corrupt = bytes(data)
        taken += images._fast_jpeg_scaled(corrupt, _MAX, 0.0, None) is not None
        pil = _outcome(classify_input, corrupt, _MAX, 0.0, 48, 32, fast_jpeg=False)
        assert not isinstance(pil, tuple) or issubclass(pil[0], GatewayError), pil
        _assert_same(_outcome(classify_input, corrupt, _MAX, 0.0, 48, 32), pil)
    assert taken > 200  # the fast path read most of them


@pytest.mark.parametrize("orientation", range(1, 9))
def test_load_scaled_rotates_as_exif_transpose_does(orientation: int) -> None:
    """The PIL path applies the rotation itself (no EXIF rewrite): the same pixels as ``ImageOps.exif_transpose``."""
    from PIL import ImageOps

    data = _FAST_CORPUS[f"exif-{orientation}"]
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    image, full = load_scaled(data, _MAX, 0.0)
    assert full == expected.size == image.size
    np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))


def _scans(jpeg: bytes) -> list[bytes]:
    """Each scan of ``jpeg`` (its SOS segment and entropy-coded data), in order."""
    starts = [i for i in range(len(jpeg) - 1) if jpeg[i : i + 2] == b"\xff\xda"]
    ends = [*starts[1:], jpeg.rindex(b"\xff\xd9")]
    return [jpeg[s:e] for s, e in zip(starts, ends)]


def _more_scans(jpeg: bytes, extra: int) -> bytes:
    """``jpeg`` with its last scan repeated ``extra`` more times: libjpeg warns (a bogus progression) and
    decodes each one over the whole image."""
    last = _scans(jpeg)[-1]
    end = jpeg.rindex(b"\xff\xd9")
    return jpeg[:end] + last * extra + jpeg[end:]


@pytest.mark.parametrize("fast_jpeg", [True, False])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_jpeg_of_more_scans_than_the_limit_is_413_before_decoding(mode: str, fast_jpeg: bool) -> None:
    """Found by fuzzing: each scan costs about a decode of the whole image and may be a few bytes (a 94 kB
    4000x4000 progressive JPEG with its last scan repeated took 37 s of CPU, past any deadline). Past
    ``max_jpeg_scans`` both paths refuse it before decoding; at the limit it is decoded as before."""
    progressive = _encode(_BASE.convert(mode), "JPEG", progressive=True)
    scans = len(_scans(progressive))
    at_limit = _more_scans(progressive, 100 - scans)
    over = _more_scans(progressive, 101 - scans)
    limits = (_MAX, 0.0)
    reference = classify_input(at_limit, *limits, 64, 32, fast_jpeg=False, max_jpeg_scans=0)
    served = classify_input(at_limit, *limits, 64, 32, fast_jpeg=fast_jpeg, max_jpeg_scans=100)
    np.testing.assert_array_equal(served, reference)
    with pytest.raises(PayloadTooLarge, match="the JPEG has 101 scans; the limit is 100"):
        classify_input(over, *limits, 64, 32, fast_jpeg=fast_jpeg, max_jpeg_scans=100)
    with pytest.raises(PayloadTooLarge, match="101 scans"):
        detect_input(over, *limits, 64, fast_jpeg=fast_jpeg, max_jpeg_scans=100)
    with pytest.raises(PayloadTooLarge, match="101 scans"):
        load_scaled(over, *limits, max_jpeg_scans=100)
    classify_input(over, *limits, 64, 32, fast_jpeg=fast_jpeg, max_jpeg_scans=0)  # 0: no limit


def test_a_one_scan_sequential_jpeg_is_not_counted() -> None:
    """A sequential JPEG whose first scan holds every component is one scan to libjpeg: its scans are not
    counted (what follows the scan is never decoded), so it costs nothing and is never refused."""
    baseline = _encode(_BASE, "JPEG")
    assert images._one_scan(baseline) and images._one_scan(_encode(_BASE.convert("L"), "JPEG"))
    assert not images._one_scan(_encode(_BASE, "JPEG", progressive=True))
    assert not images._one_scan(_astronaut_jpeg((96, 64), "CMYK", progressive=True))
    images.check_jpeg_scans(_more_scans(baseline, 200), 100)  # not refused: libjpeg stops after the first


@pytest.mark.parametrize("fast_jpeg", [True, False])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_jpeg_over_the_scan_pixel_limit_is_413_before_decoding(
    mode: str, fast_jpeg: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by fuzzing: within ``max_jpeg_scans`` and ``max_image_pixels`` apart, a 40 MP progressive JPEG of 99
    scans still took seconds of CPU (a decode costs about pixels x scans). Past ``max_scan_pixels`` both paths
    refuse it before decoding anything; at the limit it is decoded as before."""
    progressive = _encode(_BASE.convert(mode), "JPEG", progressive=True)
    scans = images.jpeg_scans(progressive)
    assert scans == len(_scans(progressive)) > 1
    pixels = _BASE.width * _BASE.height
    limits = (_MAX, 0.0)
    reference = classify_input(progressive, *limits, 64, 32, fast_jpeg=False)
    served = classify_input(progressive, *limits, 64, 32, fast_jpeg=fast_jpeg, max_scan_pixels=pixels * scans)
    np.testing.assert_array_equal(served, reference)

    def no_decode(*args: object, **kwargs: object) -> None:
        pytest.fail("decoded before the scan-pixel limit was checked")

    monkeypatch.setattr(images.simplejpeg, "decode_jpeg", no_decode)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    message = f"the JPEG has {scans} scans of {pixels} pixels .*; the limit is {pixels * scans - 1} pixels x scans"
    with pytest.raises(PayloadTooLarge, match=message):
        classify_input(progressive, *limits, 64, 32, fast_jpeg=fast_jpeg, max_scan_pixels=pixels * scans - 1)
    with pytest.raises(PayloadTooLarge, match=message):
        detect_input(progressive, *limits, 64, fast_jpeg=fast_jpeg, max_scan_pixels=pixels * scans - 1)
    with pytest.raises(PayloadTooLarge, match=message):
        load_scaled(progressive, *limits, max_scan_pixels=pixels * scans - 1)


def test_a_jpeg_of_many_pixels_x_scans_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """TurboJPEG tells a libjpeg warning only after decoding every scan, and the PIL path then decoded them all
    again (a 40 MP JPEG of 100 scans: twice the CPU). Past ``_FAST_MAX_SCAN_PIXELS`` a JPEG of several scans goes
    to PIL alone, with the same pixels; below it, and for a JPEG of one scan, the fast path decodes it."""
    progressive = _more_scans(_encode(_BASE, "JPEG", progressive=True), 3)  # a bogus progression: libjpeg warns
    baseline = _encode(_BASE, "JPEG")
    pixels, scans = _BASE.width * _BASE.height, images.jpeg_scans(progressive)
    reference = {data: classify_input(data, _MAX, 0.0, 64, 32, fast_jpeg=False) for data in (progressive, baseline)}
    decodes: list[int] = []
    real_decode = images.simplejpeg.decode_jpeg

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        decodes.append(1)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(images.simplejpeg, "decode_jpeg", counting_decode)
    for limit, fast_decodes in ((pixels * scans, 1), (pixels * scans - 1, 0)):
        monkeypatch.setattr(images, "_FAST_MAX_SCAN_PIXELS", limit)
        decodes.clear()
        np.testing.assert_array_equal(classify_input(progressive, _MAX, 0.0, 64, 32), reference[progressive])
        assert len(decodes) == fast_decodes
    decodes.clear()
    np.testing.assert_array_equal(classify_input(baseline, _MAX, 0.0, 64, 32), reference[baseline])
    assert len(decodes) == 1


def test_scans_are_counted_from_the_first_scan_of_the_image() -> None:
    """An EXIF thumbnail's scans (inside a segment before the image's first scan) are never decoded: a
    progressive photo with a progressive thumbnail is counted by its own scans. Where the segments before the
    first scan are not plain (a standalone marker, which libjpeg steps over otherwise than by a length), every
    scan in the file counts."""
    progressive = _encode(_BASE, "JPEG", progressive=True)
    thumbnail = _encode(_BASE.resize((16, 11)), "JPEG", progressive=True)
    with_thumbnail = _with_segment(progressive, 0xE1, b"Exif\x00\x00" + thumbnail)
    assert with_thumbnail.count(b"\xff\xda") == 2 * images.jpeg_scans(progressive)
    assert images.jpeg_scans(with_thumbnail) == images.jpeg_scans(progressive) == len(_scans(progressive))
    pixels = _BASE.width * _BASE.height
    images.check_jpeg_scans(with_thumbnail, 100, pixels, pixels * images.jpeg_scans(progressive))  # not refused
    standalone = progressive[:2] + b"\xff\x01" + with_thumbnail[2:]  # TEM: no length follows
    assert images.jpeg_scans(standalone) == with_thumbnail.count(b"\xff\xda")
    baseline = _encode(_BASE, "JPEG")
    assert images.jpeg_scans(_more_scans(baseline, 200)) == 1  # libjpeg stops after its one scan


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def _segment_bombs(n: int) -> dict[str, bytes]:
    """Small images with ``n`` of what PIL steps over one at a time in Python before the pixels."""
    jpeg, png = _encode(_BASE, "JPEG"), _encode(_BASE, "PNG")
    after_ihdr = len(b"\x89PNG\r\n\x1a\n") + 25
    return {
        "jpeg-app-segments": jpeg[:2] + b"\xff\xe5\x00\x02" * n + jpeg[2:],
        "jpeg-fill-bytes": jpeg[:2] + b"\xff" * n + jpeg[2:],
        "jpeg-junk-bytes": jpeg[:2] + b"\xff\xfe\x00\x02" + b"\x00" * n + jpeg[2:],
        "png-chunks": png[:after_ihdr] + _png_chunk(b"abCd", b"") * n + png[after_ihdr:],
        "jpeg-photoshop-blocks": jpeg[:2] + b"".join(_app13(min(5000, n - k)) for k in range(0, n, 5000)) + jpeg[2:],
    }


def _app13(blocks: int) -> bytes:
    """An APP13 Photoshop segment of ``blocks`` empty resource blocks (PIL reads each in a Python loop)."""
    payload = b"Photoshop 3.0\x00" + (b"8BIM\x04\x04\x00\x00" + bytes(4)) * blocks
    return b"\xff\xed" + (len(payload) + 2).to_bytes(2, "big") + payload


@pytest.mark.parametrize("name", list(_segment_bombs(1)))
def test_an_image_of_more_segments_than_the_limit_is_413_before_pil_parses_it(name: str) -> None:
    """Found by fuzzing: PIL parses JPEG markers (fill and junk bytes one by one) and PNG chunks in Python,
    the header check on the event loop: a 19 MB JPEG of empty APP segments held the gateway's event loop for
    15 s (19.7 MB of Photoshop resource blocks, 2 s). Past ``max_segments`` every entry point refuses it first;
    well under it the image decodes as before. The JPEG fast path never runs PIL's parser: it reads a file of a
    few segments (a few APP13 segments of many blocks) at no such cost, and serves it."""
    over = _segment_bombs(10_001)[name]
    if name == "jpeg-photoshop-blocks":
        assert read_header(over, _MAX, 0.0, max_segments=10_000) == read_header(over, _MAX, 0.0, max_segments=0)
    for fast_jpeg in (True, False) if name != "jpeg-photoshop-blocks" else (False,):
        with pytest.raises(PayloadTooLarge, match="more than 10000 "):
            read_header(over, _MAX, 0.0, fast_jpeg, max_segments=10_000)
        with pytest.raises(PayloadTooLarge, match="more than 10000 "):
            classify_input(over, _MAX, 0.0, 64, 32, fast_jpeg=fast_jpeg, max_segments=10_000)
        with pytest.raises(PayloadTooLarge, match="more than 10000 "):
            detect_input(over, _MAX, 0.0, 64, fast_jpeg=fast_jpeg, max_segments=10_000)
    with pytest.raises(PayloadTooLarge, match="more than 10000 "):
        load_scaled(over, _MAX, 0.0, max_segments=10_000)
    under = _segment_bombs(9_000)[name]
    assert read_header(under, _MAX, 0.0, max_segments=10_000) == read_header(under, _MAX, 0.0, max_segments=0)
    np.testing.assert_array_equal(
        classify_input(under, _MAX, 0.0, 64, 32, max_segments=10_000),
        classify_input(under, _MAX, 0.0, 64, 32, max_segments=0),
    )
    classify_input(over, _MAX, 0.0, 64, 32, max_segments=0)  # 0: no limit


def test_the_segment_count_follows_pils_steps() -> None:
    """Segments, fill bytes and junk bytes count one each, up to the first scan; a PNG counts every chunk."""
    jpeg = _encode(_BASE, "JPEG")
    plain = images._jpeg_steps(jpeg, 10_000)
    assert 3 <= plain <= 12  # APP0, DQT x2, SOF, DHT x4, SOS: what PIL writes
    assert images._jpeg_steps(jpeg[:2] + b"\xff\xe5\x00\x02" * 7 + jpeg[2:], 10_000) == plain + 7
    assert images._jpeg_steps(jpeg[:2] + b"\xff" * 7 + jpeg[2:], 10_000) == plain + 7
    assert images._jpeg_steps(jpeg[:2] + b"\xff\xfe\x00\x02" + b"\x00" * 7 + jpeg[2:], 10_000) == plain + 8
    assert images._jpeg_steps(jpeg[:2] + b"\xff\xe5\x00\x02" * 50 + jpeg[2:], 20) == 21  # stops past the limit
    png = _encode(_BASE, "PNG")
    assert images._png_chunks(png, 10_000) == 3  # IHDR, IDAT, IEND
    for corpus in (_FAST_CORPUS, _MODES, _DECLINED):
        for data in corpus.values():
            images.check_segments(data, 100)  # real files are far under any limit


_REFUSED = {
    "EPS": (b"%!PS-Adobe-3.0 EPSF-3.0\n" + b"%%Comment: x\n" * 1000 + b"%%BoundingBox: 0 0 8 8\n", "EpsImagePlugin"),
    "PPM": (b"P6\n" + b"#c\n" * 1000 + b"8 8\n255\n" + bytes(192), "PpmImagePlugin"),
    "GIF": (_encode(_BASE.convert("P"), "GIF"), "GifImagePlugin"),
    "TIFF": (_encode(_BASE, "TIFF"), "TiffImagePlugin"),
    "BMP": (_encode(_BASE, "BMP"), "BmpImagePlugin"),
}


@pytest.mark.parametrize("fmt", list(_REFUSED))
def test_a_refused_format_is_415_without_its_pil_parser_running(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by fuzzing: PIL parsed formats the gateway refuses in Python before the 415, on the event loop
    for the header check (a 19.5 MB EPS of comment lines held it for 14.5 s, a PPM 7 s, a GIF 3.6 s). Only
    the JPEG, PNG and WebP plugins parse now; other formats are named by their plugins' prefix checks."""
    import importlib

    data, module = _REFUSED[fmt]
    plugin = importlib.import_module(f"PIL.{module}")
    for cls in vars(plugin).values():
        if isinstance(cls, type) and issubclass(cls, Image.Image) and "_open" in vars(cls):
            monkeypatch.setattr(cls, "_open", lambda self: pytest.fail(f"{type(self).__name__} parsed the upload"))
    named = "not a JPEG, PNG or WebP image" if fmt == "PPM" else f"image format {fmt} is not supported"
    for fast_jpeg in (True, False):
        with pytest.raises(UnsupportedMediaType, match=named):
            read_header(data, _MAX, 0.0, fast_jpeg)
    with pytest.raises(UnsupportedMediaType):
        classify_input(data, _MAX, 0.0, 64, 32)


def _saved(fmt: str) -> bytes:
    return _encode(_BASE, fmt)


_TOLD_APART = {
    # An uncompressed TGA starts 00 00 02 00, as PIL's CUR check wants: it was refused as "image format CUR".
    "TGA": (_saved("TGA"), "image format not supported: not a JPEG, PNG or WebP image"),
    "PPM": (_saved("PPM"), "image format not supported: not a JPEG, PNG or WebP image"),
    "ICO": (_saved("ICO"), "image format not supported: not a JPEG, PNG or WebP image"),
    "GIF": (_saved("GIF"), "image format GIF is not supported"),
    "TIFF": (_saved("TIFF"), "image format TIFF is not supported"),
    "BMP": (_saved("BMP"), "image format BMP is not supported"),
    "HEIF": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "image format HEIF is not supported"),
}


@pytest.mark.parametrize("fmt", list(_TOLD_APART))
def test_a_415_names_a_format_only_where_its_signature_says_it(fmt: str) -> None:
    """PIL's prefix checks are first come, first served and some are weak (a TGA passed CUR's): a 415 names the
    format only where its first bytes are a signature no other format has, and otherwise says what it is not.
    Bytes no image format's check takes stay 400."""
    data, message = _TOLD_APART[fmt]
    for fast_jpeg in (True, False):
        with pytest.raises(UnsupportedMediaType) as refused:
            read_header(data, _MAX, 0.0, fast_jpeg)
        assert str(refused.value).startswith(message), str(refused.value)
        assert "CUR" not in str(refused.value)
    with pytest.raises(InvalidImage, match="not a decodable image"):
        read_header(b"plain text, no image at all", _MAX, 0.0)
