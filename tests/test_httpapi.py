"""The control plane HTTP API on a real loopback socket, driven through ControlPlaneClient."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from meshctl.client import ControlPlaneClient, ControlPlaneError, resolve_control_plane
from meshctl.controlplane.auth import bearer_matches, ensure_token, load_client_token
from meshctl.controlplane.dirstore import DirStore
from meshctl.controlplane.httpapi import create_api_app
from meshctl.controlplane.memstore import MemStore
from tests.conftest_store import DEADLINE, next_event, policy_doc, route_doc


@dataclass(frozen=True, slots=True)
class Server:
    url: str
    token: str
    store: MemStore

    def client(self, token: bool = True) -> ControlPlaneClient:
        return ControlPlaneClient(self.url, self.token if token else None, timeout=DEADLINE)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    store = MemStore()
    token = ensure_token(tmp_path / "state")
    runner = web.AppRunner(create_api_app(store, token=token))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Server(f"http://{host}:{port}", token, store)
    finally:
        await runner.cleanup()
        await store.close()


@pytest.fixture
async def dir_server(tmp_path: Path) -> AsyncIterator[Server]:
    store = DirStore(tmp_path / "store")
    await store.start()
    runner = web.AppRunner(create_api_app(store, token="t"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Server(f"http://{host}:{port}", "t", store)
    finally:
        await runner.cleanup()
        await store.close()


async def test_writes_need_token_reads_do_not(server: Server) -> None:
    """A write without the bearer token is 401 Unauthorized; loopback reads are open."""
    with pytest.raises(ControlPlaneError) as err:
        await asyncio.to_thread(server.client(token=False).create, policy_doc("reviews"))
    assert (err.value.status, err.value.reason) == (401, "Unauthorized")
    await asyncio.to_thread(server.client().create, policy_doc("reviews"))
    got = await asyncio.to_thread(server.client(token=False).get, "destinationpolicies", "reviews")
    assert got["spec"]["host"] == "reviews"


async def test_stale_update_is_conflict(server: Server) -> None:
    """PUT with an old metadata.resourceVersion answers 409 Conflict."""
    client = server.client()
    created = await asyncio.to_thread(client.create, policy_doc("reviews"))
    newer = policy_doc("reviews", ("v1",))
    newer["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    await asyncio.to_thread(client.update, newer)
    with pytest.raises(ControlPlaneError) as err:
        await asyncio.to_thread(client.update, newer)  # same, now stale, version
    assert (err.value.status, err.value.reason) == (409, "Conflict")
    with pytest.raises(ControlPlaneError) as missing:
        await asyncio.to_thread(client.get, "DestinationPolicy", "nope")
    assert (missing.value.status, missing.value.reason) == (404, "NotFound")


async def test_apply_is_idempotent(server: Server) -> None:
    """Applying the same set twice is created then unchanged; a change is configured."""
    client = server.client()
    docs = [policy_doc("reviews", ("v1", "v2")), route_doc("reviews", {"v1": 100})]
    text = yaml.safe_dump_all(docs)
    first = await asyncio.to_thread(client.apply, text)
    assert [r["result"] for r in first] == ["created", "created"]
    second = await asyncio.to_thread(client.apply, docs)
    assert [r["result"] for r in second] == ["unchanged", "unchanged"]
    docs[1] = route_doc("reviews", {"v1": 50, "v2": 50})
    third = await asyncio.to_thread(client.apply, docs)
    assert [r["result"] for r in third] == ["unchanged", "configured"]
    assert third[1]["resourceVersion"] != second[1]["resourceVersion"]


async def test_apply_invalid_set_applies_nothing(server: Server) -> None:
    """One bad document makes the whole apply 422 with file, doc and field; nothing is stored."""
    client = server.client()
    bad = route_doc("reviews", {"v1": 100})
    bad["spec"]["rules"][0]["backends"][0]["weight"] = "lots"
    text = yaml.safe_dump_all([policy_doc("reviews"), bad])
    with pytest.raises(ControlPlaneError) as err:
        await asyncio.to_thread(client.apply, text, source="routes.yaml")
    assert (err.value.status, err.value.reason) == (422, "Invalid")
    assert str(err.value).startswith("routes.yaml doc 2: spec.rules[0].backends[0].weight:")
    dangling = route_doc("reviews", {"v3": 100})  # valid alone, unknown subset across the set
    with pytest.raises(ControlPlaneError) as cross:
        await asyncio.to_thread(client.apply, [policy_doc("reviews"), dangling])
    assert "unknown subset 'v3'" in str(cross.value)
    assert await server.store.list() == []


async def test_apply_that_breaks_a_stored_route_says_so(server: Server) -> None:
    """A DestinationPolicy without the subsets a stored Route uses is refused with the Route's
    location and that this change would leave it so, with what to do; nothing is stored."""
    client = server.client()
    await asyncio.to_thread(client.apply, [policy_doc("reviews"), route_doc("reviews",
                                                                          {"v1": 100})],
                            source="routes.yaml")
    with pytest.raises(ControlPlaneError) as err:
        await asyncio.to_thread(client.apply, [policy_doc("reviews", ())], source="dp.yaml")
    assert str(err.value) == (
        "routes.yaml doc 2: spec.rules[0].backends[0].subset: unknown subset 'v1' for host "
        "reviews (known: none, no DestinationPolicy defines any) (this change would leave it "
        "so: keep what it uses in the objects changed, or change it first)")
    assert (await server.store.get("DestinationPolicy", "default", "reviews")
            ).resource.spec.subsets


async def test_watch_streams_server_sent_events(server: Server) -> None:
    """An SSE watcher sees the replayed object, then a MODIFIED event for an apply."""
    client = server.client()
    await asyncio.to_thread(client.apply, [policy_doc("reviews")])
    events = client.watch(kind="destinationpolicies", replay=True, timeout=DEADLINE)
    first = await asyncio.to_thread(next, events)  # the replay proves the subscription is live
    await asyncio.to_thread(client.apply, [policy_doc("reviews", ("v1",))])
    second = await asyncio.to_thread(next, events)
    events.close()
    assert (first.type, second.type) == ("ADDED", "MODIFIED")
    assert second.data["spec"]["subsets"] == [{"name": "v1", "labels": {"version": "v1"}}]
    assert int(second.data["metadata"]["resourceVersion"]) > int(
        first.data["metadata"]["resourceVersion"])


async def test_openapi_describes_every_kind(server: Server) -> None:
    """/openapi.json is an OpenAPI 3.1 document with the CRUD paths of every kind."""
    with await asyncio.to_thread(server.client()._open, "GET", "/openapi.json") as resp:
        doc = json.loads(resp.read())
    assert doc["openapi"] == "3.1.0"
    for plural in ("routes", "destinationpolicies", "authorizationpolicies", "meshconfigs",
                   "gateways"):
        assert set(doc["paths"][f"/api/v1/namespaces/{{ns}}/{plural}/{{name}}"]) >= {
            "get", "put", "delete"}
    assert "/api/v1/apply" in doc["paths"] and "/api/v1/watch" in doc["paths"]


def test_token_file_is_private_and_stable(tmp_path: Path) -> None:
    """The token is created once with mode 0600 and reused on the next start."""
    token = ensure_token(tmp_path)
    assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600
    assert ensure_token(tmp_path) == token and len(token) >= 32


def test_client_finds_token_and_control_plane(tmp_path: Path) -> None:
    """AMI_TOKEN beats ./.ami/token beats ~/.ami/token; the URL falls back to :15080."""
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    ensure_token(home / ".ami")
    assert load_client_token({}, cwd, home) == (home / ".ami" / "token").read_text().strip()
    local = ensure_token(cwd / ".ami")
    assert load_client_token({}, cwd, home) == local
    assert load_client_token({"AMI_TOKEN": "t0k"}, cwd, home) == "t0k"
    assert resolve_control_plane(None, {}) == "http://127.0.0.1:15080"
    assert resolve_control_plane(None, {"AMI_CONTROL_PLANE": "10.0.0.1:1"}) == "http://10.0.0.1:1"
    assert resolve_control_plane("http://h:2", {"AMI_CONTROL_PLANE": "x"}) == "http://h:2"


async def test_dirstore_rejected_edit_is_listed(tmp_path: Path) -> None:
    """Over a DirStore, /api/v1/errors lists a rejected hand edit with its precise message."""
    store = DirStore(tmp_path / "store")
    await store.start()
    runner = web.AppRunner(create_api_app(store, token="t"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        client = ControlPlaneClient(f"http://{host}:{port}", "t", timeout=DEADLINE)
        results = await asyncio.to_thread(client.apply, [policy_doc("reviews")])
        assert results[0]["result"] == "created"
        path = store.root / "destinationpolicy" / "default" / "reviews.yaml"
        async with store.watch() as watch:
            path.write_text(path.read_text().replace("host: reviews", "host: 'Not A Host'"))
            (store.root / "fence.yaml").write_text(yaml.safe_dump(policy_doc("fence")))
            await next_event(watch)
        [error] = await asyncio.to_thread(client.errors)
        assert error["source"] == "destinationpolicy/default/reviews.yaml"
        assert error["message"].startswith(f"{error['source']} doc 1: spec.host:")
        live = await asyncio.to_thread(client.get, "DestinationPolicy", "reviews")
        assert live["spec"]["host"] == "reviews"
        assert live["status"]["conditions"][0]["status"] == "False"
    finally:
        await runner.cleanup()
        await store.close()


POLICIES = "/api/v1/namespaces/default/destinationpolicies"
ALIASED = """\
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: &v1 {version: v1}}
  - {name: v1-canary, labels: *v1}
