#!/bin/sh
# Container entrypoint: check /dev/fuse and the API key secret, then run
# `immichfs mount --foreground MOUNTPOINT [FLAGS]` as the container's main process
# (SIGTERM from `docker stop` unmounts cleanly).
#
#   docker run IMAGE [--allow-other ...]   mount, with extra immichfs mount flags
#   docker run IMAGE immichfs check        any other command runs as given
#
# Environment: IMMICH_URL, IMMICH_API_KEY_FILE (default: /run/secrets/immich_api_key
# when that file exists), IMMICHFS_MOUNTPOINT (default /mnt/immich), and every
# IMMICHFS_* setting of docs/CONFIGURATION.md.
set -eu

device="${IMMICHFS_FUSE_DEVICE:-/dev/fuse}"
mountpoint="${IMMICHFS_MOUNTPOINT:-/mnt/immich}"
secrets="${IMMICHFS_SECRETS_DIR:-/run/secrets}"

fail() {
    echo "immichfs-entrypoint: $*" >&2
    exit 1
}

case "${1:-}" in
    "" | -*) ;;
    *) exec "$@" ;;
esac

if [ ! -e "$device" ]; then
    fail "$device is missing: start the container with --device /dev/fuse --cap-add SYS_ADMIN" \
        "(Kubernetes: see contrib/kubernetes/sidecar.yaml)"
fi
if [ ! -c "$device" ]; then
    fail "$device is not a character device: pass the host's with --device /dev/fuse"
fi
if ! (: <>"$device") 2>/dev/null; then
    fail "$device cannot be opened read-write: start the container with" \
        "--device /dev/fuse --cap-add SYS_ADMIN"
fi

if [ -z "${IMMICH_API_KEY:-}" ] && [ -z "${IMMICH_API_KEY_FILE:-}" ] &&
    [ -f "$secrets/immich_api_key" ]; then
    IMMICH_API_KEY_FILE="$secrets/immich_api_key"
    export IMMICH_API_KEY_FILE
fi
# immichfs would say "IMMICH_API_KEY is not set"; in a container the key belongs in a secret file
# (an environment variable shows in `docker inspect`). A config file may name the key instead;
# --demo needs none.
if [ -z "${IMMICH_API_KEY:-}" ] && [ -z "${IMMICH_API_KEY_FILE:-}" ] &&
    [ ! -f /etc/immichfs/config.toml ] && [ ! -f "${HOME:-/root}/.config/immichfs/config.toml" ]; then
    case " $* " in
        *" --config"* | *" --demo "*) ;;
        *) fail "no API key: mount it as a secret file at $secrets/immich_api_key" \
            "(docker run -v /path/to/key:$secrets/immich_api_key:ro, a Compose or Kubernetes" \
            "secret) or set IMMICH_API_KEY_FILE" ;;
    esac
fi
if [ -n "${IMMICH_API_KEY_FILE:-}" ] && [ ! -r "$IMMICH_API_KEY_FILE" ]; then
    fail "IMMICH_API_KEY_FILE=$IMMICH_API_KEY_FILE cannot be read: mount the key there" \
        "(docker run -v /path/to/key:$IMMICH_API_KEY_FILE:ro, or a Kubernetes secret volume)"
fi

mkdir -p "$mountpoint"
exec immichfs mount --foreground "$mountpoint" "$@"
