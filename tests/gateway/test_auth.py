"""API key parsing and matching; the middleware end to end is in tests/reliability/test_access.py."""

from __future__ import annotations

import pathlib

import pytest
from pydantic import SecretStr

from gateway.auth import ApiKeyAuth, load_api_keys, parse_key_file, parse_key_list
from gateway.settings import Settings


async def _app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    raise AssertionError("not called")


def test_key_list_is_comma_separated_and_trimmed() -> None:
    assert parse_key_list(" alpha , beta,,gamma ") == ["alpha", "beta", "gamma"]
    assert parse_key_list("") == []
    assert parse_key_list(" , ") == []


def test_key_file_takes_one_key_a_line_and_ignores_comments() -> None:
    text = "# gateway keys\nalpha\n\n  beta  # the batch job\n#gamma\n   \ndelta\n"
    assert parse_key_file(text) == ["alpha", "beta", "delta"]


def _settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


def test_keys_come_from_env_and_file(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("from-file\nshared\n")
    monkeypatch.setenv("GATEWAY_API_KEYS", "from-env,shared")
    monkeypatch.setenv("GATEWAY_API_KEYS_FILE", str(keys_file))
    settings = _settings()
    assert load_api_keys(settings) == ["from-env", "shared", "from-file"]
    assert "from-env" not in repr(settings) and "from-env" not in str(settings.model_dump())


def test_no_keys_means_no_auth() -> None:
    assert load_api_keys(_settings()) == []


def test_a_key_file_without_keys_is_an_error(tmp_path: pathlib.Path) -> None:
    empty = tmp_path / "keys"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(ValueError, match="holds no API key"):
        load_api_keys(_settings(api_keys_file=empty))
    with pytest.raises(OSError):
        load_api_keys(_settings(api_keys_file=tmp_path / "missing"))


def test_match_returns_the_key_index_and_rejects_near_misses() -> None:
    auth = ApiKeyAuth(_app, ["alpha", "beta"])
    assert auth.match(b"alpha") == 0
    assert auth.match(b"beta") == 1
    for wrong in (b"", b"alph", b"alphaa", b"ALPHA", b"beta "):
        assert auth.match(wrong) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"authorization", b"Bearer alpha")], b"alpha"),
        ([(b"authorization", b"bearer   alpha ")], b"alpha"),
        ([(b"x-api-key", b"beta")], b"beta"),
        ([(b"authorization", b"Basic YWxwaGE="), (b"x-api-key", b"beta")], b"beta"),
        ([(b"authorization", b"Basic YWxwaGE=")], None),
        ([(b"authorization", b"Bearer ")], None),
        ([], None),
    ],
)
def test_presented_key(headers: list[tuple[bytes, bytes]], expected: bytes | None) -> None:
    assert ApiKeyAuth.presented({"headers": headers}) == expected


def test_settings_hide_keys() -> None:
    settings = _settings(api_keys=SecretStr("s3cret"))
    assert "s3cret" not in repr(settings)
    with pytest.raises(ValueError, match="at least one key"):
        ApiKeyAuth(_app, [])