"""


def _billion_laughs() -> str:
    """A valid policy whose status nests aliases 9 deep: 387 million strings once expanded."""
    lines = ['  a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"  a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return yaml.safe_dump(policy_doc("bomb")) + "status:\n" + "\n".join(lines) + "\n"


async def test_yaml_anchors_and_aliases_are_refused(server: Server) -> None:
    """An alias bomb is refused at once: apply 422 naming file, doc and line; PUT 400."""
    client = server.client()
    text = yaml.safe_dump(policy_doc("reviews")) + "---\n" + _billion_laughs()
    with pytest.raises(ControlPlaneError) as err:
        await asyncio.to_thread(client.apply, text, source="bomb.yaml")
    # "At once" is what the refusal says, not a clock (no bound on time: a loaded machine
    # breaks any): the loader refuses the first anchor while composing, before one node is
    # built, let alone expanded; a refusal after an expansion would name something else.
    assert (err.value.status, err.value.reason) == (422, "Invalid")
    assert str(err.value).startswith("bomb.yaml doc 2: invalid YAML: line ")
    assert "anchor '&a0' not allowed" in str(err.value)
    assert await server.store.list() == []
    await asyncio.to_thread(client.create, policy_doc("reviews"))
    with pytest.raises(ControlPlaneError) as put:
        await asyncio.to_thread(client._open, "PUT", f"{POLICIES}/reviews", ALIASED.encode(),
                                "application/yaml")
    assert (put.value.status, put.value.reason) == (400, "BadRequest")
    assert "anchor '&v1' not allowed" in str(put.value) and "line 7, column 24" in str(put.value)


async def test_hand_edit_with_an_alias_is_rejected(dir_server: Server) -> None:
    """A hand-edited file using an alias is listed in /api/v1/errors; its last good stays."""
    client = dir_server.client()
    store = dir_server.store
    assert isinstance(store, DirStore)
    path = store.root / "reviews.yaml"
    async with store.watch() as watch:
        path.write_text(yaml.safe_dump(policy_doc("reviews", ("v1",))))
        await next_event(watch)
        path.write_text(ALIASED)
        (store.root / "fence.yaml").write_text(yaml.safe_dump(policy_doc("fence")))
        await next_event(watch)
    [error] = await asyncio.to_thread(client.errors)
    assert error["source"] == "reviews.yaml"
    assert error["message"].startswith("reviews.yaml doc 1: invalid YAML: line 7, column 24: "
                                       "anchor '&v1' not allowed")
    live = await asyncio.to_thread(client.get, "DestinationPolicy", "reviews")
    assert [s["name"] for s in live["spec"]["subsets"]] == ["v1"]
    assert live["status"]["conditions"][0]["status"] == "False"


def _send(server: Server, method: str, path: str, body: bytes, content_type: str,
          authorization: bytes | str | None = None) -> tuple[int, dict[str, Any]]:
    """A raw request; (status, JSON body): errors must be JSON too, never a text 500."""
    auth = f"Bearer {server.token}" if authorization is None else authorization
    req = urllib.request.Request(server.url + path, data=body, method=method,
                                 headers={"Content-Type": content_type, "Authorization": auth})
    try:
        with urllib.request.urlopen(req, timeout=DEADLINE) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        assert exc.headers.get_content_type() == "application/json", exc.read()
        return exc.code, json.loads(exc.read())


async def test_undecodable_bodies_are_bad_requests(server: Server) -> None:
    """A body that is not in its charset, or an unknown charset, is 400 BadRequest, not 500."""
    text = yaml.safe_dump(policy_doc("reviews"))
    for method, path in (("POST", "/api/v1/apply"), ("PUT", f"{POLICIES}/reviews")):
        for body, ctype, words in (
                ((text + "# caf\xe9\n").encode("latin-1"), "application/yaml", "not utf-8 text"),
                (text.encode(), "application/yaml; charset=bogus",
                 "not bogus text: unknown encoding: bogus")):
            status, error = await asyncio.to_thread(_send, server, method, path, body, ctype)
            assert (status, error["reason"]) == (400, "BadRequest"), (method, ctype, error)
            assert f"request body is {words}" in error["error"]


async def test_deeply_nested_bodies_are_refused(server: Server) -> None:
    """5,000-deep YAML and 100,000-deep JSON are refused cleanly (YAML apply as invalid YAML
    with its line, as every YAML error of an apply), never a RecursionError 500."""
    deep_yaml = ("spec: " + "[" * 5000 + "]" * 5000 + "\n").encode()
    deep_json = ("[" * 100_000 + "]" * 100_000).encode()
    cases = [("POST", "/api/v1/apply", deep_yaml, "application/yaml", 422,
              "request doc 1: invalid YAML: line 1, column 106: nested deeper than 100 levels"),
             ("PUT", f"{POLICIES}/reviews", deep_yaml, "application/yaml", 400,
              "nested deeper than 100 levels"),
             ("POST", "/api/v1/apply", deep_json, "application/json", 400,
              "apply body is nested too deeply"),
             ("PUT", f"{POLICIES}/reviews", deep_json, "application/json", 400,
              "request body is nested too deeply")]
    for method, path, body, ctype, want, words in cases:
        status, error = await asyncio.to_thread(_send, server, method, path, body, ctype)
        assert status == want and words in error["error"], (method, ctype, error)


async def test_non_ascii_bearer_token_is_unauthorized(server: Server) -> None:
    """A bearer token with non-ASCII bytes (Latin-1 or UTF-8) is 401 Unauthorized, not 500."""
    body = yaml.safe_dump(policy_doc("reviews")).encode()
    for auth in ("Bearer \xe9", "Bearer \xe9".encode()):
        status, error = await asyncio.to_thread(_send, server, "POST", "/api/v1/apply", body,
                                                "application/yaml", auth)
        assert (status, error["reason"]) == (401, "Unauthorized")
    assert not bearer_matches("Bearer \udce9", "t") and bearer_matches("Bearer t", "t")
    assert await server.store.list() == []


async def test_an_unexpected_error_keeps_the_json_error_shape(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a handler (here: the store raising what it should not) is a 500 in the API's
    one error shape, which clients parse, not aiohttp's text/plain 'Server got itself in
    trouble'; the details go to the log."""
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setattr(server.store, "list", broken)
    with pytest.raises(ControlPlaneError) as err:
        await asyncio.to_thread(server.client().get, "Route", None, "default")
    assert (err.value.status, err.value.reason) == (500, "InternalError")
    assert "OverflowError" in str(err.value)
