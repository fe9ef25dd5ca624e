"""Schemathesis hooks shared by ``scripts/fuzz`` (``SCHEMATHESIS_HOOKS``) and
``tests/api/client/test_fuzz.py``.

- ``matrix_error_json``: every 4xx/5xx answer is Matrix JSON with an
  ``errcode`` string (a user-interactive-auth 401 carries ``flows``
  instead), and no answer is a 500.
- Path parameters naming a room, event, user or alias are, half of the time,
  replaced by ids that exist on the server under test (``FUZZ_ROOM_ID``,
  ``FUZZ_EVENT_ID``, ``FUZZ_USER_ID``, ``FUZZ_ROOM_ALIAS`` in the
  environment, or ``set_known_ids``), so the fuzzer reaches the handlers'
  logic instead of stopping at 404 M_NOT_FOUND.
- ``/sync`` is never asked to long-poll.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import strategies as st

_KNOWN: dict[str, str] = {}

_PARAM_KINDS = {
    "roomId": "room_id",
    "roomIdOrAlias": "room_id",
    "eventId": "event_id",
    "userId": "user_id",
    "roomAlias": "room_alias",
}


def set_known_ids(**ids: str) -> None:
    """Ids that exist on the server under test (room_id, event_id, user_id, room_alias)."""
    _KNOWN.clear()
    _KNOWN.update(ids)


def _known(kind: str) -> str | None:
    return _KNOWN.get(kind) or os.environ.get("FUZZ_" + kind.upper()) or None


def error_problem(status: int, content_type: str, body: Any) -> str | None:
    """Why this answer breaks the house rule, or None when it is fine."""
    if status < 400:
        return None
    if status == 500:
        return "500 Internal Server Error"
    if content_type.split(";")[0].strip().lower() != "application/json":
        return f"{status} error with content-type {content_type!r}"
    if not isinstance(body, dict):
        return f"{status} error body is not a JSON object"
    if status == 401 and isinstance(body.get("flows"), list):
        return None  # user-interactive auth: errcode only after a failed stage
    if not isinstance(body.get("errcode"), str):
        return f"{status} error body without an errcode string"
    return None


def response_problem(response: Any) -> str | None:
    """``error_problem`` for a schemathesis response."""
    ctype = response.headers.get("content-type", [""])
    ctype = ctype[0] if isinstance(ctype, list) else ctype
    try:
        body = response.json() if response.status_code >= 400 else None
    except ValueError:
        body = None
    return error_problem(response.status_code, ctype or "", body)


@schemathesis.check
def matrix_error_json(ctx: Any, response: Any, case: Any) -> bool | None:
    problem = response_problem(response)
    if problem is not None:
        raise AssertionError(f"{problem}: {response.text[:300]}")
    return None


@schemathesis.hook
def flatmap_path_parameters(ctx: Any, path_parameters: dict[str, Any]) -> Any:
    choices: dict[str, Any] = {}
    for name, value in (path_parameters or {}).items():
        kind = _PARAM_KINDS.get(name)
        real = _known(kind) if kind else None
        if name == "roomIdOrAlias" and real is not None and _known("room_alias"):
            choices[name] = st.sampled_from([value, real, _known("room_alias")])
        elif real is not None:
            choices[name] = st.sampled_from([value, real])
        else:
            choices[name] = st.just(value)
    return st.fixed_dictionaries(choices) if choices else st.just(path_parameters)


# A Matrix id ("@u:host", "!r:host", "#a:host", "$e:host") naming a server.
_FOREIGN_ID = re.compile(r"[@!#$+][^:\s\"'/]*:((?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]+)?)")


def names_other_server(case_parts: Any, own: str) -> bool:
    """Whether a case's path parameters, query or body name a server other
    than ours (joining, knocking, alias or profile lookups, invites there
    would send federation requests off this machine)."""
    text = json.dumps(case_parts, default=str)
    if any(m.group(1) != own for m in _FOREIGN_ID.finditer(text)):
        return True
    query = case_parts[1] if isinstance(case_parts, tuple) and len(case_parts) > 1 else None
    return isinstance(query, dict) and any(k in query for k in ("via", "server_name", "server"))


@schemathesis.hook
def filter_case(ctx: Any, case: Any) -> bool:
    """Loopback only: drop cases that would make the server call another one."""
    own = (_known("user_id") or ":").split(":", 1)[1]
    return not names_other_server((case.path_parameters, case.query, case.body), own)


@schemathesis.hook
def map_query(ctx: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    op = getattr(ctx, "operation", None)
    if query and op is not None and op.path.endswith("/sync") and "timeout" in query:
        query = {**query, "timeout": 0}
    return query


# --- preparing a run ----------------------------------------------------------

SPEC = Path(
    os.environ.get("FUZZ_SPEC")
    or Path(__file__).resolve().parents[2] / "shared" / "spec" / "client-server-api.json"
)

# Operations that would end the fuzzing user's session or account.
DESTRUCTIVE = re.compile(r"/(logout|account/deactivate|account/password)(/|$)")

_METHODS = ("get", "put", "post", "delete")


def load_spec(path: Path = SPEC) -> dict[str, Any]:
    """The client-server OpenAPI document, without the two path keys that end
    in a space (duplicates of real paths) and without destructive operations."""
    raw = json.loads(path.read_text())
    raw["paths"] = {
        k: v for k, v in raw["paths"].items() if not k.endswith(" ") and not DESTRUCTIVE.search(k)
    }
    raw["servers"] = [{"url": "/"}]
    return raw


def _example_path(path: str, item: dict[str, Any], op: dict[str, Any]) -> str:
    params = {
        p["name"]: p
        for p in item.get("parameters", []) + op.get("parameters", [])
        if p.get("in") == "path"
    }

    def sub(m: re.Match[str]) -> str:
        p = params.get(m.group(1), {})
        ex = p.get("example") or p.get("schema", {}).get("example") or "x"
        return urllib.parse.quote(str(ex), safe="")

    return re.sub(r"\{(\w+)\}", sub, path)


def _request(
    base_url: str, method: str, path: str, token: str | None = None, body: Any = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def implemented_only(spec: dict[str, Any], base_url: str, token: str) -> dict[str, Any]:
    """``spec`` without the operations the server answers 404/405
    M_UNRECOGNIZED (not implemented: a correct answer, nothing to fuzz)."""
    paths: dict[str, Any] = {}
    for path, item in spec["paths"].items():
        kept = {}
        for method, op in item.items():
            if method not in _METHODS:
                kept[method] = op
                continue
            body = {} if method in ("put", "post") else None
            status, out = _request(
                base_url, method.upper(), _example_path(path, item, op), token, body
            )
            unknown = isinstance(out, dict) and out.get("errcode") == "M_UNRECOGNIZED"
            if not (status in (404, 405) and unknown):
                kept[method] = op
        if any(m in kept for m in _METHODS):
            paths[path] = kept
    return {**spec, "paths": paths}


def setup_fixtures(base_url: str, name: str = "fuzzer") -> dict[str, str]:
    """A user with a room (with an alias and a message) to aim the fuzzer at;
    returns access_token, user_id, room_id, room_alias, event_id."""
    status, reg = _request(
        base_url,
        "POST",
        "/_matrix/client/v3/register",
        body={"username": name, "password": "fuzz-password", "auth": {"type": "m.login.dummy"}},
    )
    assert status == 200, (status, reg)
    token, user_id = reg["access_token"], reg["user_id"]
    server = user_id.split(":", 1)[1]
    alias = f"#{name}-room:{server}"
    status, room = _request(
        base_url,
        "POST",
        "/_matrix/client/v3/createRoom",
        token,
        {"room_alias_name": f"{name}-room", "preset": "public_chat", "name": "fuzz"},
    )
    assert status == 200, (status, room)
    room_id = room["room_id"]
    status, sent = _request(
        base_url,
        "PUT",
        f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/send/m.room.message/t1",
        token,
        {"msgtype": "m.text", "body": "hello"},
    )
    assert status == 200, (status, sent)
    return {
        "access_token": token,
        "user_id": user_id,
        "room_id": room_id,
        "room_alias": alias,
        "event_id": sent["event_id"],
    }


def run_fuzz(
    base_url: str,
    fixtures: dict[str, str],
    spec: dict[str, Any],
    *,
    max_examples: int = 10,
    seed: int = 0,
) -> list[str]:
    """Fuzz every operation of ``spec`` (seed 0: derandomized, the same cases
    every run; another seed: other cases, reproducible with it), positive and negative data, half of the path ids
    swapped for real ones; returns one line per answer breaking the house
    rule (500, non-JSON error, error without errcode), deduplicated."""
    schema = schemathesis.openapi.from_dict(spec)
    problems: dict[str, str] = {}
    for result in schema.get_all_operations():
        _fuzz_operation(result.ok(), base_url, fixtures, max_examples, seed, problems)
    return list(problems.values())


def _fuzz_operation(
    op: Any,
    base_url: str,
    fixtures: dict[str, str],
    max_examples: int,
    seed: int,
    problems: dict[str, str],
) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from schemathesis import GenerationMode

    headers = {"Authorization": f"Bearer {fixtures['access_token']}"}
    strategy = st.one_of(
        op.as_strategy(generation_mode=GenerationMode.POSITIVE),
        op.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=max_examples,
        derandomize=not seed,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def one(data: Any) -> None:
        case = data.draw(strategy)
        for name in list(case.path_parameters or {}):
            kind = _PARAM_KINDS.get(name)
            if kind in fixtures and data.draw(st.booleans()):
                case.path_parameters[name] = fixtures[kind]
        if op.path.endswith("/sync") and isinstance(case.query, dict):
            case.query["timeout"] = 0  # never long-poll
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        problem = response_problem(response)
        if problem is not None:
            key = f"{op.method.upper()} {op.path}: {problem}"
            problems.setdefault(key, f"{key}\n    {case.as_curl_command()}")

    (hypothesis_seed(seed)(one) if seed else one)()


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.fuzz_hooks BASE_URL OUT_DIR``: set up fixtures on the
    server, write OUT_DIR/spec.json (implemented operations only) and
    OUT_DIR/env (FUZZ_* ids and FUZZ_TOKEN, shell syntax)."""
    args = argv if argv is not None else sys.argv[1:]
    base_url, out = args[0].rstrip("/"), Path(args[1])
    ids = setup_fixtures(base_url, "fuzzer" + secrets.token_hex(3))
    spec = implemented_only(load_spec(), base_url, ids["access_token"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps(spec))
    env = {"FUZZ_TOKEN": ids.pop("access_token")} | {"FUZZ_" + k.upper(): v for k, v in ids.items()}
    (out / "env").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
    n = sum(1 for item in spec["paths"].values() for m in item if m in _METHODS)
    print(f"{n} implemented operations; fixtures: {env['FUZZ_ROOM_ID']}", file=sys.stderr)


if __name__ == "__main__":
    main()
