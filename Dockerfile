# immichfs in a container: mounts an Immich server read-only at /mnt/immich, in the
# foreground, as the container's main process.
#
#   docker build -t immichfs .
#   docker run -d --name immichfs \
#       --device /dev/fuse --cap-add SYS_ADMIN --security-opt apparmor=unconfined \
#       -e IMMICH_URL=http://immich.local:2283 \
#       -v /etc/immichfs/api-key:/run/secrets/immich_api_key:ro \
#       -v /srv/immich:/mnt/immich:rshared \
#       immichfs
#
# See docs/OPERATIONS.md, "Containers". Settings: the IMMICH_* / IMMICHFS_* variables of the
# options table, or a config file mounted at /etc/immichfs/config.toml.

# -- the dependency list alone: its layers stay cached while only the sources or the
# rest of pyproject.toml change (compiling pyfuse3 is most of the build time)
FROM python:3.11-slim-bookworm AS requirements
COPY pyproject.toml /src/pyproject.toml
RUN python -c 'import tomllib; print(*tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
        > /requirements.txt

# -- build stage: pyfuse3 compiles against libfuse3 (no binary wheels on PyPI)
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libfuse3-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY --from=requirements /requirements.txt /requirements.txt
RUN pip wheel --no-cache-dir --wheel-dir /wheels -r /requirements.txt
COPY . /src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src

# -- runtime stage: the fuse3 package brings libfuse3 and fusermount3, nothing to compile
FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels immichfs \
    && rm -rf /wheels
COPY contrib/docker/entrypoint.sh /usr/local/bin/immichfs-entrypoint
ENV IMMICHFS_MOUNTPOINT=/mnt/immich \
    PYTHONUNBUFFERED=1
RUN mkdir -p /mnt/immich
HEALTHCHECK --interval=30s --timeout=10s \
    CMD mountpoint -q "$IMMICHFS_MOUNTPOINT" || exit 1
ENTRYPOINT ["/usr/local/bin/immichfs-entrypoint"]
CMD []
