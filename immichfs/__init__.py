"""immichfs: an Immich photo server as ordinary read-only files.

Layers, top to bottom (nothing below ``fs`` imports pyfuse3):

    cli / mount      composition root, command line
    fs               pyfuse3 Operations adapter (the only FUSE-aware module)
    tree, names      the virtual directory views, file-name rules
    cache, reader    metadata caches, ranged reads with readahead
    connector        the Immich HTTP API (httpx), errors in Immich's words
"""

__version__ = "0.1.0"
