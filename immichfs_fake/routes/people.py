"""``/people``, ``/people/{id}``, its thumbnail, and ``/tags``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from immichfs_fake import dto, media
from immichfs_fake.httpd import Body, HttpError, Request, Response

if TYPE_CHECKING:
    from immichfs_fake.server import FakeImmich


def face_counts(srv: FakeImmich) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in srv.library.sorted_assets():
        if a.owner_id == srv.user.id and not a.is_trashed:
            for pid in a.person_ids:
                counts[pid] = counts.get(pid, 0) + 1
    return counts


def people(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    def number(name: str, default: int, high: int | None) -> int:
        raw = req.arg(name)
        if raw is None:
            return default
        if not raw.isdigit() or int(raw) < 1 or (high is not None and int(raw) > high):
            raise srv.validation(
                name,
                f"{name} must not be less than 1"
                if not high
                else f"{name} must not be greater than {high}",
                "too_big",
                "Invalid input",
            )
        return int(raw)

    page = number("page", 1, None)
    size = number("size", 500, 1000)
    with_hidden = req.arg("withHidden") == "true"
    counts = face_counts(srv)
    people = [
        p
        for p in srv.library.people.values()
        if p.owner_id == srv.user.id and counts.get(p.id, 0) >= (1 if p.name else 3)
    ]
    hidden = sum(1 for p in people if p.is_hidden)
    total = len(people)
    listed = [p for p in people if with_hidden or not p.is_hidden]
    listed.sort(
        key=lambda p: (
            p.is_hidden,
            not p.is_favorite,
            p.name == "",
            -counts.get(p.id, 0),
            p.name,
            p.id,
        )
    )
    chunk = listed[(page - 1) * size : page * size]
    return srv.json_response(
        {
            "people": [dto.person(p, srv.version_info) for p in chunk],
            "total": total,
            "hidden": hidden,
            "hasNextPage": page * size < len(listed),
        }
    )


def person_for(srv: FakeImmich, raw_id: str) -> Any:
    person = srv.library.people.get(srv.check_id(raw_id))
    if person is None or person.owner_id != srv.user.id:
        raise HttpError(400, "Not found or no person.read access")
    return person


def person_info(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    return srv.json_response(dto.person(person_for(srv, m["id"]), srv.version_info))


def person_thumbnail(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    person = person_for(srv, m["id"])
    data, content_type = media.thumbnail("person", person.id.encode())
    return Response(
        200,
        [
            ("Content-Type", content_type),
            ("Cache-Control", "private, no-cache, no-transform"),
            ("Content-Disposition", f"inline; filename*=UTF-8''{person.id}.jpeg"),
        ],
        Body(data=data, length=len(data)),
    )


def tags(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    tags = sorted(srv.library.tags.values(), key=lambda t: t.value)
    return srv.json_response([dto.tag(t) for t in tags])
