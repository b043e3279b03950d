"""Fuzzing the HTTP API: nothing a client can send gets a 5xx, and junk never changes stored data.

Hypothesis throws junk at every route: random JSON and raw bytes as bodies (wrong types, huge and
non-finite numbers, deep nesting, lone surrogates, invalid UTF-8, wrong content types), weird path
parameters (unicode, very long, path-like, percent-encoded, near misses of real ids), random query
strings and random headers. Every answer must be below 500, and every 4xx must carry the
contract's error body ``{"error": {"code", "message", "details"}}``.

Before the fuzzing a queued job, a finished job with an output asset and a backend are stored;
after every example they must read back byte for byte as they did before, unless the example's
request named one of them and succeeded (a legal change: the snapshot is then read again). A
refused request changes nothing, and a submission the server accepts reads back as it was sent.
``--hypothesis-show-statistics`` shows how often each status came back.

The routes come from ``app.routes`` (included routers flattened), so a route added later is
fuzzed without editing this file.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest
from api_helpers import BASE_URL, WORKFLOW
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from comfyfleet.domain.job import BUILTIN_JOB_TYPES, JobStatus
from comfyfleet.runtime.dispatcher import Dispatcher
from comfyfleet.runtime.fleet_admin import FleetAdmin
from comfyfleet.store.fleet import FleetStore
from comfyfleet.store.node_catalogs import NodeCatalogs

API = "/api/v2"
JOBS = f"{API}/jobs"
BACKENDS = f"{API}/backends"
ASSETS = f"{API}/assets"
SEED_BACKEND = "seed-gpu"
SEED_KEY = "seed-key"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_METADATA_PAIRS = 16
CONTRACT_METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,40}")
PATH_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")

FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


# -- the app's routes ---------------------------------------------------------------------------
def app_routes(app: Any) -> list[tuple[str, str]]:
    """``(method, path template)`` of every HTTP route of ``app``, included routers flattened."""
    routes: Any = app.routes
    try:  # newer FastAPI keeps included routers lazy; this walks into them
        from fastapi.routing import iter_route_contexts
    except ImportError:
        pass
    else:
        routes = iter_route_contexts(routes)
    found = set()
    for route in routes:
        path = getattr(route, "path", None)
        if path is None:
            continue
        for method in getattr(route, "methods", None) or {"GET"}:  # a mount or websocket: GET
            found.add((method, path))
    return sorted(found)


# -- what every answer must look like -----------------------------------------------------------
def assert_clean_answer(response: httpx.Response) -> None:
    """Below 500; a 4xx is JSON in the contract's error envelope."""
    request = response.request
    where = f"{request.method} {request.url} -> {response.status_code}: {response.text[:400]!r}"
    assert response.status_code < 500, where
    if response.status_code < 400 or request.method == "HEAD":
        return
    assert response.headers.get("content-type", "").startswith("application/json"), where
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, where
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message", "details"}, where
    assert isinstance(error["code"], str) and error["code"], where
    assert isinstance(error["message"], str) and error["message"], where
    assert error["details"] is None or isinstance(error["details"], dict), where


# -- data stored before the fuzzing -------------------------------------------------------------
@dataclass
class Seed:
    queued_id: str
    done_id: str
    asset_id: str
    views: dict[str, tuple[int, bytes]]  # path -> (status, body) as last read

    @property
    def names(self) -> frozenset[str]:
        return frozenset({self.queued_id, self.done_id, self.asset_id, SEED_BACKEND})

    async def read(self, client: httpx.AsyncClient) -> dict[str, tuple[int, bytes]]:
        paths = list(self.views)
        answers = await asyncio.gather(*(client.get(path) for path in paths))
        return {path: (r.status_code, r.content) for path, r in zip(paths, answers)}


@pytest.fixture
def fleet(api, store, redis, keys) -> FleetAdmin:  # type: ignore[no-untyped-def]
    """The /backends routes over a real FleetStore (the dispatcher is built but never started)."""
    fleet_store = FleetStore(redis, keys)
    admin = FleetAdmin(SimpleNamespace(fleet=fleet_store, dispatcher=Dispatcher(fleet_store),
                                       store=store, node_catalogs=NodeCatalogs(redis, keys)))
    api.services.fleet = admin
    return admin


