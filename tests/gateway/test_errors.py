"""Bad input gets a clear 4xx with a JSON error body; an unreachable Triton gets 503."""

from __future__ import annotations

import io
import pathlib
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway import Settings, create_app
from gateway.errors import TritonUnavailable
from tests.helpers import free_port


def _image(fmt: str, size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


def _assert_error(response, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]


@pytest.mark.parametrize("route", ["/detect", "/classify"])
@pytest.mark.parametrize(
    ("payload", "content_type", "status", "code"),
    [
        (b"definitely not an image", "image/jpeg", 400, "invalid_image"),
        (b"", "image/png", 400, "invalid_image"),
        (_image("PNG")[:60], "image/png", 400, "invalid_image"),
        (_image("GIF"), "image/gif", 415, "unsupported_media_type"),
        (_image("GIF"), "application/octet-stream", 415, "unsupported_media_type"),
        (_image("BMP"), "image/bmp", 415, "unsupported_media_type"),
        (_image("PNG"), "text/plain", 415, "unsupported_media_type"),
    ],
    ids=["garbage", "empty", "truncated", "gif", "gif-octet-stream", "bmp", "text-plain"],
)
def test_bad_uploads(client: TestClient, route: str, payload: bytes, content_type: str, status: int, code: str) -> None:
    _assert_error(client.post(route, files={"file": ("upload", payload, content_type)}), status, code)


@pytest.mark.parametrize("route", ["/detect", "/classify"])
def test_missing_file_is_422(client: TestClient, route: str) -> None:
    _assert_error(client.post(route), 422, "validation_error")


def _form(*parts: bytes, boundary: str = "BB") -> dict[str, object]:
    body = b"".join(f"--{boundary}\r\n".encode() + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return {"content": body, "headers": {"content-type": f"multipart/form-data; boundary={boundary}"}}


_PNG_PART = (
    b'Content-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n' + _image("PNG")
)


@pytest.mark.parametrize("route", ["/detect", "/classify"])
@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        (
            {"content": b"--BB\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=BB"}},
            400,
            "invalid_multipart",
        ),
        ({"content": b"x", "headers": {"content-type": "multipart/form-data"}}, 400, "invalid_multipart"),
        (_form(_PNG_PART, _PNG_PART), 422, "validation_error"),
        (_form(b'Content-Disposition: form-data; name="file"\r\n\r\nnot a file'), 422, "validation_error"),
        (
            _form(b'Content-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' + _image("PNG")),
            422,
            "validation_error",
        ),
        ({"json": {"file": "a.png"}}, 422, "validation_error"),
        ({"content": _image("GIF"), "headers": {"content-type": "image/gif"}}, 415, "unsupported_media_type"),
        ({"content": b"not a png", "headers": {"content-type": "image/png"}}, 400, "invalid_image"),
        (_form(_PNG_PART.replace(b"a.png", b"a" * 20_000)), 400, "invalid_multipart"),  # over max_header_bytes
        (_form(b"\r\n--BBx" * 17 + _PNG_PART), 400, "invalid_multipart"),  # the boundary in data, > max_form_parts
    ],
    ids=[
        "malformed",
        "no-boundary",
        "two-files",
        "plain-field",
        "other-field",
        "json",
        "raw-gif",
        "raw-garbage",
        "long-part-header",
        "boundary-in-data",
    ],
)
def test_bad_bodies(client: TestClient, route: str, request_kwargs: dict[str, object], status: int, code: str) -> None:
    _assert_error(client.post(route, **request_kwargs), status, code)  # type: ignore[arg-type]


def test_more_form_parts_than_the_limit_is_413(small_limits_client: TestClient) -> None:
    note = b'Content-Disposition: form-data; name="note"\r\n\r\nhi'
    _assert_error(small_limits_client.post("/classify", **_form(*[note] * 4, _PNG_PART)), 413, "payload_too_large")  # type: ignore[arg-type]


def test_unknown_classifier_is_404(client: TestClient) -> None:
    response = client.post(
        "/classify", params={"model": "vgg16"}, files={"file": ("a.png", _image("PNG"), "image/png")}
    )
    _assert_error(response, 404, "unknown_model")


def test_bad_query_parameters_are_422(client: TestClient) -> None:
    files = {"file": ("a.png", _image("PNG"), "image/png")}
    _assert_error(client.post("/detect", params={"conf_threshold": 2}, files=files), 422, "validation_error")
    _assert_error(client.post("/classify", params={"top_k": 0}, files=files), 422, "validation_error")


