"""Contract test: the fake's JSON matches the OpenAPI spec of the version it emulates.

For each emulated version, every JSON endpoint the fake serves is called over
HTTP and its body validated against that version's real spec
(``shared/immich-openapi/immich-openapi-specs-v<version>.json``, beside the
repository) with ``OAS30ReadValidator`` (``nullable`` and formats honoured).
Object schemas are made strict (no properties the spec does not list), so a
field that belongs to another version (``deviceAssetId`` in v3, ``owner`` on
v3 albums) fails the test. Status codes must be ones the spec lists for the
operation or ones the notes document for real servers.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_schema_validator import OAS30ReadValidator, oas30_format_checker

from immichfs_fake import FakeImmich, FakeLibrary
from immichfs_fake.routes import ROUTES

REPO = Path(__file__).resolve().parents[2]
SPEC_DIRS = [REPO.parent / "shared" / "immich-openapi", REPO / "shared" / "immich-openapi"]
VERSIONS = ["1.135.3", "2.7.5", "3.1.0", "3.2.0"]
#: statuses real servers send that the spec does not list (notes §3, §7, §13, §14)
DOCUMENTED = {206, 302, 304, 400, 401, 403, 404, 500}


def spec_dir() -> Path | None:
    return next((d for d in SPEC_DIRS if d.is_dir()), None)


pytestmark = pytest.mark.skipif(
    spec_dir() is None,
    reason="the Immich OpenAPI specs are not here: expected ../shared/immich-openapi beside "
    "the repository (CI clones main with shared/ next to it)",
)


def _strict(node: Any) -> Any:
    """Every object schema with listed properties rejects unlisted ones.

    Unicode property escapes in patterns become ``\\w`` (see below).
    Also spells ``{nullable: true, allOf: [$ref]}`` (how the specs mark a nullable
    object such as ``stack`` or ``license``) as "the ref or null": OAS 3.0 means
    that, but a JSON-Schema validator checks null against the ref and fails.
    """
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if isinstance(out.get("pattern"), str) and "\\p{" in out["pattern"]:
            # Python's re has no \p{L}/\p{M}/\p{N} (3.2's email pattern): \w, a
            # little wider (it takes "_"), stands in for each
            out["pattern"] = re.sub(r"\\p\{[LMN]\}", r"\\w", out["pattern"])
        if out.get("nullable") is True and "allOf" in out and "type" not in out:
            rest = {k: v for k, v in out.items() if k not in ("allOf", "nullable")}
            return {**rest, "anyOf": [*out["allOf"], {"enum": [None], "nullable": True}]}
        if "properties" in out and "additionalProperties" not in out and "allOf" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@cache
def load_spec(version: str) -> dict[str, Any]:
    directory = spec_dir()
    assert directory is not None
    spec: dict[str, Any] = json.loads(
        (directory / f"immich-openapi-specs-v{version}.json").read_text()
    )
    return spec


@cache
def strict_components(version: str) -> dict[str, Any]:
    components: dict[str, Any] = _strict(copy.deepcopy(load_spec(version)["components"]))
    return components


class Contract:
    """Calls the fake and checks each answer against the spec of its version."""

    def __init__(self, server: FakeImmich, client: httpx.Client) -> None:
        self.server = server
        self.client = client
        self.version = server.version
        self.spec = load_spec(self.version)
        self.checked: list[tuple[str, str, int]] = []

    def operation(self, method: str, template: str) -> dict[str, Any]:
        path = self.spec["paths"].get(template)
        assert path is not None, f"{template} is not in the v{self.version} spec"
        op = path.get(method.lower())
        assert op is not None, f"{method} {template} is not in the v{self.version} spec"
        result: dict[str, Any] = op
        return result

    def call(
        self,
        method: str,
        template: str,
        *,
        path_params: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        expect: int = 200,
    ) -> Any:
        op = self.operation(method, template)
        url = "/api" + template.format(**(path_params or {}))
        r = self.client.request(method, url, params=params, json=json_body)
        assert r.status_code == expect, (method, url, r.status_code, r.text[:300])
        listed = {int(code) for code in op["responses"] if code.isdigit()}
        assert r.status_code in listed | DOCUMENTED, (method, template, r.status_code)
        self.checked.append((method, template, r.status_code))
        if r.status_code not in listed or not r.headers.get("content-type", "").startswith(
            "application/json"
        ):
            return r.json() if "json" in r.headers.get("content-type", "") else r
        schema = op["responses"][str(r.status_code)]["content"]["application/json"]["schema"]
        body = r.json()
        self.validate(body, schema, f"{method} {template}")
        return body

    def validate(self, body: Any, schema: dict[str, Any], where: str) -> None:
        root = {**_strict(copy.deepcopy(schema)), "components": strict_components(self.version)}
        validator = OAS30ReadValidator(root, format_checker=oas30_format_checker)
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            lines = [
                f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}"
                for e in errors[:10]
            ]
            pytest.fail(
                f"v{self.version} {where}: {len(errors)} schema errors\n" + "\n".join(lines)
            )


@pytest.fixture(params=VERSIONS)
def contract(request: pytest.FixtureRequest, fake_library: FakeLibrary) -> Iterator[Contract]:
    with (
        FakeImmich(fake_library, version=request.param, smart_search=True) as server,
        httpx.Client(base_url=server.url, headers={"x-api-key": server.api_key}) as client,
    ):
        yield Contract(server, client)


def test_server_and_user(contract: Contract) -> None:
    for template in (
        "/server/ping",
        "/server/version",
        "/server/features",
        "/server/about",
        "/server/config",
        "/server/media-types",
        "/server/storage",
        "/users/me",
    ):
        contract.call("GET", template)
    assert contract.call("POST", "/auth/validateToken") == {"authStatus": True}
    if contract.server.version_info >= (1, 139, 0):
        assert contract.call("GET", "/api-keys/me")["permissions"] == ["all"]


def test_search(contract: Contract, fake_library: FakeLibrary) -> None:
    people = [p.id for p in fake_library.people.values() if p.name == "Alice"]
    bodies: list[dict[str, Any]] = [
        {},
        {"withExif": True, "withPeople": True, "size": 1000},
        {"visibility": "archive", "withExif": True},
        {"visibility": "hidden", "withExif": True},
        {"withDeleted": True, "trashedAfter": "1970-01-01T00:00:00.000Z"},
        {"personIds": people, "withPeople": True},
        {"albumIds": [fake_library.album_named("Shared with me").id], "withExif": True},
        {"size": 3, "page": 2, "order": "asc"},
    ]
    for body in bodies:
        result = contract.call("POST", "/search/metadata", json_body=body)
        assert isinstance(result["assets"]["nextPage"], str | None)
        contract.call(
            "POST",
            "/search/statistics",
            json_body={k: v for k, v in body.items() if k not in ("size", "page", "order")},
        )
        contract.call("POST", "/search/smart", json_body={"query": "temple", **body})
    contract.call("GET", "/assets/statistics")
    contract.call("GET", "/assets/statistics", params={"isTrashed": "true"})


def test_assets(contract: Contract, fake_library: FakeLibrary) -> None:
    names = [
        "Kinkaku-ji.jpg",
        "IMG_5000.JPG",
        "IMG_5000.MOV",
        "blurry.jpg",
        "large-video.mp4",
        "friend photo 1.jpg",
        "archived receipt.png",
        "group photo 1.jpg",
    ]
    for name in names:
        asset = fake_library.find(name)
        info = contract.call("GET", "/assets/{id}", path_params={"id": asset.id})
        assert info["id"] == asset.id
        contract.call("GET", "/assets/{id}/original", path_params={"id": asset.id})
        contract.call(
            "GET",
            "/assets/{id}/thumbnail",
            path_params={"id": asset.id},
            params={"size": "preview"},
        )
    contract.call(
        "GET",
        "/assets/{id}",
        path_params={"id": "00000000-0000-4000-8000-000000000000"},
        expect=400,
    )


def test_albums(contract: Contract, fake_library: FakeLibrary) -> None:
    variants: list[dict[str, str]] = [{}]
    if contract.server.version_info >= (3, 0, 0):
        variants += [{"isShared": "true"}, {"isOwned": "false"}]
    else:
        variants += [{"shared": "true"}, {"shared": "false"}]
    for params in variants:
        contract.call("GET", "/albums", params=params)
    for album in fake_library.albums.values():
        contract.call("GET", "/albums/{id}", path_params={"id": album.id})
        contract.call(
            "GET", "/albums/{id}", path_params={"id": album.id}, params={"withoutAssets": "true"}
        )


def test_people_tags_timeline(contract: Contract, fake_library: FakeLibrary) -> None:
    people = contract.call("GET", "/people", params={"withHidden": "true"})
    contract.call("GET", "/people", params={"size": "2", "page": "2"})
    for person in people["people"]:
        contract.call("GET", "/people/{id}", path_params={"id": person["id"]})
    contract.call("GET", "/tags")
    for params in ({}, {"visibility": "timeline"}, {"isFavorite": "true"}, {"isTrashed": "true"}):
        buckets = contract.call("GET", "/timeline/buckets", params=params)
        for bucket in buckets[:3]:
            contract.call(
                "GET",
                "/timeline/bucket",
                params={**params, "timeBucket": bucket["timeBucket"], "withCoordinates": "true"},
            )
    album = fake_library.album_named("Shared with me")
    contract.call("GET", "/timeline/buckets", params={"albumId": album.id})


@pytest.mark.parametrize("version", VERSIONS)
def test_every_route_is_in_the_spec(version: str) -> None:
    """Each endpoint the fake serves for a version exists in that version's spec."""
    paths = load_spec(version)["paths"]
    major, minor, patch = (int(p) for p in version.split("."))
    served = 0
    for route in ROUTES:
        if (major, minor, patch) < route.since:
            continue
        template = route.pattern.pattern.removeprefix("^/api").removesuffix("$")
        template = template.replace("(?P<id>[^/]+)", "{id}")
        assert route.method.lower() in paths.get(template, {}), (version, template)
        served += 1
    assert served >= 25


