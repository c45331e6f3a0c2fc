"""``multipart/form-data`` (RFC 7578) parsed from a body already held in memory; pure, no I/O.

:class:`gateway.body_limit.BufferedBody` reads every request body in full (bounded) before the
routes run, so the image routes parse that one ``bytes`` object here instead of streaming it
through python-multipart into a spooled temporary file: a few ``bytes.find`` calls, one slice per
part. The work is linear in the body (itself bounded by ``max_body_bytes``) and the number of
parts is bounded by ``max_parts``.

What is accepted: the boundary quoted or not; a preamble before the first delimiter and an
epilogue after the closing one (both ignored, RFC 2046); transport padding (spaces, tabs) after a
delimiter; header names in any case. What is refused with :class:`~gateway.errors.InvalidMultipart`
(400): no boundary, no delimiter in the body, a part not ended by a delimiter (no closing
delimiter), lone-LF line ends, a header line without a colon or a folded one, a part without a
``Content-Disposition`` ``name``, a part's headers over ``max_header_bytes``, the boundary occurring
in part data (followed by anything but what ends a delimiter line) more than ``max_parts`` times in
the body (those two each cost Python steps on the event loop). More than ``max_parts`` parts:
:class:`~gateway.errors.PayloadTooLarge` (413).
"""

from __future__ import annotations

import dataclasses
import re

from gateway.errors import InvalidMultipart, PayloadTooLarge

_CRLF = b"\r\n"
# One ``; name=value`` parameter of a header: the value a quoted string (with backslash escapes) or a token.
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_ESCAPE = re.compile(r"\\(.)")
_PADDING_CRLF = re.compile(rb"[ \t]*\r\n")  # what follows the boundary of a delimiter line that is not the last


@dataclasses.dataclass(frozen=True)
class Part:
    """Args:
    name: the ``Content-Disposition`` ``name``.
    filename: its ``filename`` (or ``filename*``); None for a plain field.
    content_type: the part's ``Content-Type`` (as sent, lower case, parameters dropped); None when absent.
    data: the part's bytes.
    """

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def header_params(value: str) -> tuple[str, dict[str, str]]:
    """``form-data; name="file"`` -> (``form-data``, ``{"name": "file"}``); names lower case, quotes removed."""
    main, _, rest = value.partition(";")
    params = {}
    for match in _PARAM.finditer(";" + rest):
        raw = match.group(2).strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = _ESCAPE.sub(r"\1", raw[1:-1])
        params[match.group(1).lower()] = raw
    return main.strip().lower(), params


def boundary(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` ``Content-Type`` header value."""
    _, params = header_params(content_type)
    value = params.get("boundary", "")
    if not value:
        raise InvalidMultipart("Missing boundary in multipart.")
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        raise InvalidMultipart("the multipart boundary is not ASCII") from None


def parse(body: bytes, boundary: bytes, max_parts: int, max_header_bytes: int = 0) -> list[Part]:
    """Every part of ``body`` in order; see the module docstring for what is refused. ``max_header_bytes``:
    the largest header block of a part (0: no limit)."""
    delimiter = b"--" + boundary
    separator = _CRLF + delimiter  # what ends a part
    # The boundary followed by anything but what ends a delimiter line is data, skipped one find at a time on
    # the event loop: at most max_parts times in a body (20 MB of them held the loop for 2 s).
    skips = _Skips(max_parts)
    # The first delimiter opens the body, or follows a preamble (whose last CRLF is the delimiter's).
    if body.startswith(delimiter):
        pos = len(delimiter)
    else:
        pos = _delimiter_at(body, separator, 0, "the boundary is not in the body", skips) + len(separator)
    parts: list[Part] = []
    while True:
        if body.startswith(b"--", pos):  # the closing delimiter; what follows is the epilogue
            return parts
        line_end = body.find(_CRLF, pos)
        if line_end < 0 or body[pos:line_end].strip(b" \t"):
            raise InvalidMultipart("Invalid multipart data: a boundary line is malformed.")
        if len(parts) == max_parts:
            raise PayloadTooLarge(f"the multipart body has more than {max_parts} parts")
        start = line_end + 2
        end = _delimiter_at(body, separator, start, "a part is not ended by a boundary", skips)
        parts.append(_part(body[start:end], max_header_bytes))
        pos = end + len(separator)


class _Skips:
    """How many more times the boundary may occur as data in one body (``_delimiter_at``)."""

    def __init__(self, left: int) -> None:
        self.left = left


def _delimiter_at(body: bytes, separator: bytes, start: int, missing: str, skips: _Skips) -> int:
    """Where the next delimiter line starts (its CRLF): ``separator`` then ``--`` or padding and CRLF.

    The boundary followed by anything else is data (python-multipart reads it so too), at most
    ``skips.left`` more times (then :class:`~gateway.errors.InvalidMultipart`: RFC 2046 wants none).
    """
    end = body.find(separator, start)
    while end >= 0:
        after = end + len(separator)
        if body.startswith(b"--", after) or _PADDING_CRLF.match(body, after):
            return end
        if not skips.left:
            raise InvalidMultipart("Invalid multipart data: the boundary occurs in a part's data too many times.")
        skips.left -= 1
        end = body.find(separator, end + 1)
    raise InvalidMultipart(f"Invalid multipart data: {missing}.")


def _part(raw: bytes, max_header_bytes: int = 0) -> Part:
    """One part: its headers, a blank line, its data (the CRLF before the next delimiter excluded)."""
    if raw.startswith(_CRLF):  # no headers
        head, data = b"", raw[2:]
    elif (blank := raw.find(b"\r\n\r\n")) >= 0:
        head, data = raw[:blank], raw[blank + 4 :]
    elif raw.endswith(_CRLF) or not raw:  # headers only: the blank line's CRLF began the delimiter
        head, data = raw[:-2], b""
    else:
        raise InvalidMultipart("Invalid multipart data: a part's headers are not ended by a blank line.")
    if max_header_bytes and len(head) > max_header_bytes:
        # Parsed line by line and parameter by parameter on the event loop: megabytes of them took seconds.
        raise InvalidMultipart(f"Invalid multipart data: a part's headers exceed {max_header_bytes} bytes.")
    headers: dict[str, str] = {}
    for line in head.split(_CRLF) if head else ():
        field, colon, value = line.partition(b":")
        if not colon or not field or field != field.strip(b" \t") or b"\n" in line or b"\r" in line:
            raise InvalidMultipart("Invalid multipart data: a part has a malformed header line.")
        headers[field.decode("latin-1").lower()] = value.strip(b" \t").decode("latin-1")
    _, disposition = header_params(headers.get("content-disposition", ""))
    name = disposition.get("name")
    if name is None:
        raise InvalidMultipart('The Content-Disposition header field "name" must be provided.')
    filename = disposition.get("filename", disposition.get("filename*"))
    content_type = headers.get("content-type")
    if content_type is not None:
        content_type = content_type.partition(";")[0].strip().lower() or None
    return Part(name, filename, content_type, data)