@pytest.fixture
async def seed(client, fleet, make_finished_job) -> Seed:  # type: ignore[no-untyped-def]
    queued = await client.post(JOBS, json={"workflow": WORKFLOW, "metadata": {"run": "seed"},
                                           "priority": 3}, headers={"Idempotency-Key": SEED_KEY})
    assert queued.status_code == 201, queued.text
    done = await make_finished_job([(b"\x89PNG seed bytes", "image/png", "seed.png")])
    added = await client.post(BACKENDS, json={"name": SEED_BACKEND, "url": "http://127.0.0.1:9",
                                              "capacity": 2, "tags": ["seed"]})
    assert added.status_code == 201, added.text
    queued_id, asset_id = queued.json()["id"], done.outputs[0].id
    paths = [f"{JOBS}/{queued_id}", f"{JOBS}/{queued_id}/workflow", f"{JOBS}/{done.id}",
             f"{JOBS}/{done.id}/workflow", f"{ASSETS}/{asset_id}", f"{ASSETS}/{asset_id}/content",
             f"{BACKENDS}/{SEED_BACKEND}"]
    seed = Seed(queued_id, done.id, asset_id, dict.fromkeys(paths, (0, b"")))
    seed.views = await seed.read(client)
    assert all(status == 200 for status, _ in seed.views.values()), seed.views
    return seed


async def assert_seed_intact(client: httpx.AsyncClient, seed: Seed,
                             *responses: httpx.Response) -> None:
    """The seed reads as before; when one of ``responses`` changed it legally (a success that
    named it), the new state becomes the snapshot instead."""
    now = await seed.read(client)
    if any(changes_seed(seed, response) for response in responses):
        seed.views = now
    for path, before in seed.views.items():
        assert now[path] == before, f"{path} changed: {now[path][0]} {now[path][1][:400]!r}"
    reused = await client.post(JOBS, json={"workflow": WORKFLOW},
                               headers={"Idempotency-Key": SEED_KEY})
    assert reused.status_code == 422, "the seed job's idempotency key must stay claimed"


def changes_seed(seed: Seed, response: httpx.Response) -> bool:
    """A successful mutating request that named a seed exactly: its change is legal."""
    if response.request.method not in MUTATING or response.status_code >= 300:
        return False
    return any(part in seed.names for part in unquote(response.request.url.path).split("/"))


# -- strategies -----------------------------------------------------------------------------------
any_text = st.text(st.characters(exclude_categories=()), max_size=24)  # lone surrogates included
short_text = st.text(max_size=12)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                    exclude_characters="\x7f"), max_size=300)
big_ints = st.sampled_from([2**31, 2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**30, -(10**30),
                            10**400, -(10**400)])
numbers = st.one_of(st.integers(), big_ints, st.floats(),  # floats(): NaN and infinities too
                    st.sampled_from([1e308, -1e308, 5e-324, -0.0, 1.7976931348623157e308]))
scalars = st.one_of(st.none(), st.booleans(), numbers, any_text)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)), max_leaves=12)


def nested(depth: int, leaf: str = "0") -> str:
    return "[" * depth + leaf + "]" * depth


def nested_objects(depth: int, leaf: str = "0") -> str:
    return '{"a": ' * depth + leaf + "}" * depth


def deep_workflow(depth: int, nest: Any = nested_objects, leaf: str = "0") -> bytes:
    return ('{"workflow": {"1": {"class_type": "X", "inputs": {"v": ' + nest(depth, leaf)
            + "}}}}").encode()


