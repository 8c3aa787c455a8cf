"""``immich://`` for fsspec: the immichfs tree without FUSE (see :mod:`.filesystem`)."""

from immichfs.fsspec.filesystem import ImmichFile, ImmichFileSystem

__all__ = ["ImmichFile", "ImmichFileSystem"]