@pytest.fixture(scope="module")
def small_limits_client(settings: Settings) -> Iterator[TestClient]:
    limited = settings.model_copy(
        update={
            "max_upload_bytes": 2048,
            "max_image_pixels": 100 * 100,
            "max_form_parts": 4,
            "max_jpeg_scan_pixels": 32 * 32 * 8,
        }
    )
    with TestClient(create_app(limited)) as test_client:
        yield test_client


def test_upload_over_size_limit_is_413(small_limits_client: TestClient) -> None:
    big = _image("PNG", (64, 64)) + b"\0" * 4096
    _assert_error(
        small_limits_client.post("/detect", files={"file": ("a.png", big, "image/png")}), 413, "payload_too_large"
    )


def test_image_over_pixel_limit_is_413(small_limits_client: TestClient) -> None:
    wide = _image("PNG", (400, 30))  # small file, 12000 pixels
    assert len(wide) < 2048
    response = small_limits_client.post("/classify", files={"file": ("a.png", wide, "image/png")})
    _assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize("route", ["/detect", "/classify"])
def test_a_jpeg_over_the_scan_pixel_limit_is_413(small_limits_client: TestClient, route: str) -> None:
    """A decode costs about pixels x scans: past ``max_jpeg_scan_pixels`` (here 32 x 32 x 8) a progressive JPEG is
    refused before decoding (a colour one: libjpeg writes 10 scans); one under it (grey: 6 scans) is served."""

    def progressive(mode: str) -> bytes:
        buffer = io.BytesIO()
        Image.radial_gradient("L").resize((32, 32)).convert(mode).save(buffer, "JPEG", progressive=True)
        return buffer.getvalue()

    colour, grey = progressive("RGB"), progressive("L")
    assert (colour.count(b"\xff\xda"), grey.count(b"\xff\xda")) == (10, 6)
    over = small_limits_client.post(route, files={"file": ("a.jpg", colour, "image/jpeg")})
    _assert_error(over, 413, "payload_too_large")
    assert "10 scans of 1024 pixels" in over.json()["error"]["message"]
    under = small_limits_client.post(route, files={"file": ("a.jpg", grey, "image/jpeg")})
    assert under.status_code == 200, under.text


@pytest.mark.parametrize("route", ["/detect", "/classify"])
def test_a_415_does_not_name_a_format_it_cannot_tell(client: TestClient, route: str) -> None:
    """An uncompressed TGA starts as a CUR does (PIL's prefix checks took it for one): the 415 says what it is not,
    where a GIF, whose signature is plain, is named."""
    tga = client.post(route, files={"file": ("a.tga", _image("TGA"), "application/octet-stream")})
    _assert_error(tga, 415, "unsupported_media_type")
    assert tga.json()["error"]["message"] == "image format not supported: not a JPEG, PNG or WebP image"
    gif = client.post(route, files={"file": ("a.gif", _image("GIF"), "application/octet-stream")})
    assert gif.json()["error"]["message"].startswith("image format GIF is not supported")


@pytest.fixture(scope="module")
def no_triton_client(model_repo) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    settings = Settings(
        triton_url=f"127.0.0.1:{free_port()}",
        model_repository=model_repo,
        triton_retries=1,
        triton_retry_backoff_s=0.01,
        _env_file=None,  # type: ignore[call-arg]
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_unreachable_triton_is_503(no_triton_client: TestClient) -> None:
    _assert_error(
        no_triton_client.post("/qa", json={"question": "who?", "context": "Ada did."}), 503, "triton_unavailable"
    )
    response = no_triton_client.post("/classify", files={"file": ("a.png", _image("PNG"), "image/png")})
    _assert_error(response, 503, "triton_unavailable")
    assert no_triton_client.get("/readyz").status_code == 503
    assert no_triton_client.get("/healthz").status_code == 200


def test_unknown_route_is_json_404(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "http_error"


def test_triton_error_is_502_and_readiness_drops(settings: Settings, ghost_model_repo: pathlib.Path) -> None:
    # The gateway knows the QA model's sizes, but Triton does not serve it: inference fails.
    broken = settings.model_copy(update={"qa_model": "no_such_model", "model_repository": ghost_model_repo})
    with TestClient(create_app(broken)) as test_client:
        _assert_error(
            test_client.post("/qa", json={"question": "who?", "context": "Ada did."}), 502, "inference_failed"
        )
        ready = test_client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["models"]["no_such_model"] is False


def test_a_model_neither_the_repository_nor_triton_knows_stops_start_up(settings: Settings) -> None:
    broken = settings.model_copy(update={"qa_model": "no_such_model", "model_config_wait_s": 0.5})
    with pytest.raises(TritonUnavailable, match=r"no_such_model.*model_config_wait_s"), TestClient(create_app(broken)):
        pass


@pytest.fixture(scope="module")
def small_body_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"max_body_bytes": 4096}))) as test_client:
        yield test_client


