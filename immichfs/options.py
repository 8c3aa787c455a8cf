"""Every setting of immichfs, in one table.

``OPTIONS`` is the single source: it feeds the command-line flags, the
environment variables, the TOML config file and the documentation table
(``options_markdown()``). Precedence: flags > environment > config file >
defaults. The reason for each default is written in its help text.
"""

from __future__ import annotations

import argparse
import logging
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from immichfs.catalog.reader import MiB, ReadaheadConfig
from immichfs.client.config import DEFAULT_TIMEOUT, ClientConfig
from immichfs.client.http import read_key_file, warn_if_readable
from immichfs.client.retry import RetryPolicy
from immichfs.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATHS = (
    Path("~/.config/immichfs/config.toml").expanduser(),
    Path("/etc/immichfs/config.toml"),
)


@dataclass(frozen=True)
class Option:
    """One setting: its name (``snake_case``, also the TOML key), type, default and help."""

    name: str
    kind: type
    default: Any
    help: str
    env: str | None = None
    flag: bool = True  # settable on the command line (never for secrets: `ps` shows argv)
    group: str = "general"
    #: the only values allowed (a ``str`` option), in the order help shows them
    choices: tuple[str, ...] = ()

    @property
    def flag_name(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    # -- server
    Option(
        "url",
        str,
        None,
        "Immich server URL, e.g. http://immich.local:2283",
        "IMMICH_URL",
        group="server",
    ),
    Option(
        "api_key",
        str,
        None,
        "Immich API key. Never a flag: command lines are visible in `ps`.",
        "IMMICH_API_KEY",
        flag=False,
        group="server",
    ),
    Option(
        "api_key_file",
        Path,
        None,
        "file holding the API key (container secrets); warned about if group/world-readable",
        "IMMICH_API_KEY_FILE",
        group="server",
    ),
    Option(
        "ca_cert",
        Path,
        None,
        "PEM file of a CA to trust for https (self-signed servers)",
        "IMMICH_CA_CERT",
        group="server",
    ),
    Option(
        "insecure",
        bool,
        False,
        "skip TLS certificate checks (only when asked)",
        "IMMICH_INSECURE",
        group="server",
    ),
    Option(
        "timeout",
        float,
        DEFAULT_TIMEOUT,
        "seconds to wait for the server per request; no operation waits longer than this "
        "plus the retry budget",
        "IMMICHFS_TIMEOUT",
        group="server",
    ),
    Option(
        "retry_budget",
        float,
        RetryPolicy.budget,
        "total seconds spent retrying transient failures (5xx, 429, resets) before EIO",
        "IMMICHFS_RETRY_BUDGET",
        group="server",
    ),
    Option(
        "max_connections",
        int,
        16,
        "HTTP connections kept to the server; Immich has no rate limit, be polite",
        "IMMICHFS_MAX_CONNECTIONS",
        group="server",
    ),
    # -- mount
    Option(
        "allow_other",
        bool,
        False,
        "let other users see the mount (needs user_allow_other in /etc/fuse.conf unless root)",
        "IMMICHFS_ALLOW_OTHER",
        group="mount",
    ),
    Option(
        "uid",
        int,
        None,
        "owner uid of every file (default: the mounting user)",
        "IMMICHFS_UID",
        group="mount",
    ),
    Option(
        "gid",
        int,
        None,
        "owner gid of every file (default: the mounting user's group)",
        "IMMICHFS_GID",
        group="mount",
    ),
    Option(
        "nonempty",
        bool,
        False,
        "mount over a directory that has files in it (they are hidden until unmounted); "
        "without it such a mount is refused",
        "IMMICHFS_NONEMPTY",
        group="mount",
    ),
    Option(
        "show_trash",
        bool,
        False,
        "show trashed assets under /trash",
        "IMMICHFS_SHOW_TRASH",
        group="mount",
    ),
    Option(
        "edits",
        str,
        "original",
        "what a file serves for an asset edited in Immich: `original` (the unedited file, "
        "its size from Immich) or `edited` (the edited rendition, Immich 2.5+; its size "
        "costs one HEAD per edited file on first stat). The default keeps what was "
        "uploaded, as Immich's API does for API keys",
        "IMMICHFS_EDITS",
        group="mount",
        choices=("original", "edited"),
    ),
    Option(
        "sidecars",
        bool,
        False,
        "show each asset's XMP sidecar beside it as NAME.xmp, read-only (Immich 3.2+, "
        "asset files API; costs one request per asset the first time its directory is "
        "listed)",
        "IMMICHFS_SIDECARS",
        group="mount",
    ),
    Option(
        "hide_unnamed_people",
        bool,
        False,
        "leave unnamed face clusters out of /people (they are shown as unnamed-<id prefix>)",
        "IMMICHFS_HIDE_UNNAMED_PEOPLE",
        group="mount",
    ),
    Option(
        "by_date_days",
        bool,
        False,
        "split /by-date/YYYY/MM into DD day directories",
        "IMMICHFS_BY_DATE_DAYS",
        group="mount",
    ),
    Option(
        "search_limit",
        int,
        250,
        "most assets shown in one /search/<query> directory (smart search has no cut-off)",
        "IMMICHFS_SEARCH_LIMIT",
        group="mount",
    ),
    # -- caching
    Option(
        "listing_ttl",
        float,
        20.0,
        "seconds a directory listing is trusted; new uploads appear after at most this long. "
        "Short enough for a live library, long enough that `ls -l` of a big directory and "
        "the stat calls after it make one round of requests",
        "IMMICHFS_LISTING_TTL",
        group="cache",
    ),
    Option(
        "asset_ttl",
        float,
        60.0,
        "seconds one asset's metadata (size, dates) is trusted after it was fetched",
        "IMMICHFS_ASSET_TTL",
        group="cache",
    ),
    Option(
        "kernel_ttl",
        float,
        1.0,
        "seconds the kernel caches names and attributes (entry/attr timeout). Never 0: Linux "
        "then looks every readdir entry up again; never pyfuse3's 300 s: Immich changes "
        "behind the kernel's back",
        "IMMICHFS_KERNEL_TTL",
        group="cache",
    ),
    Option(
        "cache_entries",
        int,
        200_000,
        "most assets kept in the metadata cache (about 1 KiB each)",
        "IMMICHFS_CACHE_ENTRIES",
        group="cache",
    ),
    Option(
        "cache_dir",
        Path,
        None,
        "where the catalog and cached bytes are kept on disk, one subdirectory per server "
        "and user (default: $XDG_CACHE_HOME/immichfs, ~/.cache/immichfs, or "
        "/var/cache/immichfs as root)",
        "IMMICHFS_CACHE_DIR",
        group="cache",
    ),
    Option(
        "cache_size_mb",
        int,
        10240,
        "most MiB of original and thumbnail bytes kept in --cache-dir (least recently read "
        "dropped first); 0 keeps no bytes, the catalog is kept anyway",
        "IMMICHFS_CACHE_SIZE_MB",
        group="cache",
    ),
    Option(
        "refresh_interval",
        float,
        15.0,
        "seconds between background checks for changed assets (updatedAfter queries)",
        "IMMICHFS_REFRESH_INTERVAL",
        group="cache",
    ),
    # -- reading
    Option(
        "readahead_mb",
        int,
        16,
        "most bytes read ahead of a sequential reader, per open file (MiB)",
        "IMMICHFS_READAHEAD_MB",
        group="read",
    ),
    Option(
        "readahead_budget_mb",
        int,
        64,
        "most bytes read ahead across all open files together (MiB): many open files must "
        "not multiply memory",
        "IMMICHFS_READAHEAD_BUDGET_MB",
        group="read",
    ),
    # -- logging
    Option(
        "debug",
        bool,
        False,
        "log at debug level (HTTP traces included; the key never)",
        "IMMICHFS_DEBUG",
        group="logging",
    ),
    Option(
        "log_file",
        Path,
        None,
        "write the log to this file instead of stderr",
        "IMMICHFS_LOG_FILE",
        group="logging",
    ),
    # -- gateway (immichfs serve)
    Option(
        "gateway_host",
        str,
        "127.0.0.1",
        "address the REST gateway listens on; loopback by default because the gateway hands "
        "the whole library to anyone who can reach it (also --host)",
        "IMMICHFS_GATEWAY_HOST",
        group="gateway",
    ),
    Option(
        "gateway_port",
        int,
        8080,
        "TCP port of the REST gateway (0 picks a free one; also --port)",
        "IMMICHFS_GATEWAY_PORT",
        group="gateway",
    ),
    Option(
        "gateway_token",
        str,
        None,
        "token every gateway request must carry (Authorization: Bearer or X-Gateway-Token). "
        "Never a flag: command lines are visible in `ps`.",
        "IMMICHFS_GATEWAY_TOKEN",
        flag=False,
        group="gateway",
    ),
)

