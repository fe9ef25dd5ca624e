"""Response bodies: orjson's bytes are the standard library's compact
UTF-8 JSON, and what orjson refuses still gets an answer."""

from __future__ import annotations

import json
import types
from typing import Any

from homeserver.api.errors import encode_json


def stdlib(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def test_same_bytes_as_the_standard_library() -> None:
    body = {
        "chunk": [{"content": {"body": "héllo \u2603 \U0001f600", "n": -3, "f": 1.5}}],
        "end": None,
        "ok": True,
        "nested": [[], {}, [1, [2, [3]]]],
        "escapes": 'quote " backslash \\ newline \n tab \t nul \x00 \u2028',
    }
    assert encode_json(body) == stdlib(body)


def test_what_orjson_refuses_goes_through_the_standard_library() -> None:
    big = {"account_data": {"counter": 2**70}}  # beyond 64 bits
    assert encode_json(big) == stdlib(big)
    int_keys = {1: "a"}
    assert json.loads(encode_json(int_keys)) == {"1": "a"}


def test_read_only_mappings_are_objects() -> None:
    assert encode_json({"m": types.MappingProxyType({"k": 1})}) == b'{"m":{"k":1}}'
