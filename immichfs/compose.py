"""The library as a tree, built from settings: what every adapter of the tree shares.

The FUSE mount (:mod:`immichfs.fuse.mount`) and ``immich://`` for fsspec
(:mod:`immichfs.fsspec`) show the same tree because both build it here: the
metadata caches, the catalog, the reader pool, the :class:`~immichfs.vfs.tree.Tree`
and its views, over one connector and one byte client. This is a composition root
(it reads :class:`~immichfs.options.Settings`); it imports no adapter, so no
pyfuse3.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from immichfs import options
from immichfs.catalog.cache import CacheSettings, MetadataCache
from immichfs.catalog.catalog import Catalog, CatalogSettings
from immichfs.catalog.content import CachedSource
from immichfs.catalog.local import LocalCache
from immichfs.catalog.reader import RangeSource, ReaderPool, range_source
from immichfs.client.connector import ASSET_FILES_SINCE, ImmichConnector
from immichfs.client.originals import RangeGetClient
from immichfs.client.retry import RangeFetcher
from immichfs.errors import TransientError
from immichfs.model import Asset
from immichfs.vfs.refresh import renewable
from immichfs.vfs.tree import Tree, TreeSettings
from immichfs.vfs.views import ViewOptions, Views, ViewsExtension, install_views

log = logging.getLogger(__name__)


def build_tree(
    connector: ImmichConnector,
    settings: options.Settings,
    fetch: RangeSource | RangeFetcher | None = None,
    *,
    local: LocalCache | None = None,
) -> tuple[Tree, Views]:
    """The tree over ``connector`` and its views: caches, catalog, reader pool.

    ``fetch`` serves the bytes of originals (default: the connector's ranged stream);
    ``local`` adds the on-disk catalog and content cache (:mod:`immichfs.catalog.local`).
    The views' virtual files and extended attributes are the caller's to add
    (:class:`~immichfs.vfs.views.ViewsExtension`: the mount hands it its refresh task).
    """
    cache = MetadataCache(
        CacheSettings(
            listing_ttl=settings.listing_ttl,
            asset_ttl=settings.asset_ttl,
            max_assets=settings.cache_entries,
        )
    )
    catalog = Catalog(
        connector,
        cache,
        CatalogSettings(search_limit=settings.search_limit, edited=settings.edits == "edited"),
    )
    source: RangeSource | RangeFetcher = fetch or connector.stream_full_resolution_file
    content = None
    if local is not None:
        source = content = _use_local(connector, catalog, local, source)
    readers = ReaderPool(source, options.readahead_config(settings))
    tree = Tree(
        catalog,
        readers,
        TreeSettings(show_trash=settings.show_trash, sidecars=_sidecars(connector, settings)),
        content=content,
    )
    views = install_views(
        tree,
        ViewOptions(
            show_unnamed_people=not settings.hide_unnamed_people,
            by_date_days=settings.by_date_days,
        ),
    )
    return tree, views


def _use_local(
    connector: ImmichConnector,
    catalog: Catalog,
    local: LocalCache,
    source: RangeSource | RangeFetcher,
) -> CachedSource:
    """Hook the on-disk catalog into ``catalog`` and the content cache around ``source``."""
    cache, store = catalog.cache, local.store
    memory = catalog.memory = local.memory

    async def fetch_asset(asset_id: str) -> Asset:
        return Asset.from_json(await connector.get_asset_info(asset_id))

    async def version_of(asset_id: str) -> str | None:
        # the checksum the asset has now: right after a remount, until the refresh
        # task has brought the catalog up to date, the server's (one request); then
        # its cached metadata, else the catalog's
        try:
            fresh = await memory.confirmed(asset_id, lambda: fetch_asset(asset_id))
        except TransientError:
            fresh = None  # the server went away meanwhile: the catalog's it is
        if fresh is not None:
            cache.assets.put(asset_id, fresh)
            return fresh.checksum or None
        known = cache.assets.peek(asset_id)
        if known is not None:
            return known.checksum or None
        return store.checksum(asset_id)

    # what the refresh task keeps current is served from the catalog at once
    memory.current = renewable
    return CachedSource(range_source(source), local.content, version_of, online=local.reachability)


def _sidecars(connector: ImmichConnector, settings: options.Settings) -> bool:
    """``sidecars`` where the server has the asset files API (3.2+), with a warning
    where it has not."""
    if not settings.sidecars:
        return False
    version = connector.server_version
    if version is not None and version < ASSET_FILES_SINCE:
        log.warning(
            "--sidecars needs Immich 3.2 or newer (the asset files API); this server is "
            "v%s: no sidecars are shown",
            ".".join(map(str, version)),
        )
        return False
    return True


def byte_client(connector: ImmichConnector) -> RangeGetClient:
    """The byte path: a lean ranged-GET client, the connector for what it cannot do."""
    return RangeGetClient(connector.config, fallback=connector.stream_full_resolution_file)


@asynccontextmanager
async def open_tree(settings: options.Settings) -> AsyncIterator[Tree]:
    """Connector, byte client and tree for ``settings``, with its readers running;
    everything is closed on exit. Nothing is requested before the first use."""
    async with ImmichConnector(config=options.client_config(settings)) as connector:
        fetch = byte_client(connector)
        try:
            tree, views = build_tree(connector, settings, fetch)
            tree.add_extension(ViewsExtension(views))
            async with tree.readers.running():
                yield tree
        finally:
            await fetch.aclose()