_BY_NAME = {option.name: option for option in OPTIONS}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    """The resolved settings. ``api_key`` is kept out of ``repr``."""

    url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_key_file: Path | None = None
    ca_cert: Path | None = None
    insecure: bool = False
    timeout: float = DEFAULT_TIMEOUT
    retry_budget: float = RetryPolicy.budget
    max_connections: int = 16
    allow_other: bool = False
    uid: int | None = None
    gid: int | None = None
    nonempty: bool = False
    show_trash: bool = False
    edits: str = "original"
    sidecars: bool = False
    hide_unnamed_people: bool = False
    by_date_days: bool = False
    search_limit: int = 250
    listing_ttl: float = 20.0
    asset_ttl: float = 60.0
    kernel_ttl: float = 1.0
    cache_entries: int = 200_000
    cache_dir: Path | None = None
    cache_size_mb: int = 10240
    refresh_interval: float = 15.0
    readahead_mb: int = 16
    readahead_budget_mb: int = 64
    debug: bool = False
    log_file: Path | None = None
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    gateway_token: str | None = field(default=None, repr=False)
    #: where each value came from: "argument", "flag", "env", "file" or "default"
    sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def verify(self) -> bool | str:
        """What to give httpx as ``verify``."""
        if self.insecure:
            return False
        return str(self.ca_cert) if self.ca_cert else True


