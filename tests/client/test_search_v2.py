"""The client's one search choice: search v2 (filter tree, cursors) on Immich 3.2+,
the flat fields below. Against the fake over real HTTP; what was sent is read
from the fake's request log."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from immichfs.catalog.catalog import Catalog, CatalogSettings
from immichfs.client import search
from immichfs.client.connector import ImmichConnector, features_from_config
from immichfs_fake import FakeImmich, FakeLibrary

V32 = "3.2.0"
REPO = Path(__file__).resolve().parents[2]
SPECS = [
    d / "shared" / "immich-openapi" / "immich-openapi-specs-v3.2.0.json"
    for d in (REPO.parent, REPO, REPO.parent.parent)
]
#: what the 3.2 spec deprecates, for when it is not beside the repository
FLAT_FIELDS = {
    *("page", "visibility", "type", "withDeleted", "updatedAfter", "updatedBefore", "order"),
    *("albumIds", "personIds", "tagIds", "takenAfter", "takenBefore", "trashedAfter"),
    *("isFavorite", "originalFileName", "description", "city", "country", "make", "model"),
}


def deprecated_fields() -> set[str]:
    """``MetadataSearchDto``'s deprecated (flat) fields, from the 3.2 spec when present."""
    spec_path = next((p for p in SPECS if p.exists()), None)
    if spec_path is None:
        return FLAT_FIELDS
    spec = json.loads(spec_path.read_text())
    props = spec["components"]["schemas"]["MetadataSearchDto"]["properties"]
    return {name for name, prop in props.items() if prop.get("deprecated")}


def search_bodies(srv: FakeImmich) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in srv.requests.select("POST", "/api/search/metadata")]


def visible_ids(lib: FakeLibrary, *, type_: str | None = None, trashed: bool = False) -> set[str]:
    return {
        a.id
        for a in lib.assets.values()
        if a.owner_id == lib.me.id
        and a.visibility == "timeline"
        and a.is_trashed == trashed
        and (type_ is None or a.type == type_)
    }


def test_filter_tree_keeps_the_flat_meaning() -> None:
    tree, rest = search.filter_tree(
        {
            "type": "IMAGE",
            "visibility": "timeline",
            "originalFileName": "50%_off",
            "albumIds": ["a"],
            "takenAfter": "2020-01-01T00:00:00.000Z",
            "takenBefore": "2021-01-01T00:00:00.000Z",
            "withDeleted": True,
            "somethingNew": 1,
        }
    )
    assert tree == {
        "type": {"eq": "IMAGE"},
        "visibility": {"eq": "timeline"},
        "originalFileName": {"like": "%50\\%\\_off%"},
        "albumIds": {"all": ["a"]},
        "takenAt": {"gte": "2020-01-01T00:00:00.000Z", "lte": "2021-01-01T00:00:00.000Z"},
        "or": [{"trashedAt": {"eq": None}}, {"trashedAt": {"ne": None}}],
    }
    assert rest == {"somethingNew": 1}
    assert search.filter_tree({})[0] == {"trashedAt": {"eq": None}}
    assert search.filter_tree({"trashedAfter": "x"})[0] == {"trashedAt": {"gte": "x"}}


def test_features_from_config() -> None:
    config = {"machineLearning": {"enabled": True, "clip": {"enabled": True}}}
    assert features_from_config(config)["smartSearch"] is True
    config["machineLearning"]["enabled"] = False
    assert features_from_config(config)["smartSearch"] is False


