"""Image decoding and resizing: bounded intermediates, shape limits, and the served path equal to the array path."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from gateway.errors import InvalidImage, PayloadTooLarge, UnsupportedImageShape
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