def _convert(option: Option, value: Any, origin: str) -> Any:
    if value is None:
        return None
    try:
        if option.kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(value)
        if option.kind is Path:
            return Path(str(value)).expanduser()
        if option.kind in (int, float) and isinstance(value, bool):
            raise ValueError(value)
        converted = option.kind(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{origin}: {value!r} is not a valid {option.kind.__name__} for {option.name}"
        ) from None
    if option.choices and converted not in option.choices:
        raise ConfigError(
            f"{origin}: {option.name} must be one of {', '.join(option.choices)}, not {value!r}"
        )
    if option.kind in (int, float) and converted < 0:
        raise ConfigError(f"{origin}: {option.name} must not be negative")
    return converted


def secret_hint(option: Option) -> str:
    """Where a secret setting comes from instead of a flag, e.g. ``$IMMICH_API_KEY (the
    usual way), or a file: --api-key-file / $IMMICH_API_KEY_FILE``."""
    file_option = _BY_NAME.get(option.name + "_file")
    hint = f"${option.env}" if option.env else f"{option.name} in the config file"
    if file_option is not None:
        hint += f" (the usual way), or a file: {file_option.flag_name} / ${file_option.env}"
    return hint


class _RefuseSecretFlag(argparse.Action):
    """Rejects ``--api-key``: a key on the command line shows in `ps`. Without this,
    argparse would take ``--api-key KEY`` as an abbreviation of ``--api-key-file``.
    The refusal is its one sentence (exit status 2), not argparse's usage block: the
    flags are not what went wrong."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        option = _BY_NAME[self.dest.removeprefix("_refused_")]
        parser.exit(
            2,
            f"{parser.prog}: {option_string} is not accepted: command lines are visible in "
            f"`ps`; use {secret_hint(option)}\n",
        )


def add_arguments(parser: argparse.ArgumentParser, groups: Sequence[str] | None = None) -> None:
    """Add a flag for every option (of ``groups``, or all); defaults stay None = "not given"."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config file (default: ~/.config/immichfs/config.toml, then "
        "/etc/immichfs/config.toml)",
    )
    secrets = []
    for option in OPTIONS:
        if groups is not None and option.group not in groups:
            continue
        if not option.flag:
            secrets.append(option)
            parser.add_argument(
                option.flag_name,
                nargs="?",
                action=_RefuseSecretFlag,
                dest="_refused_" + option.name,
                help=argparse.SUPPRESS,
            )
            continue
        env = f" [env {option.env}]" if option.env else ""
        default = f" (default: {option.default})" if option.default not in (None, False) else ""
        if option.kind is bool:
            parser.add_argument(
                option.flag_name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{option.help}{default}{env}",
            )
        else:
            parser.add_argument(
                option.flag_name,
                type=str,
                default=None,
                metavar="|".join(option.choices) or option.kind.__name__.upper(),
                help=f"{option.help}{default}{env}",
            )
    if secrets:
        # --help must name where the secrets go, since they have no flag to show
        where = "; ".join(f"{option.name} from {secret_hint(option)}" for option in secrets)
        note = f"Secrets are never flags (`ps` shows command lines): {where}."
        parser.epilog = f"{parser.epilog} {note}" if parser.epilog else note