@pytest.fixture
def contract32(fake_library: FakeLibrary) -> Iterator[Contract]:
    with (
        FakeImmich(fake_library, version="3.2.0", smart_search=True) as server,
        httpx.Client(base_url=server.url, headers={"x-api-key": server.api_key}) as client,
    ):
        yield Contract(server, client)


def test_v32_config(contract32: Contract) -> None:
    for template in ("/config", "/config/defaults", "/public/config", "/public/config/defaults"):
        contract32.call("GET", template)


def test_v32_search_v2(contract32: Contract, fake_library: FakeLibrary) -> None:
    album = fake_library.album_named("Shared with me").id
    alice = next(p.id for p in fake_library.people.values() if p.name == "Alice")
    filters: list[dict[str, Any]] = [
        {"takenAt": {"gte": "2019-01-01T00:00:00.000Z", "lt": "2021-01-01T00:00:00.000Z"}},
        {"trashedAt": {"ne": None}},
        {"visibility": {"in": ["archive", "hidden"]}, "type": {"eq": "IMAGE"}},
        {"albumIds": {"any": [album]}},
        {
            "personIds": {"all": [alice]},
            "or": [{"city": {"eq": "Kyoto"}}, {"rating": {"eq": None}}],
        },
        {"originalFileName": {"endsWith": ".png"}, "fileSizeInBytes": {"gt": 1000}},
    ]
    for tree in filters:
        for order in (None, {"field": "rating", "direction": "asc"}):
            body: dict[str, Any] = {"filter": tree, "withExif": True, "size": 5}
            if order is not None:
                body["orderBy"] = order
            result = contract32.call("POST", "/search/metadata", json_body=body)
            cursor = result["assets"]["nextCursor"]
            if cursor is not None:
                contract32.call("POST", "/search/metadata", json_body={**body, "cursor": cursor})
        contract32.call("POST", "/search/statistics", json_body={"filter": tree})
        contract32.call("POST", "/search/smart", json_body={"query": "temple", "filter": tree})
    contract32.call(
        "POST", "/search/metadata", json_body={"filter": {"nope": {"eq": 1}}}, expect=400
    )


