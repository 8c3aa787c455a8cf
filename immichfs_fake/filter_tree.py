"""Search v2's filter tree (Immich 3.2): ``{"filter": {field: {operator: value}, "or": [...]}}``.

The spec (``SearchFilter``) gives the fields, the operators each field takes
and that ``SearchFilter``/``SearchFilterBranch`` reject unknown fields; it is
silent on the semantics, so the fake assumes SQL's (see ``README.md`` here):

- the fields of one object are ANDed; ``or`` is a list of branches, the asset
  must match the top-level fields and at least one branch; a branch holds no
  ``or`` of its own. Several operators on one field are ANDed.
- comparisons never match a null value (``ne``/``notIn`` included, as in SQL);
  ``eq: null`` is ``IS NULL`` and ``ne: null`` is ``IS NOT NULL``.
- ``like``/``notLike`` take SQL ``LIKE`` patterns (``%``, ``_``, ``\\`` escapes);
  ``like``, ``notLike``, ``startsWith`` and ``endsWith`` are case- and
  accent-insensitive like the flat text fields; ``eq``/``ne``/``in``/``notIn``
  are exact.
- ``albumIds``/``personIds``/``tagIds`` take ``all``/``any``/``none``; a tag
  matches its descendants too (as the flat ``tagIds``).
- implicit conditions, decided per conjunction (the top level plus one
  branch): trashed assets only where that conjunction constrains
  ``trashedAt`` (or the deprecated ``withDeleted``/``trashedAfter``/
  ``trashedBefore``/``isOffline`` is set), the default visibility (all but
  locked) unless it constrains ``visibility``, the caller's own assets unless
  it constrains ``albumIds`` with ``all`` or ``any``.
- operator objects are not strict in the spec: unknown operators are dropped
  (zod's default), and a field left without operators constrains nothing.
"""

from __future__ import annotations

import base64
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from immichfs_fake.dto import ASSET_TYPES, JSON, VISIBILITIES, Version
from immichfs_fake.httpd import HttpError

if TYPE_CHECKING:
    from immichfs_fake.library import FakeAsset
    from immichfs_fake.server import FakeImmich

Path = list[str | int]
Condition = tuple[str, JSON]  # (field, {operator: normalised value})
Predicate = Callable[["FakeAsset"], bool]


#: field -> filter kind (the spec's ``*Filter`` schemas)
FIELDS: dict[str, str] = {
    "albumIds": "ids",
    "personIds": "ids",
    "tagIds": "ids",
    "checksum": "string",
    "encodedVideoPath": "string",
    "city": "string?",
    "country": "string?",
    "state": "string?",
    "make": "string?",
    "model": "string?",
    "lensModel": "string?",
    "createdAt": "date",
    "updatedAt": "date",
    "takenAt": "date",
    "trashedAt": "date?",
    "description": "pattern",
    "originalFileName": "pattern",
    "originalPath": "pattern",
    "fileSizeInBytes": "number",
    "rating": "number?",
    "hasAlbums": "bool",
    "hasPeople": "bool",
    "hasTags": "bool",
    "isEncoded": "bool",
    "isFavorite": "bool",
    "isMotion": "bool",
    "isOffline": "bool",
    "id": "id",
    "libraryId": "id?",
    "ocr": "similarity",
    "type": "enum:type",
    "visibility": "enum:visibility",
}