def read_config_file(path: Path) -> dict[str, Any]:
    """The TOML file's settings (keys as in OPTIONS; an ``[immichfs]`` table also works)."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if isinstance(data.get("immichfs"), dict):
        data = data["immichfs"]
    unknown = sorted(set(data) - set(_BY_NAME))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    return data


def load_settings(
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve every option: overrides > flags > environment > config file > defaults.

    ``config_path`` (or ``args.config``) names the file; otherwise the first of
    DEFAULT_CONFIG_PATHS that exists is read. The API key is read from
    ``api_key_file`` when no key is given directly.

    ``overrides`` are values given in code (``fsspec.filesystem("immich", url=...)``):
    any option by its name, secrets included (an argument is not visible in `ps`
    as a flag is); None means "not given". An unknown name is a ConfigError.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(_BY_NAME))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_BY_NAME))}"
        )
    env = os.environ if env is None else env
    given: Mapping[str, Any]
    if args is None:
        given = {}
    elif isinstance(args, argparse.Namespace):
        given = vars(args)
    else:
        given = args
    config_path = config_path or given.get("config")
    file_values: dict[str, Any] = {}
    if config_path is not None:
        file_values = read_config_file(Path(config_path).expanduser())
    else:
        for candidate in DEFAULT_CONFIG_PATHS:
            if candidate.is_file():
                file_values = read_config_file(candidate)
                config_path = candidate
                break
    if "api_key" in file_values and config_path is not None:
        warn_if_readable(Path(config_path))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        if option.name in overrides:
            values[option.name] = _convert(option, overrides[option.name], f"{option.name}=")
            sources[option.name] = "argument"
        elif option.flag and given.get(option.name) is not None:
            values[option.name] = _convert(option, given[option.name], option.flag_name)
            sources[option.name] = "flag"
        elif option.env and env.get(option.env) not in (None, ""):
            values[option.name] = _convert(option, env[option.env], f"${option.env}")
            sources[option.name] = "env"
        elif option.name in file_values:
            values[option.name] = _convert(option, file_values[option.name], str(config_path))
            sources[option.name] = "file"
        else:
            values[option.name] = option.default
            sources[option.name] = "default"

    # a key given directly wins over a key file, whatever their sources; but a key
    # file passed as an argument is what the caller meant, whatever the environment holds
    if sources["api_key_file"] == "argument" and sources["api_key"] != "argument":
        values["api_key"], sources["api_key"] = None, "default"
    if not values.get("api_key") and values.get("api_key_file") is not None:
        values["api_key"] = read_key_file(values["api_key_file"])
    return Settings(**values, sources=sources)


def source_name(settings: Settings, name: str) -> str:
    """Where the value of ``url`` or ``api_key`` came from, as a person would find it.

    Error messages name it ("IMMICH_URL is not a URL", "--url ..."), so the fix
    is made in the right place.
    """
    origin = settings.sources.get(name, "")
    if origin == "argument":
        return f"the argument {name}="
    if name == "api_key":
        if origin == "file":
            return "api_key in the config file"
        if origin == "default" and settings.api_key_file:
            return f"the key in {settings.api_key_file}"
        return "IMMICH_API_KEY"
    option = _BY_NAME[name]
    if origin == "flag":
        return option.flag_name
    if origin == "file":
        return f"{name} in the config file"
    return option.env or name


def retry_policy(settings: Settings) -> RetryPolicy:
    """The retry policy of ``settings`` (``retry_budget``; 0 turns retries off)."""
    budget = settings.retry_budget
    return RetryPolicy(budget=budget, attempts=1 if budget <= 0 else RetryPolicy.attempts)


def readahead_config(settings: Settings) -> ReadaheadConfig:
    """The byte path's tunables of ``settings`` (readahead_mb, readahead_budget_mb, and
    the timeout plus the retry budget as the longest a read may wait)."""
    retry = retry_policy(settings)
    ahead = max(1, int(settings.readahead_mb)) * MiB
    return ReadaheadConfig(
        max_ahead=ahead,
        max_window=min(ReadaheadConfig.max_window, ahead),
        global_budget=max(1, int(settings.readahead_budget_mb)) * MiB,
        retry=retry,
        read_timeout=settings.timeout + retry.budget,
    )


def client_config(settings: Settings, *, retry: bool = True) -> ClientConfig:
    """The client configuration of ``settings``; a ConfigError names where a bad value
    came from (a flag, a variable, the config file).

    ``retry=False`` reports the first failure at once (a diagnosis or a pre-mount
    check: a person waits for it); otherwise transient failures are retried within
    ``settings.retry_budget``.
    """
    return ClientConfig.create(
        settings.url,
        settings.api_key,
        timeout=settings.timeout,
        verify=settings.verify,
        max_connections=settings.max_connections,
        retry_policy=retry_policy(settings) if retry else None,
        url_source=source_name(settings, "url"),
        key_source=source_name(settings, "api_key"),
    )


def options_markdown() -> str:
    """The options table of docs/CONFIGURATION.md: one source, no hand-kept copies."""
    lines = [
        "| setting (TOML key) | flag | environment | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for option in OPTIONS:
        flag = f"`{option.flag_name}`" if option.flag else "—"
        env = f"`{option.env}`" if option.env else "—"
        default = "—" if option.default is None else f"`{option.default}`"
        lines.append(f"| `{option.name}` | {flag} | {env} | {default} | {option.help} |")
    return "\n".join(lines)


def _check_table_matches_settings() -> None:
    # Settings must have exactly one field per option (plus ``sources``)
    names = {f.name for f in fields(Settings)} - {"sources"}
    if names != set(_BY_NAME):
        raise AssertionError(f"Settings and OPTIONS differ: {names ^ set(_BY_NAME)}")


_check_table_matches_settings()