async def test_v32_listings_page_by_cursor_without_flat_fields(fake_library: FakeLibrary) -> None:
    with FakeImmich(fake_library, version=V32) as srv:
        async with ImmichConnector(srv.url, srv.api_key) as immich:
            catalog = Catalog(immich, settings=CatalogSettings(page_size=25))
            photos = await catalog.timeline("IMAGE")
            trash = await catalog.trash()
            present = await catalog.present_ids()
            changed = await catalog.changed_since(datetime(1970, 1, 1, tzinfo=UTC))
            found = await immich.search_assets("kinkaku", size=5)
        bodies = search_bodies(srv)
    assert {a.id for a in photos} == visible_ids(fake_library, type_="IMAGE")
    assert {a.id for a in trash} == visible_ids(fake_library, trashed=True)
    assert visible_ids(fake_library) | visible_ids(fake_library, trashed=True) <= present
    assert {a.id for a in changed} >= visible_ids(fake_library, trashed=True)
    assert any("Kinkaku" in a["originalFileName"] for a in found)
    flat = deprecated_fields()
    assert flat and bodies
    for body in bodies:
        assert "filter" in body, body
        assert not flat & set(body), f"flat fields sent: {flat & set(body)}"
    # deltas ask by updatedAt; the trash is explicit
    assert any("gte" in b["filter"].get("updatedAt", {}) for b in bodies)
    assert any(b["filter"].get("trashedAt") == {"gte": "1970-01-01T00:00:00.000Z"} for b in bodies)
    # features (smart search or not) come from /config, not the deprecated /server/features
    assert srv.requests.select("GET", "/api/config")
    assert not srv.requests.select("GET", "/api/server/features")
    # more than one page per listing, every later page by cursor
    assert sum("cursor" in body for body in bodies) >= len(visible_ids(fake_library)) // 25 - 1


async def test_v31_keeps_the_flat_fields(fake_library: FakeLibrary) -> None:
    with FakeImmich(fake_library, version="3.1.0") as srv:
        async with ImmichConnector(srv.url, srv.api_key) as immich:
            catalog = Catalog(immich, settings=CatalogSettings(page_size=25))
            photos = await catalog.timeline("IMAGE")
        bodies = search_bodies(srv)
    assert {a.id for a in photos} == visible_ids(fake_library, type_="IMAGE")
    assert all("filter" not in b and "cursor" not in b and "page" in b for b in bodies)


async def test_v32_listing_stays_exact_while_assets_change(mutable_library: FakeLibrary) -> None:
    lib = mutable_library
    before = visible_ids(lib, type_="IMAGE")
    with FakeImmich(lib, version=V32) as srv:
        async with ImmichConnector(srv.url, srv.api_key) as immich:
            seen: list[str] = []
            changed: dict[str, str] = {}
            newest = max(lib.assets[i].file_created_at for i in before)
            async for item in immich.iter_search_metadata(
                {"type": "IMAGE", "visibility": "timeline"}, page_size=10
            ):
                seen.append(item["id"])
                if len(seen) == 10:
                    # after the first page: two of it deleted, one newer added (all before
                    # the cursor: page numbers would skip one), one later asset deleted
                    changed["gone-seen"] = seen[0]
                    changed["gone-seen-2"] = seen[1]
                    lib.delete(seen[0])
                    lib.delete(seen[1])
                    later = sorted(before - set(seen))[0]
                    changed["gone-later"] = later
                    lib.delete(later)
                    added = lib.add_asset("during.jpg", taken=newest + timedelta(days=1))
                    changed["added"] = added.id
    assert len(seen) == len(set(seen)), "an asset was listed twice"
    gone_seen = {changed["gone-seen"], changed["gone-seen-2"]}
    unchanged = before - gone_seen - {changed["gone-later"]}
    assert set(seen) - gone_seen == unchanged
    assert changed["added"] not in seen


async def test_v32_smart_search_sends_the_filter(fake_library: FakeLibrary) -> None:
    with FakeImmich(fake_library, version=V32, smart_search=True) as srv:
        async with ImmichConnector(srv.url, srv.api_key) as immich:
            found = await immich.search_assets("temple", type="IMAGE", size=5)
        smart = [json.loads(r.body) for r in srv.requests.select("POST", "/api/search/smart")]
    assert found and all(a["type"] == "IMAGE" for a in found)
    assert smart and all(b["filter"]["type"] == {"eq": "IMAGE"} for b in smart)
    # smart search has no cursor: the page number is the one flat field left
    assert all(set(b) & deprecated_fields() <= {"page"} for b in smart)