DEPTHS = [60, 63, 64, 65, 100, 300, 500, 700, 900, 950, 980, 1000, 3000, 100_000]
URL_DEPTHS = [d for d in DEPTHS if d <= 3000]  # httpx refuses a query over 64 KiB
raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([
        b"", b"{", b"}", b"null", b"[]", b'"x"', b"0", b"NaN", b"-Infinity", b"1e400",
        b"\xff\xfe\xfd", b"\xef\xbb\xbf{}", b"\x00" * 16, b'{"workflow": "\xff"}',
        b'{"workflow": NaN}', b'{"workflow": {}, "workflow": []}', b'{"a": 1,}',
        b'{"workflow": {"1": {"class_type": "\\ud800", "inputs": {}}}}',
        b'{"workflow": {"1": {"class_type": "X", "inputs": {"v": 1e400}}}}',
        b'{"workflow": {"1": {"class_type": "X", "inputs": {"v": NaN}}}}',
        b'{"workflow": {"1": {"class_type": "X", "inputs": {"v": -Infinity}}}}',
        b'{"workflow": {"1": {"class_type": "X", "inputs": {"\\udc00": 1}}}}',
        b'{"workflow": {"1": {"class_type": "X", "inputs": {}}}, "metadata": {"k": "\\ud83d"}}',
        b'{"name": "\\ud800", "url": "http://127.0.0.1:1"}',
        b'{"workflow": {"1": {"class_type": "X", "inputs": {}}}, "priority": ' + b"9" * 5000 + b"}",
        json.dumps({"workflow": WORKFLOW}).encode("utf-16"),
    ]),
    st.sampled_from(DEPTHS).map(lambda d: nested(d).encode()),
    st.builds(deep_workflow, st.sampled_from(DEPTHS), st.sampled_from([nested, nested_objects]),
              st.sampled_from(["0", '{"__type": "core/ASSET", "info": {"id": "x.0"}}'])),
)
content_types = st.sampled_from([
    None, "application/json", "text/plain", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz", "multipart/form-data", "application/octet-stream",
    "application/json; charset=latin-1", "application/json; charset=utf-16", "*/*", "garbage",
    "application/json;;;;", "image/png"])


def encode(value: Any) -> bytes:
    """JSON as Python writes it: NaN and Infinity as bare words, lone surrogates as escapes."""
    return json.dumps(value).encode()


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def segments(seed: Seed) -> st.SearchStrategy[str]:
    """One path parameter, percent-encoded for the URL; with ``%`` kept as is, escapes written
    into the text (``%2F``, ``%FF``) reach the server as they are."""
    near = [seed.queued_id, seed.done_id, seed.asset_id, SEED_BACKEND, f"{seed.done_id}.0"]
    suffixes = [":wf", ":preview", ":claim", ":", ".0", ".1", ".²", ".١", ".٣", ".999999",
                ".0000001", ".-1", " ", "\n", "\x00", "/", "/..", "%00", "*", "?", "#", "\ud800"]
    raw = st.one_of(
        any_text,
        st.sampled_from(["", ".", "..", "...", "%", "%%", "%ZZ", "%FF%FE", "%C0%AF", "%2e%2e",
                         "%2F", "a%2Fb", "..%2F..%2Fetc%2Fpasswd", "../../etc/passwd", "~", "-",
                         "{job_id}", "null", "undefined", "0", "-1", "NaN", "x.²", "x.0", ".0",
                         "sha256:" + "0" * 64, "SHA256:" + "A" * 64, "blake3:" + "f" * 64,
                         "00000000-0000-4000-8000-000000000000", "a" * 5000, "é" * 2000]),
        st.builds(lambda base, suffix: base + suffix, st.sampled_from(near),
                  st.sampled_from(suffixes)),
        st.builds(lambda suffix, base: suffix + base, st.sampled_from([" ", "x", "%20", "/"]),
                  st.sampled_from(near)),
        st.sampled_from(near).map(str.upper),
    )
    return st.tuples(raw, st.sampled_from(["", "/", "%", "/%", ":@!$&'()*+,;="])).map(
        lambda pair: quote(pair[0], safe=pair[1], errors="surrogatepass"))


def fill(template: str, segment: st.SearchStrategy[str], data: st.DataObject) -> str:
    return PATH_PARAM.sub(lambda _: data.draw(segment), template)


def cursors() -> st.SearchStrategy[str]:
    positions = st.tuples(st.one_of(numbers, json_values), st.one_of(any_text, json_values))
    return st.one_of(
        positions.map(lambda p: b64(encode(list(p)))),
        json_values.map(lambda v: b64(encode(v))),
        st.sampled_from(URL_DEPTHS).map(lambda d: b64(nested(d).encode())),
        st.binary(max_size=40).map(b64),
        st.sampled_from([b64(b'[' + b"9" * 400 + b', "x"]'), b64(b'[1e400, "x"]'),
                         b64(b'[NaN, "x"]'), b64(b'[1.7976931348623157e308, "x"]'),
                         b64(b'[-1.7976931348623157e308, "x"]'), b64(b'[true, "x"]'),
                         b64(b'[1, "x", 2]'), b64(b'[1]'), b64(b'"x"'), b64(b'\xff\xfe'),
                         "!!", "====", "é", "a" * 5000]),
        short_text,
    )