def test_v32_asset_files_and_edits(contract32: Contract, fake_library: FakeLibrary) -> None:
    edited = [a for a in fake_library.sorted_assets() if a.is_edited and not a.is_trashed]
    with_sidecar = [a for a in fake_library.sorted_assets() if a.has_sidecar]
    assert edited and with_sidecar
    for asset in [*edited[:3], *with_sidecar[:3], fake_library.find("large-video.mp4")]:
        files = contract32.call("GET", "/asset-files", params={"assetId": asset.id})
        assert files
        for params in ({"type": "sidecar"}, {"isEdited": "true"}):
            contract32.call("GET", "/asset-files", params={"assetId": asset.id, **params})
        for file in files:
            contract32.call("GET", "/asset-files/{id}", path_params={"id": file["id"]})
            contract32.call("GET", "/asset-files/{id}/download", path_params={"id": file["id"]})
        contract32.call("GET", "/assets/{id}", path_params={"id": asset.id})
        contract32.call(
            "GET", "/assets/{id}/original", path_params={"id": asset.id}, params={"edited": "true"}
        )
        contract32.call(
            "GET", "/assets/{id}/thumbnail", path_params={"id": asset.id}, params={"edited": "true"}
        )
    contract32.call(
        "GET",
        "/asset-files/{id}",
        path_params={"id": "00000000-0000-4000-8000-000000000000"},
        expect=400,
    )
