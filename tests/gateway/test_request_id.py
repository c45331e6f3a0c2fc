"""Request ids: a valid client id is kept, anything else gets a new random version-4 UUID (32 hex digits)."""

from __future__ import annotations

import uuid

import pytest

from gateway.request_id import choose, new_id

pytestmark = pytest.mark.unit


def test_new_ids_are_random_uuid4_hex() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(hex=value)
        assert value == parsed.hex  # 32 lowercase hex digits, as uuid.uuid4().hex
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
    # Every other bit varies: OR and AND over the ids leave only the fixed version and variant bits.
    ored = anded = int(ids[0], 16)
    for value in ids[1:]:
        ored, anded = ored | int(value, 16), anded & int(value, 16)
    fixed = (0xF << 76) | (0x3 << 62)
    assert ored | fixed == (1 << 128) - 1
    assert anded & ~fixed == 0


@pytest.mark.parametrize("given", ["req-7", "a" * 128, "A.b_c:d-9"])
def test_a_valid_client_id_is_kept(given: str) -> None:
    assert choose(given) == given


@pytest.mark.parametrize("given", [None, "", "a" * 129, "has space", "semi;colon", "ümlaut"])
def test_anything_else_gets_a_new_id(given: str | None) -> None:
    chosen = choose(given)
    assert chosen != given and uuid.UUID(hex=chosen).version == 4
