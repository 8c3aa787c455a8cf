"""One validated client configuration, shared by both HTTP clients.

:class:`ClientConfig` holds what it takes to talk to one Immich server with one
key: the base URL, the key, the timeout, TLS verification, the connection limit
and the retry policy. The JSON client (:class:`~immichfs.client.connector.ImmichConnector`)
and the byte client (:class:`~immichfs.client.originals.RangeGetClient`) take the
same value, so URL and key rules, the TLS context and the defaults exist once.
It knows nothing of config files or the command line: ``immichfs.options``
builds one from settings, a library user builds one from arguments or the
environment.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from immichfs.client.http import normalise_url, read_key_file, validate_key
from immichfs.client.retry import RetryPolicy
from immichfs.errors import ConfigError
from immichfs.logs import register_secret

#: seconds to wait for a connection or an answer; a real Immich answers in
#: milliseconds, but a cold NAS disk can take seconds to spin up
DEFAULT_TIMEOUT = 30.0
#: connections per client (httpx's pool, the byte client's pool)
DEFAULT_MAX_CONNECTIONS = 16


@dataclass(frozen=True)
class ClientConfig:
    """A validated way to one Immich server (a value; build it with :meth:`create`).

    ``verify`` is httpx's: ``True``, ``False`` (no TLS checks) or the path of a CA
    bundle or directory. ``retry_policy`` None means every failure is raised at
    once (a diagnosis, a pre-mount check). The key is never in the repr.
    """

    url: str
    api_key: str = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT
    verify: bool | str | ssl.SSLContext = True
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    retry_policy: RetryPolicy | None = None

    @classmethod
    def create(
        cls,
        url: str | None,
        api_key: str | None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        verify: bool | str | ssl.SSLContext = True,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        retry_policy: RetryPolicy | None = None,
        url_source: str = "the url argument",
        key_source: str = "the api_key argument",
    ) -> ClientConfig:
        """Validate every field; a :class:`ConfigError` names the ``*_source`` at fault."""
        base = normalise_url(url, url_source)
        key = validate_key(api_key, key_source)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or max_connections < 1
        ):
            raise ConfigError(f"max_connections must be at least 1, not {max_connections!r}")
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise ConfigError(f"retry_policy must be a RetryPolicy or None, not {retry_policy!r}")
        register_secret(key)
        return cls(
            base,
            key,
            timeout=float(timeout),
            verify=verify,
            max_connections=max_connections,
            retry_policy=retry_policy if retry_policy and retry_policy.enabled else None,
        )

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        url: str | None = None,
        api_key: str | None = None,
        **options: object,
    ) -> ClientConfig:
        """``url``/``api_key`` where given, else ``$IMMICH_URL`` and ``$IMMICH_API_KEY``
        (or the file named by ``$IMMICH_API_KEY_FILE``)."""
        env = os.environ if env is None else env
        url_source, key_source = "the url argument", "the api_key argument"
        if url is None:
            url, url_source = env.get("IMMICH_URL"), "IMMICH_URL"
        if api_key is None:
            if env.get("IMMICH_API_KEY"):
                api_key, key_source = env["IMMICH_API_KEY"], "IMMICH_API_KEY"
            elif env.get("IMMICH_API_KEY_FILE"):
                path = Path(env["IMMICH_API_KEY_FILE"]).expanduser()
                api_key, key_source = read_key_file(path), f"the key in {path}"
            else:
                key_source = "IMMICH_API_KEY"
        return cls.create(url, api_key, url_source=url_source, key_source=key_source, **options)  # type: ignore[arg-type]

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context both clients use (``verify`` as httpx reads it)."""
        verify = self.verify
        if isinstance(verify, ssl.SSLContext):
            return verify
        try:
            if verify is True:
                return ssl.create_default_context()
            if verify is False:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                return context
            if os.path.isdir(verify):
                return ssl.create_default_context(capath=verify)
            return ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use CA certificate {verify}: {exc}") from None
