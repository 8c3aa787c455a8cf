"""``/server/*``, ``/auth/validateToken``, ``/api-keys/me``, ``/users/me``."""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import TYPE_CHECKING

from immichfs_fake import dto
from immichfs_fake.dto import JSON
from immichfs_fake.httpd import Request, Response

if TYPE_CHECKING:
    from immichfs_fake.server import FakeImmich


def ping(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    return srv.json_response({"res": "pong"})


def server_version(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    major, minor, patch = srv.version_info
    body: JSON = {"major": major, "minor": minor, "patch": patch}
    if srv.version_info >= (3, 0, 0):
        body["prerelease"] = None
    return srv.json_response(body)


def server_features(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    body: JSON = {
        "smartSearch": srv.smart_search,
        "facialRecognition": True,
        "duplicateDetection": srv.smart_search,
        "map": True,
        "reverseGeocoding": True,
        "importFaces": False,
        "sidecar": True,
        "search": True,
        "trash": True,
        "oauth": False,
        "oauthAutoLaunch": False,
        "passwordLogin": True,
        "configFile": False,
        "email": False,
    }
    if srv.version_info >= (2, 2, 0):
        body["ocr"] = False
    if srv.version_info >= (3, 0, 0):
        body["realtimeTranscoding"] = False
    return srv.json_response(body)


def server_config(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    body: JSON = {
        "loginPageMessage": "",
        "trashDays": 30,
        "userDeleteDelay": 7,
        "oauthButtonText": "Login with OAuth",
        "isInitialized": True,
        "isOnboarded": True,
        "externalDomain": "",
        "publicUsers": True,
        "mapDarkStyleUrl": "https://tiles.immich.cloud/v1/style/dark.json",
        "mapLightStyleUrl": "https://tiles.immich.cloud/v1/style/light.json",
    }
    if srv.version_info >= (2, 3, 0):  # between v2.0.1 and v2.7.5 (inferred)
        body["maintenanceMode"] = False
    if srv.version_info >= (3, 0, 0):
        body["minFaces"] = 3
    if srv.version_info >= (3, 2, 0):
        body["oauthAccountManagementUrl"] = ""
    return srv.json_response(body)


def user_config(srv: FakeImmich) -> JSON:
    """``UserConfigDto`` (3.2): the settings ``/server/config`` and ``/server/features``
    gave, grouped as the admin config is (same values as those two)."""
    return {
        "ffmpeg": {
            "realtime": {"enabled": False, "resolutions": [], "videoCodecs": []},
        },
        "image": {
            "fullsize": {"enabled": False},
            "preview": {"size": 1440},
            "thumbnail": {"size": 250},
        },
        "machineLearning": {
            "enabled": srv.smart_search,
            "clip": {"enabled": srv.smart_search},
            "duplicateDetection": {"enabled": srv.smart_search},
            "facialRecognition": {"enabled": True, "minFaces": 3},
            "ocr": {"enabled": False},
        },
        "map": {
            "enabled": True,
            "darkStyle": "https://tiles.immich.cloud/v1/style/dark.json",
            "lightStyle": "https://tiles.immich.cloud/v1/style/light.json",
        },
        "oauth": {"enabled": False, "autoLaunch": False, "buttonText": "Login with OAuth"},
        "passwordLogin": {"enabled": True},
        "reverseGeocoding": {"enabled": True},
        "server": {"externalDomain": "", "loginPageMessage": "", "publicUsers": True},
        "theme": {"customCss": ""},
        "trash": {"enabled": True, "days": 30},
        "user": {"deleteDelay": 7},
    }


def config(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    """``GET /config`` and ``/config/defaults`` (3.2; the fake runs on defaults)."""
    return srv.json_response(user_config(srv))


def public_config(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    full = user_config(srv)
    return srv.json_response(
        {
            "oauth": full["oauth"],
            "passwordLogin": full["passwordLogin"],
            "server": {"loginPageMessage": full["server"]["loginPageMessage"]},
            "theme": full["theme"],
        }
    )


def media_types(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    return srv.json_response(
        {
            "image": [".jpg", ".jpeg", ".png", ".webp", ".heic", ".gif", ".tif", ".dng"],
            "video": [".mp4", ".mov", ".webm", ".mkv", ".avi", ".3gp"],
            "sidecar": [".xmp"],
        }
    )


def server_about(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    tag = f"v{srv.version}"
    return srv.json_response(
        {
            "version": tag,
            "versionUrl": f"https://github.com/immich-app/immich/releases/tag/{tag}",
            "licensed": False,
            "nodejs": "v22.18.0",
            "ffmpeg": "7.1.1",
            "libvips": "8.17.1",
            "exiftool": "13.30",
            "imagemagick": "7.1.2",
            "repository": "immich-app/immich",
            "repositoryUrl": "https://github.com/immich-app/immich",
            "sourceRef": tag,
        }
    )


def server_storage(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    used = sum(a.size for a in srv.library.sorted_assets())
    size = max(1 << 40, used * 4)  # a 1 TiB disk, or bigger for huge libraries

    def human(n: int) -> str:
        value = float(n)
        for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
            if value < 1024 or unit == "TiB":
                return f"{value:.1f} {unit}"
            value /= 1024
        return f"{value:.1f} TiB"

    return srv.json_response(
        {
            "diskSize": human(size),
            "diskUse": human(used),
            "diskAvailable": human(size - used),
            "diskSizeRaw": size,
            "diskUseRaw": used,
            "diskAvailableRaw": size - used,
            "diskUsagePercentage": round(used * 100 / size, 2),
        }
    )


def validate_token(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    return srv.json_response({"authStatus": True})


def api_key_me(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    return srv.json_response(
        {
            "id": str(uuid.UUID(bytes=hashlib.md5(srv.api_key.encode()).digest(), version=4)),
            "name": "immichfs fake key",
            "createdAt": dto.iso(srv.user.created_at),
            "updatedAt": dto.iso(srv.user.created_at),
            "permissions": list(srv.permissions),
        }
    )


def users_me(srv: FakeImmich, req: Request, m: re.Match[str]) -> Response:
    return srv.json_response(dto.user_admin(srv.user, srv.library, srv.version_info))