# operator -> value kind; "?" allows null, "[]" a non-empty list, "+" a non-empty string
_COMPARE = {"eq": "{v}", "ne": "{v}", "gt": "{v}", "gte": "{v}", "lt": "{v}", "lte": "{v}"}
_SET = {"eq": "{v}", "ne": "{v}", "in": "{v}[]", "notIn": "{v}[]"}
OPERATORS: dict[str, dict[str, str]] = {
    "ids": {"all": "uuid[]", "any": "uuid[]", "none": "uuid[]"},
    "string": {k: v.format(v="str") for k, v in _SET.items()},
    "string?": {"eq": "str?", "ne": "str?", "in": "str[]", "notIn": "str[]"},
    "date": {k: v.format(v="date") for k, v in _COMPARE.items()},
    "date?": {**{k: v.format(v="date") for k, v in _COMPARE.items()}, "eq": "date?", "ne": "date?"},
    "pattern": {
        "eq": "str?",
        "ne": "str?",
        "in": "str[]",
        "notIn": "str[]",
        "like": "str+",
        "notLike": "str+",
        "startsWith": "str+",
        "endsWith": "str+",
    },
    "number": {
        **{k: v.format(v="num") for k, v in _COMPARE.items()},
        "in": "num[]",
        "notIn": "num[]",
    },
    "number?": {
        **{k: v.format(v="num") for k, v in _COMPARE.items()},
        "eq": "num?",
        "ne": "num?",
        "in": "num[]",
        "notIn": "num[]",
    },
    "bool": {"eq": "bool"},
    "id": {"eq": "uuid", "ne": "uuid"},
    "id?": {"eq": "uuid?", "ne": "uuid?"},
    "similarity": {"matches": "str+"},
    "enum:type": {k: v.format(v="type") for k, v in _SET.items()},
    "enum:visibility": {k: v.format(v="visibility") for k, v in _SET.items()},
}
#: operators the spec marks required
_REQUIRED = {"bool": "eq", "similarity": "matches"}