def query_params() -> st.SearchStrategy[list[tuple[str, str]]]:
    known = ["limit", "cursor", "status", "type", "owner", "metadata[run]", "metadata[a]",
             "metadata[b]", "metadata[c]", "metadata[d]", "metadata[]", "metadata[[x]]",
             "metadata[\ud800]", "sort", "order", "offset", "page", "before", "after", "q"]
    statuses = [s.value for s in JobStatus]
    values = st.one_of(
        any_text, st.integers().map(str), big_ints.map(str), cursors(),
        st.lists(st.sampled_from([*statuses, "bogus", "", " ", "QUEUED"]), max_size=4).map(",".join),
        st.sampled_from(["", "0", "-1", "1", "100", "101", "1e3", "NaN", "inf", "١٠", "１０", "1_0",
                         " 5 ", "0x10", "9" * 5000, "true", "null", "[]", "{}", *BUILTIN_JOB_TYPES]))
    keys = st.one_of(st.sampled_from(known), any_text)
    return st.lists(st.tuples(keys, values), max_size=6)


def header_sets() -> st.SearchStrategy[dict[str, bytes]]:
    values = st.one_of(
        header_text,
        st.sampled_from(["", " ", "Bearer", "Bearer ", "Bearer x", "Basic !!!", "Bearer " + "x" * 9000,
                         "-1", "0", "99999999999999999999", "1e3", "1_000", "abc", "*/*",
                         "bytes=0-", "bytes=-1", "bytes=5-3", "bytes=0-0,1-1", "bytes=-",
                         "bytes=" + "1" * 5000 + "-", "bytes=-" + "1" * 5000,
                         "bytes=0-" + "9" * 5000, "bytes=99999999999999999999-"]),
    )
    names = st.sampled_from(["Authorization", "Idempotency-Key", "Content-Length", "Content-Type",
                             "Range", "Accept", "Accept-Encoding", "If-None-Match", "Cookie",
                             "X-Forwarded-For", "X-Forwarded-Proto", "X-Request-Id",
                             "Last-Event-ID", "Transfer-Encoding", "Origin", "User-Agent"])
    return st.dictionaries(names, values.map(lambda v: v.encode("latin-1")), max_size=4)


def node_inputs(seed: Seed) -> st.SearchStrategy[Any]:
    asset_ids = st.one_of(json_values, st.sampled_from([
        seed.asset_id, f"{seed.done_id}.²", f"{seed.done_id}.١", f"{seed.done_id}.1",
        f"{seed.done_id}:wf.0", f"{seed.queued_id}:wf.0", f"{seed.done_id}.999999", "x.²", ".0",
        "", "x." + "9" * 7]))
    refs = st.fixed_dictionaries({"__type": st.just("core/ASSET")},
                                 optional={"info": st.one_of(json_values, st.fixed_dictionaries(
                                     {"id": asset_ids}, optional={"hash": json_values}))})
    links = st.lists(st.one_of(st.sampled_from(["1", "2", "9"]), json_values), max_size=3)
    return st.dictionaries(any_text, st.one_of(scalars, links, refs, json_values), max_size=4)


def workflows(seed: Seed) -> st.SearchStrategy[Any]:
    nodes = st.one_of(json_values, st.fixed_dictionaries(
        {"class_type": st.one_of(any_text, json_values)},
        optional={"inputs": st.one_of(node_inputs(seed), json_values)}))
    return st.one_of(json_values, st.dictionaries(st.sampled_from(["1", "2", "9"]) | any_text,
                                                  nodes, min_size=1, max_size=4))