def test_oversized_body_is_refused_before_parsing(small_body_client: TestClient) -> None:
    big = {"question": "who?", "context": "word " * 2000}
    _assert_error(small_body_client.post("/qa", json=big), 413, "payload_too_large")
    upload = {"file": ("a.png", _image("PNG", (8, 8)) + b"\0" * 8192, "image/png")}
    _assert_error(small_body_client.post("/detect", files=upload), 413, "payload_too_large")


def test_oversized_chunked_body_is_refused(small_body_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"question": "who?", "context": "'
        for _ in range(100):
            yield b"word " * 20
        yield b'"}'

    response = small_body_client.post("/qa", content=chunks(), headers={"content-type": "application/json"})
    _assert_error(response, 413, "payload_too_large")
    assert small_body_client.post("/qa", json={"question": "who?", "context": "Ada did."}).status_code == 200


@pytest.mark.parametrize(
    ("route", "size"), [("/classify", (40000, 1)), ("/classify", (1, 40000)), ("/detect", (1, 4000))]
)
def test_extreme_aspect_ratio_is_422_before_decoding(client: TestClient, route: str, size: tuple[int, int]) -> None:
    response = client.post(route, files={"file": ("a.png", _image("PNG", size), "image/png")})
    _assert_error(response, 422, "unsupported_image_shape")
    assert response.headers["x-request-id"]


def test_image_over_the_whole_decoding_budget_is_413(settings: Settings) -> None:
    tight = settings.model_copy(update={"image_decode_budget_bytes": 1000})
    with TestClient(create_app(tight)) as test_client:
        response = test_client.post("/detect", files={"file": ("a.png", _image("PNG", (32, 32)), "image/png")})
        _assert_error(response, 413, "payload_too_large")
        assert "budget" in response.json()["error"]["message"]


@pytest.mark.parametrize("route", ["/detect", "/classify"])
def test_a_jpeg_of_more_scans_than_the_limit_is_413(client: TestClient, settings: Settings, route: str) -> None:
    """A progressive JPEG with its last scan repeated past ``max_jpeg_scans`` (each scan costs about a decode
    of the image): refused before decoding; at the limit it is served."""
    buffer = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").save(buffer, "JPEG", progressive=True)
    jpeg = buffer.getvalue()
    last, end = jpeg.rindex(b"\xff\xda"), jpeg.rindex(b"\xff\xd9")
    scans = jpeg.count(b"\xff\xda")

    def with_scans(n: int) -> bytes:
        return jpeg[:end] + jpeg[last:end] * (n - scans) + jpeg[end:]

    limit = settings.max_jpeg_scans
    over = client.post(route, files={"file": ("a.jpg", with_scans(limit + 1), "image/jpeg")})
    _assert_error(over, 413, "payload_too_large")
    assert f"{limit + 1} scans; the limit is {limit}" in over.json()["error"]["message"]
    at_limit = client.post(route, files={"file": ("a.jpg", with_scans(limit), "image/jpeg")})
    assert at_limit.status_code == 200, at_limit.text


@pytest.mark.parametrize("route", ["/detect", "/classify"])
def test_an_image_of_more_segments_than_the_limit_is_413(client: TestClient, settings: Settings, route: str) -> None:
    """A JPEG of more empty APP segments than ``max_image_segments`` (PIL parses each in Python, on the event
    loop for the header check): refused before PIL sees it."""
    jpeg = _image("JPEG")
    over = jpeg[:2] + b"\xff\xe5\x00\x02" * (settings.max_image_segments + 1) + jpeg[2:]
    response = client.post(route, files={"file": ("a.jpg", over, "image/jpeg")})
    _assert_error(response, 413, "payload_too_large")
    assert f"more than {settings.max_image_segments} markers" in response.json()["error"]["message"]