def fold(text: str) -> str:
    """Case- and accent-insensitive form, as Immich's ``f_unaccent`` + ILIKE."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def default_visibility(version: Version) -> tuple[str, ...]:
    """What a search lists when it does not constrain visibility."""
    if version >= (3, 0, 0):
        return ("timeline", "archive", "hidden")
    return ("timeline",)


@dataclass(frozen=True, slots=True)
class FlatScope:
    """Implicit conditions the deprecated flat fields of the same request already decide."""

    visibility: bool = False  # a flat ``visibility`` was given
    with_deleted: bool = False  # flat fields asked for trashed assets
    albums: bool = False  # a flat ``albumIds`` scoped the search to albums


# -- validation ------------------------------------------------------------------------


def invalid(path: Path, code: str, message: str) -> HttpError:
    return HttpError(
        400,
        [f"{'.'.join(map(str, path))}: {message}"],
        zod=[{"code": code, "path": path, "message": message}],
    )


def _value(srv: FakeImmich, kind: str, value: Any, path: Path) -> Any:
    """``value`` checked against a value kind and normalised (dates parsed, ids lowered)."""
    if kind.endswith("?"):
        if value is None:
            return None
        kind = kind[:-1]
    if kind.endswith("[]"):
        if not isinstance(value, list):
            raise invalid(path, "invalid_type", "Invalid input: expected array")
        if not value:
            raise invalid(path, "too_small", "Too small: expected array to have >=1 items")
        return [_value(srv, kind[:-2], v, [*path, i]) for i, v in enumerate(value)]
    if kind in ("str", "str+"):
        if not isinstance(value, str):
            raise invalid(path, "invalid_type", "Invalid input: expected string")
        if kind == "str+" and not value:
            raise invalid(path, "too_small", "Too small: expected string to have >=1 characters")
        return value
    if kind == "num":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid(path, "invalid_type", "Invalid input: expected number")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise invalid(path, "invalid_type", "Invalid input: expected boolean")
        return value
    if kind == "uuid":
        if not isinstance(value, str) or not _UUID.match(value):
            raise invalid(path, "invalid_format", "Invalid UUID")
        return value.lower()
    if kind == "date":
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise invalid(path, "invalid_format", "Invalid ISO datetime") from None
        if not isinstance(value, str):
            raise invalid(path, "invalid_type", "Invalid input: expected string")
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    allowed = ASSET_TYPES if kind == "type" else VISIBILITIES
    if value not in allowed:
        raise invalid(path, "invalid_value", "Invalid option: expected one of " + "|".join(allowed))
    return value


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.I)


def _object(value: Any, path: Path) -> JSON:
    if not isinstance(value, dict):
        raise invalid(path, "invalid_type", "Invalid input: expected object")
    return value


def _conditions(srv: FakeImmich, node: Any, path: Path, *, branch: bool) -> JSON:
    body = _object(node, path)
    out: JSON = {}
    for name, ops in body.items():
        if name == "or" and not branch:
            if not isinstance(ops, list):
                raise invalid([*path, "or"], "invalid_type", "Invalid input: expected array")
            if not ops:
                raise invalid(
                    [*path, "or"], "too_small", "Too small: expected array to have >=1 items"
                )
            out["or"] = [
                _conditions(srv, b, [*path, "or", i], branch=True) for i, b in enumerate(ops)
            ]
            continue
        kind = FIELDS.get(name)
        if kind is None:  # SearchFilter and SearchFilterBranch are strict
            raise invalid([*path], "unrecognized_keys", f'Unrecognized key: "{name}"')
        ops_path = [*path, name]
        ops = _object(ops, ops_path)
        required = _REQUIRED.get(kind)
        if required is not None and required not in ops:
            raise invalid([*ops_path, required], "invalid_type", "Invalid input: expected " + kind)
        allowed = OPERATORS[kind]
        out[name] = {
            op: _value(srv, allowed[op], v, [*ops_path, op])
            for op, v in ops.items()
            if op in allowed
        }
    return out


def parse(srv: FakeImmich, tree: Any) -> JSON:
    """The request's ``filter``, validated and normalised; raises 400 like zod, 401
    for a locked visibility, 400 for an album the caller cannot read."""
    parsed = _conditions(srv, tree, ["filter"], branch=False)
    for conditions in conjunctions(parsed):
        for name, ops in conditions:
            if name == "visibility" and (
                ops.get("eq") == "locked" or "locked" in (ops.get("in") or [])
            ):
                raise HttpError(401, "Elevated permission is required")
            if name == "albumIds":
                for ids in ops.values():
                    for album_id in ids:
                        if not srv.album_access(album_id):
                            raise HttpError(400, "Not found or no album.read access")
    return parsed


def conjunctions(tree: JSON) -> list[list[Condition]]:
    """The tree as an OR of ANDs: the top-level conditions with each branch."""
    top = [(k, v) for k, v in tree.items() if k != "or" and v]
    branches = tree.get("or")
    if not branches:
        return [top]
    return [top + [(k, v) for k, v in b.items() if v] for b in branches]


# -- matching -------------------------------------------------------------------------


def _like(pattern: str) -> re.Pattern[str]:
    """A LIKE pattern as a regex: ``%`` any run, ``_`` one character, ``\\`` escapes
    the next character (PostgreSQL's default escape)."""
    out: list[str] = []
    chars = iter(fold(pattern))
    for c in chars:
        if c == "\\":
            out.append(re.escape(next(chars, "\\")))
        elif c == "%":
            out.append(".*")
        elif c == "_":
            out.append(".")
        else:
            out.append(re.escape(c))
    return re.compile("^" + "".join(out) + "$", re.S)


def _operator(op: str, x: Any) -> Callable[[Any], bool]:
    """``op`` against ``x`` for one value ``v`` (None: SQL NULL)."""
    if op == "eq":
        return (lambda v: v is None) if x is None else (lambda v: v is not None and v == x)
    if op == "ne":
        return (lambda v: v is not None) if x is None else (lambda v: v is not None and v != x)
    if op == "gt":
        return lambda v: v is not None and v > x
    if op == "gte":
        return lambda v: v is not None and v >= x
    if op == "lt":
        return lambda v: v is not None and v < x
    if op == "lte":
        return lambda v: v is not None and v <= x
    if op == "in":
        return lambda v: v is not None and v in x
    if op == "notIn":
        return lambda v: v is not None and v not in x
    if op in ("like", "notLike"):
        regex = _like(x)
        want = op == "like"
        return lambda v: v is not None and bool(regex.match(fold(v))) == want
    if op == "startsWith":
        return lambda v: v is not None and fold(v).startswith(fold(x))
    if op == "endsWith":
        return lambda v: v is not None and fold(v).endswith(fold(x))
    if op == "all":
        return lambda v: set(x) <= v
    if op == "any":
        return lambda v: bool(set(x) & v)
    if op == "none":
        return lambda v: not set(x) & v
    if op == "matches":  # OCR: the fake has no recognised text
        return lambda v: False
    raise AssertionError(op)


def _checksum_bytes(text: str) -> bytes:
    try:
        return base64.b64decode(text) if len(text) == 28 else bytes.fromhex(text)
    except ValueError:
        return b""


def conjunction(srv: FakeImmich, conditions: list[Condition], flat: FlatScope) -> Predicate:
    """The predicate of one AND of conditions, with its implicit conditions."""
    lib = srv.library
    me = srv.user.id
    fields = {name for name, _ in conditions}
    albums_scope = flat.albums or any(
        name == "albumIds" and ("all" in ops or "any" in ops) for name, ops in conditions
    )
    with_trash = flat.with_deleted or "trashedAt" in fields
    visibilities = (
        None if flat.visibility or "visibility" in fields else default_visibility(srv.version_info)
    )
    memberships: dict[str, set[str]] = {}
    for album in list(lib.albums.values()):
        for asset_id in list(album.asset_ids):
            memberships.setdefault(asset_id, set()).add(album.id)
    ancestors: dict[str, set[str]] = {}
    for tag in list(lib.tags.values()):
        chain, parent = {tag.id}, tag.parent_id
        while parent is not None and parent in lib.tags and parent not in chain:
            chain.add(parent)
            parent = lib.tags[parent].parent_id
        ancestors[tag.id] = chain

    def tags_of(a: FakeAsset) -> set[str]:
        out: set[str] = set()
        for t in a.tag_ids:
            out |= ancestors.get(t, set())
        return out

    getters: dict[str, Callable[[FakeAsset], Any]] = {
        "albumIds": lambda a: memberships.get(a.id, set()),
        "personIds": lambda a: set(a.person_ids),
        "tagIds": tags_of,
        "checksum": lambda a: lib.checksum_raw(a.id),
        "encodedVideoPath": lambda a: None,  # no transcodes in the fake
        "city": lambda a: a.city,
        "country": lambda a: a.country,
        "state": lambda a: a.state,
        "make": lambda a: a.make,
        "model": lambda a: a.model,
        "lensModel": lambda a: a.lens_model,
        "createdAt": lambda a: a.created_at,
        "updatedAt": lambda a: a.updated_at,
        "takenAt": lambda a: a.file_created_at,
        "trashedAt": lambda a: a.deleted_at,
        "description": lambda a: a.description,
        "originalFileName": lambda a: a.original_file_name,
        "originalPath": lambda a: a.original_path,
        "fileSizeInBytes": lambda a: a.size,
        "rating": lambda a: a.rating,
        "hasAlbums": lambda a: a.id in memberships,
        "hasPeople": lambda a: bool(a.person_ids),
        "hasTags": lambda a: bool(a.tag_ids),
        "isEncoded": lambda a: False,
        "isFavorite": lambda a: a.is_favorite and a.owner_id == me,
        "isMotion": lambda a: a.live_photo_video_id is not None,
        "isOffline": lambda a: False,
        "id": lambda a: a.id,
        "libraryId": lambda a: None,  # every asset is in the upload library
        "ocr": lambda a: None,
        "type": lambda a: a.type,
        "visibility": lambda a: a.visibility,
    }
    tests: list[tuple[Callable[[FakeAsset], Any], Callable[[Any], bool]]] = []
    for name, ops in conditions:
        for op, x in ops.items():
            if name == "checksum":
                x = [_checksum_bytes(v) for v in x] if isinstance(x, list) else _checksum_bytes(x)
            tests.append((getters[name], _operator(op, x)))

    def match(a: FakeAsset) -> bool:
        if a.visibility == "locked":
            return False
        if visibilities is not None and a.visibility not in visibilities:
            return False
        if not albums_scope and a.owner_id != me:
            return False
        if a.is_trashed and not with_trash:
            return False
        return all(test(get(a)) for get, test in tests)

    return match