def plausible_submissions(seed: Seed) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies the server should accept: odd but well-typed values, unicode, links and asset refs
    that resolve, metadata at its limits; and now and then a metadata key with a trailing
    newline, which it must refuse."""
    values = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63),
                       st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
                       st.just(["1", 0]), st.just({"__type": "core/ASSET", "info": {"id": seed.asset_id}}),
                       st.lists(st.integers(), max_size=3).map(lambda x: {"nested": x}))
    node = st.fixed_dictionaries({"class_type": st.text(min_size=1, max_size=30),
                                  "inputs": st.dictionaries(st.text(max_size=10), values, max_size=4)})
    workflow = st.dictionaries(st.text(min_size=1, max_size=8), node, max_size=3).flatmap(
        lambda more: node.map(lambda first: {"1": first, **more}))
    key = st.from_regex(r"\A[A-Za-z0-9_.-]{1,40}\Z")
    keys = st.one_of(key, key.map(lambda k: k + "\n"))  # "$" would let the newline through
    metadata = st.dictionaries(keys, st.text(max_size=60), max_size=MAX_METADATA_PAIRS).map(
        lambda m: {k: v for k, v in m.items() if k != "type"})
    return st.fixed_dictionaries({"workflow": workflow}, optional={
        "metadata": st.one_of(metadata, metadata.flatmap(lambda m: st.sampled_from(
            BUILTIN_JOB_TYPES).map(lambda t: {**dict(list(m.items())[:15]), "type": t}))),
        "priority": st.integers(-(10**6), 10**6),
        "extra_data": st.fixed_dictionaries({}, optional={"api_key_comfy_org": st.text(max_size=20)})})


def submissions(seed: Seed) -> st.SearchStrategy[Any]:
    metadata = st.one_of(json_values, st.dictionaries(
        st.one_of(st.sampled_from(["type", "user_id", "run", "k" * 41, "a\n", "bad key"]), any_text),
        st.one_of(any_text, st.sampled_from([*BUILTIN_JOB_TYPES, "bogus", "x" * 300]), json_values),
        max_size=4))
    extra = st.one_of(json_values, st.fixed_dictionaries(
        {}, optional={"api_key_comfy_org": st.one_of(any_text, json_values), "other": json_values}))
    shaped = st.fixed_dictionaries({}, optional={
        "workflow": workflows(seed), "metadata": metadata, "extra_data": extra,
        "priority": st.one_of(numbers, json_values), "webhook_url": json_values,
        "inputs": json_values, "unknown": json_values})
    return st.one_of(json_values, shaped)


def backend_bodies() -> st.SearchStrategy[Any]:
    urls = st.one_of(json_values, st.sampled_from([
        "http://127.0.0.1:8188", "http://[::1", "http://[::1]:8188", "http://[", "http://]",
        "http://x:abc", "http://x:99999", "http://x:-1", "https://", "http://", "ftp://x",
        "http:///x", "http://a b", "http://\x00", "http://é.example", "http://x/" + "a" * 3000,
        "javascript:alert(1)", "HTTP://X", "http://user:pass@x:1/", "http://x?y#z"]))
    names = st.one_of(json_values, st.sampled_from(
        ["", " ", "a/b", "{x}", "x" * 101, "ok-name", "é", "\ud800", "a:b", "*", SEED_BACKEND + "-2"]))
    shaped = st.fixed_dictionaries({}, optional={
        "name": names, "url": urls, "capacity": st.one_of(numbers, json_values),
        "tags": st.one_of(json_values, st.lists(any_text, max_size=3)),
        "headers": st.one_of(json_values, st.dictionaries(any_text, any_text, max_size=3)),
        "state": st.one_of(json_values, st.sampled_from(["active", "draining", "disabled", "removed"])),
        "colour": json_values})
    return st.one_of(json_values, shaped)


def plausible_backend_changes() -> st.SearchStrategy[dict[str, Any]]:
    """What PATCH accepts: each field optional, well typed, odd values included."""
    return st.fixed_dictionaries({}, optional={
        "url": st.sampled_from(["http://127.0.0.1:8188", "https://gpu.example:443/",
                                "http://[::1]:8188", "http://é.example", "http://u:p@h:1/x",
                                "http://x:abc", "http://x:99999", "http://x:-1", "http://x:"]),
        "capacity": st.integers(1, 1000),
        "tags": st.lists(st.text(min_size=1, max_size=8).filter(lambda t: "," not in t), max_size=3),
        "headers": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2),
        "state": st.sampled_from(["active", "draining", "disabled"])})


def plausible_backends() -> st.SearchStrategy[dict[str, Any]]:
    """What POST accepts: a URL, and maybe a name (else host:port), capacity, tags, headers."""
    return plausible_backend_changes().flatmap(lambda change: st.fixed_dictionaries(
        {"url": st.just(change.get("url", "http://127.0.0.1:8188"))},
        optional={"name": st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,30}\Z")}).map(
        lambda base: {**{k: v for k, v in change.items() if k != "state"}, **base}))


@st.composite
def bodies(draw: st.DrawFn, json_bodies: st.SearchStrategy[Any]) -> tuple[bytes | None, bytes | None]:
    """``(content, content type)``: JSON as a client would write it, or raw junk."""
    content = draw(st.one_of(st.none(), json_bodies.map(encode), raw_bodies))
    content_type = draw(content_types)
    return content, None if content_type is None else content_type.encode()


async def send(client: httpx.AsyncClient, method: str, path: str, *,
               params: list[tuple[str, str]] | None = None,
               body: tuple[bytes | None, bytes | None] = (None, None),
               headers: dict[str, bytes] | None = None) -> httpx.Response:
    all_headers = dict(headers or {})
    content, content_type = body
    if content_type is not None:
        all_headers.setdefault("Content-Type", content_type)
    params = [(k.encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
               v.encode("utf-8", "surrogatepass").decode("utf-8", "replace")) for k, v in params or []]
    url = f"{BASE_URL}{path}"  # absolute: httpx takes a relative "//x" for a host
    response = await client.request(method, url, params=params or None, content=content,
                                    headers=all_headers)
    assert_clean_answer(response)
    if currently_in_test_context():
        event(f"{method} -> {response.status_code}")
    return response


# -- the properties -------------------------------------------------------------------------------
async def test_route_enumeration_sees_every_router(api):
    routes = app_routes(api.app)
    for expected in [("POST", JOBS), ("GET", JOBS), ("GET", f"{JOBS}/{{job_id}}"),
                     ("POST", f"{JOBS}/{{job_id}}/cancel"), ("GET", f"{JOBS}/{{job_id}}/events"),
                     ("GET", f"{ASSETS}/{{asset_id}}/content"), ("HEAD", f"{ASSETS}/by-hash/{{digest}}"),
                     ("GET", f"{API}/health"), ("GET", f"{API}/stats"), ("POST", BACKENDS),
                     ("PATCH", f"{BACKENDS}/{{name}}"), ("DELETE", f"{BACKENDS}/{{name}}")]:
        assert expected in routes, f"{expected} not found by app_routes(): {routes}"


@settings(FUZZ, max_examples=15)  # each example sends two requests to every route
@given(data=st.data())
async def test_every_route_answers_junk_with_a_4xx_or_success(client, api, seed, data):
    """Each route, each of its methods: random path params, query, headers and JSON body; then
    the same path with another method."""
    responses = []
    for method, template in app_routes(api.app):
        path = fill(template, segments(seed), data)
        responses.append(await send(client, method, path, params=data.draw(query_params()),
                                    body=data.draw(bodies(json_values)),
                                    headers=data.draw(header_sets())))
        other = data.draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
                                           "TRACE", "FOO"]))
        responses.append(await send(client, other, path, body=data.draw(bodies(json_values))))
    await assert_seed_intact(client, seed, *responses)


@settings(FUZZ, max_examples=100)
@given(data=st.data())
async def test_submissions_are_refused_cleanly_or_stored_as_sent(client, seed, data):
    body = data.draw(st.one_of(plausible_submissions(seed).map(encode),
                               submissions(seed).map(encode), raw_bodies))
    content_type = data.draw(content_types)
    headers = data.draw(st.one_of(st.just({}), header_sets()))
    response = await send(client, "POST", JOBS, body=(body, content_type and content_type.encode()),
                          headers=headers)
    if response.status_code == 201:
        sent, job = json.loads(body), response.json()
        read = await send(client, "GET", f"{JOBS}/{job['id']}")
        assert read.status_code == 200 and read.json() == job
        assert job["metadata"] == (sent.get("metadata") or {})
        assert all(CONTRACT_METADATA_KEY.fullmatch(key) for key in job["metadata"]), job["metadata"]
        assert job["priority"] == (sent.get("priority") or 0)
        workflow = await send(client, "GET", f"{JOBS}/{job['id']}/workflow")
        assert workflow.status_code == 200
        assert workflow.json()["workflow"] == sent["workflow"], "stored as sent"
    await assert_seed_intact(client, seed)


@settings(FUZZ, max_examples=100)
@given(data=st.data())
async def test_job_routes_with_weird_ids(client, seed, data):
    suffix = data.draw(st.sampled_from(["", "/workflow", "/cancel", "/preview", "/events"]))
    method = data.draw(st.sampled_from(["GET", "HEAD", "POST", "DELETE", "PATCH", "PUT"]))
    job_id = data.draw(segments(seed))
    response = await send(client, method, f"{JOBS}/{job_id}{suffix}",
                          body=data.draw(bodies(json_values)))
    await assert_seed_intact(client, seed, response)


@settings(FUZZ, max_examples=100)
@given(params=query_params())
async def test_listing_with_random_queries(client, seed, params):
    response = await send(client, "GET", JOBS, params=params)
    if response.status_code == 200:
        page = response.json()
        assert isinstance(page["jobs"], list) and page["truncated"] == (page["next_cursor"] is not None)
        if page["next_cursor"]:
            more = [(k, v) for k, v in params if k != "cursor"] + [("cursor", page["next_cursor"])]
            assert (await send(client, "GET", JOBS, params=more)).status_code == 200
    await assert_seed_intact(client, seed)


@settings(FUZZ, max_examples=100)
@given(data=st.data())
async def test_backend_admin_with_junk(client, seed, data):
    """POST mostly at the collection, PATCH mostly at the seed backend (refused: unchanged;
    accepted: stored as sent), the rest at weird names; half the bodies plausible."""
    method = data.draw(st.sampled_from(["GET", "POST", "PATCH", "DELETE", "PUT"]))
    usual = {"PATCH": f"/{SEED_BACKEND}"}.get(method, "")
    name = data.draw(st.one_of(st.just(usual), segments(seed).map(lambda s: "/" + s)))
    plausible = plausible_backend_changes() if method == "PATCH" else plausible_backends()
    body = data.draw(st.one_of(plausible.map(lambda b: (encode(b), b"application/json")),
                               bodies(backend_bodies())))
    response = await send(client, method, f"{BACKENDS}{name}", body=body,
                          headers=data.draw(header_sets()))
    await assert_seed_intact(client, seed, response)  # first: it takes in a legal change
    if response.status_code in (200, 201) and method in ("POST", "PATCH"):
        sent, stored = json.loads(body[0]), response.json()
        for field, shown in (("capacity", "capacity"), ("tags", "tags"), ("state", "admin_state")):
            if field in sent:
                assert stored[shown] == sent[field], (field, sent, stored)
        port = urlsplit(stored["url"]).port  # raises ValueError for a port outside 0-65535
        assert port is None or 0 <= port <= 65535, stored["url"]  # a stored URL can be used
        again = await send(client, "GET", f"{BACKENDS}/{quote(stored['name'], safe='')}")
        assert again.status_code == 200 and again.json()["name"] == stored["name"]
        assert (await send(client, "GET", BACKENDS)).status_code == 200


@settings(FUZZ, max_examples=80)
@given(data=st.data())
async def test_asset_and_upload_routes_with_junk(client, seed, data):
    asset_id = data.draw(st.one_of(segments(seed), st.just(quote(seed.asset_id))))
    choice = data.draw(st.sampled_from(["get", "content", "head_hash", "upload", "from_hash",
                                        "delete"]))
    if choice == "get":
        response = await send(client, "GET", f"{ASSETS}/{asset_id}", params=data.draw(query_params()))
    elif choice == "content":
        response = await send(client, data.draw(st.sampled_from(["GET", "HEAD"])),
                              f"{ASSETS}/{asset_id}/content", headers=data.draw(header_sets()))
    elif choice == "head_hash":
        response = await send(client, "HEAD", f"{ASSETS}/by-hash/{asset_id}")
    elif choice == "upload":
        files = {"file": (data.draw(any_text).encode("utf-8", "replace").decode(),
                          data.draw(st.binary(max_size=300)), data.draw(header_text))}
        form = {"file_path": data.draw(header_text), "expires_in": data.draw(header_text),
                "tags": data.draw(st.lists(header_text, max_size=3))}
        response = await client.post(ASSETS, files=files, data=form)
        assert_clean_answer(response)
    elif choice == "from_hash":
        junk = st.fixed_dictionaries({}, optional={"hash": json_values, "file_path": json_values,
                                                   "tags": json_values, "expires_in": numbers})
        response = await send(client, "POST", f"{ASSETS}/from-hash",
                              body=data.draw(bodies(st.one_of(junk, json_values))))
    else:
        response = await send(client, "DELETE", f"{ASSETS}/{asset_id}")
    await assert_seed_intact(client, seed, response)


@settings(FUZZ, max_examples=100)
@given(data=st.data())
async def test_random_headers_on_ordinary_requests(client, seed, data):
    method, path, body = data.draw(st.sampled_from([
        ("GET", JOBS, None), ("GET", f"{JOBS}/{seed.queued_id}", None),
        ("GET", f"{ASSETS}/{seed.asset_id}/content", None), ("GET", f"{API}/health", None),
        ("GET", BACKENDS, None), ("POST", JOBS, encode({"workflow": WORKFLOW}))]))
    headers = data.draw(header_sets())
    await send(client, method, path, body=(body, b"application/json" if body else None),
               headers=headers)
    await assert_seed_intact(client, seed)


@settings(FUZZ, max_examples=60)
@given(path=st.lists(st.one_of(any_text, st.sampled_from(["api", "v2", "jobs", "..", ".", ""])),
                     max_size=5),
       method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "FOO"]))
async def test_unknown_paths_and_methods(client, seed, path, method):
    url = "/" + "/".join(quote(part, safe="", errors="surrogatepass") for part in path)
    await send(client, method, url)
    await send(client, method, f"{API}{url}")
    await assert_seed_intact(client, seed)


# -- requests the fuzzing caught ------------------------------------------------------------------
CURSOR_950 = b64(nested(950).encode())
REGRESSIONS = [
    # (method, path, raw body, headers, status now); {queued} / {done} / {asset}: the seed's ids.
    # The comment says what the server answered before its fix.
    ("GET", f"{JOBS}/{{queued}}:wf", None, {}, 404),  # 503: WRONGTYPE on the workflow key
    ("POST", f"{JOBS}/{{queued}}:wf/cancel", None, {}, 404),  # 503
    ("GET", f"{ASSETS}/{{done}}:wf.0", None, {}, 404),  # 503
    ("GET", f"{ASSETS}/{{done}}.²", None, {}, 404),  # 500: "²".isdigit() but int("²") fails
    ("POST", JOBS, ('{"workflow": {"1": {"class_type": "LoadImage", "inputs": {"v": {"__type": '
                    '"core/ASSET", "info": {"id": "{done}.²"}}}}}}').encode(), {}, 422),  # 500
    ("GET", f"{JOBS}?cursor={b64(b'[' + b'9' * 400 + b', 1]')}", None, {}, 400),  # 500: OverflowError
    ("GET", f"{JOBS}?cursor={CURSOR_950}", None, {}, 400),  # 500: RecursionError
    ("GET", f"{ASSETS}/{{asset}}/content", None, {"Range": "bytes=" + "1" * 5000 + "-"}, 416),  # 500
    ("POST", JOBS, (b'{"workflow": {"1": {"class_type": "X", "inputs": {}}}, '
                    b'"metadata": {"k": "\\ud800"}}'), {}, 400),  # 500: UnicodeEncodeError
    ("POST", BACKENDS, b'{"name": "\\ud800", "url": "http://127.0.0.1:1"}', {}, 400),  # 500
    ("POST", BACKENDS, b'{"name": "v6", "url": "http://[::1"}', {}, 422),  # 500: Invalid IPv6 URL
    ("PATCH", f"{BACKENDS}/{SEED_BACKEND}", b'{"url": "http://[::1"}', {}, 422),  # 500
    ("POST", BACKENDS, b'{"url": "http://x:abc"}', {}, 422),  # 201: no request could reach it
    ("PATCH", f"{BACKENDS}/{SEED_BACKEND}", b'{"url": "http://x:99999"}', {}, 422),  # 200
    ("POST", JOBS, deep_workflow(1, nested_objects, "NaN"), {}, 400),  # 201, GET workflow 500
    ("POST", JOBS, deep_workflow(1, nested_objects, "1e400"), {}, 400),  # 201, GET workflow 500
    ("POST", JOBS, deep_workflow(500), {}, 400),  # 201, then GET workflow 500 (recursion)
    # 201, then GET workflow 500 (a lone surrogate cannot be written out as UTF-8):
    ("POST", JOBS, b'{"workflow": {"1": {"class_type": "\\ud800", "inputs": {}}}}', {}, 400),
    ("POST", JOBS, (b'{"workflow": {"1": {"class_type": "X", "inputs": {}}}, '
                    b'"metadata": {"run\\n": "x"}}'), {}, 422),  # 201: key outside the contract
]


@pytest.mark.parametrize("method, path, content, headers, status", REGRESSIONS)
async def test_requests_the_fuzzing_caught(client, seed, method, path, content, headers, status):
    ids = {"{queued}": seed.queued_id, "{done}": seed.done_id, "{asset}": seed.asset_id}
    for placeholder, value in ids.items():
        path = path.replace(placeholder, value)
        content = content.replace(placeholder.encode(), value.encode()) if content else content
    response = await send(client, method, path, body=(content, b"application/json"),
                          headers={k: v.encode() for k, v in headers.items()})
    assert response.status_code == status, response.text
    await assert_seed_intact(client, seed, response)
