"""``mount.fuse.immichfs``: the helper ``mount -t fuse.immichfs`` and ``/etc/fstab`` run.

mount(8) calls ``mount.fuse.immichfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]``.
SOURCE is the server URL, or ``immichfs`` to take the URL from the config
file (``/etc/immichfs/config.toml``), or ``demo`` for the bundled sample
library. OPTIONS are immichfs settings by their TOML names (``allow_other``,
``uid=``, ``config=``, ``listing_ttl=``...) mixed with the generic ones mount
and systemd use themselves (``_netdev``, ``nofail``, ``x-systemd.*``...), which
are ignored. The helper then becomes ``immichfs mount MOUNTPOINT --flags``,
which returns once the mount is ready, as mount(8) expects.

mount(8) only looks for helpers in /sbin (and /sbin/fs.d, /sbin/fs), so
``immichfs install-helper`` links this script there. Without it, mount(8) runs
fuse3's ``mount.fuse3``, which runs ``immichfs SOURCE MOUNTPOINT -o OPTIONS``
from the standard PATH; the ``immichfs`` command hands that form to :func:`main`.
"""

from __future__ import annotations

import argparse
import grp
import logging
import os
import pwd
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from immichfs.errors import ImmichfsError, UserError
from immichfs.fuse.mount import GROUPS as MOUNT_GROUPS
from immichfs.options import OPTIONS, Option

log = logging.getLogger(__name__)

HELPER_NAME = "mount.fuse.immichfs"
#: where mount(8) of util-linux looks for helpers (/sbin is /usr/sbin on merged-/usr systems)
HELPER_DIR = Path("/sbin")

#: options meant for mount(8), the kernel's generic mount flags, or systemd: not ours.
#: The filesystem is always read-only, nosuid and nodev, so these change nothing.
IGNORED = frozenset(
    {
        "_netdev", "nofail", "noauto", "auto", "defaults", "rw", "ro", "user", "users",
        "nouser", "owner", "group", "nosuid", "suid", "nodev", "dev", "noexec", "exec",
        "atime", "noatime", "relatime", "norelatime", "strictatime", "nostrictatime",
        "diratime", "nodiratime", "lazytime", "nolazytime", "sync", "async", "silent",
        "loud", "default_permissions",
    }
)  # fmt: skip
#: prefixes of ignored options (systemd and comment options; "user=NAME" added by mount)
IGNORED_PREFIXES = ("x-", "X-", "comment=", "user=", "fsname=", "subtype=")
#: sources that mean "take the URL from the config file or environment"
CONFIG_SOURCES = frozenset({"immichfs", "none", ""})

#: the settings `immichfs mount` takes as flags (not the gateway's)
_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS if o.flag and o.group in MOUNT_GROUPS}


class HelperError(ImmichfsError):
    """Bad SOURCE or options: mount(8) shows the line, exit status 1 (usage)."""


@dataclass
class Invocation:
    """What mount(8) asked for."""

    source: str
    mountpoint: str
    options: list[str] = field(default_factory=list)
    fake: bool = False  # -f: check everything, mount nothing
    sloppy: bool = False  # -s: drop unknown options instead of failing
    verbose: bool = False  # -v: print the command run


def parse_argv(argv: Sequence[str]) -> Invocation:
    """Parse mount(8)'s helper calling convention (options may come before or after)."""
    positional: list[str] = []
    options: list[str] = []
    fake = sloppy = verbose = False
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-o" or arg == "-t" or arg == "-N":
            if i + 1 >= len(args):
                raise HelperError(f"{arg} needs a value")
            if arg == "-o":
                options.extend(o for o in args[i + 1].split(",") if o)
            elif arg == "-N":
                raise HelperError("mounting in another namespace (-N) is not supported")
            i += 2
            continue
        if arg.startswith("-o") and len(arg) > 2:
            options.extend(o for o in arg[2:].split(",") if o)
        elif arg.startswith("-t") and len(arg) > 2:
            pass  # the type: always fuse.immichfs
        elif arg.startswith("-") and len(arg) > 1:
            for letter in arg[1:]:
                if letter == "f":
                    fake = True
                elif letter == "s":
                    sloppy = True
                elif letter == "v":
                    verbose = True
                elif letter == "n":
                    pass  # no /etc/mtab to skip writing: it is /proc/self/mounts
                else:
                    raise HelperError(f"unknown switch -{letter}")
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 2:
        raise HelperError(
            f"usage: {HELPER_NAME} SOURCE MOUNTPOINT [-o OPTIONS] "
            "(SOURCE: server URL, 'immichfs' to use the config file, or 'demo')"
        )
    return Invocation(positional[0], positional[1], options, fake, sloppy, verbose)


def looks_like_mount_call(argv: Sequence[str]) -> bool:
    """Whether ``immichfs ARGV`` is fuse3's ``mount.fuse3`` calling: ``immichfs SOURCE
    MOUNTPOINT -o OPTIONS`` (what ``mount -t fuse.immichfs`` and fstab lines run when no
    ``mount.fuse.immichfs`` is installed, as for sshfs)."""
    if len(argv) < 2 or argv[0].startswith("-") or argv[1].startswith("-"):
        return False
    source = argv[0].removeprefix("immichfs#")
    sourcelike = source.startswith(("http://", "https://")) or (
        os.path.basename(source) in CONFIG_SOURCES | {"demo"}
    )
    return sourcelike or "-o" in argv[2:]


def _source_flags(source: str) -> list[str]:
    if source.startswith("immichfs#"):
        source = source.removeprefix("immichfs#")  # the mount.fuse3 spelling
    if source.startswith("/") and os.path.basename(source) in CONFIG_SOURCES | {"demo"}:
        # mount(8) turns a source naming an existing path (./immichfs) into an absolute one
        source = os.path.basename(source)
    if source in CONFIG_SOURCES:
        return []
    if source == "demo":
        return ["--demo"]
    if source.startswith(("http://", "https://")):
        return ["--url", source]
    raise HelperError(
        f"source {source!r} is not a server URL (http[s]://...); use 'immichfs' to take "
        "the URL from the config file"
    )


def _user_id(value: str, name: str) -> str:
    if value.isdigit():
        return value
    try:
        if name == "uid":
            return str(pwd.getpwnam(value).pw_uid)
        return str(grp.getgrnam(value).gr_gid)
    except KeyError:
        raise HelperError(
            f"{name}={value}: no such {'user' if name == 'uid' else 'group'}"
        ) from None


def option_flags(options: Sequence[str], *, sloppy: bool = False) -> list[str]:
    """The ``immichfs mount`` flags for mount -o ``options``."""
    flags: list[str] = []
    for item in options:
        key, has_value, value = item.partition("=")
        if item in IGNORED or item.startswith(IGNORED_PREFIXES):
            continue
        name = key.replace("-", "_")
        if name == "api_key":
            raise HelperError(
                "api_key in mount options would be visible in `ps` and /etc/fstab; "
                "use api_key_file=PATH"
            )
        if name == "config":
            if not value:
                raise HelperError("config= needs a file name")
            flags += ["--config", value]
            continue
        option = _BY_NAME.get(name)
        if option is None:
            if sloppy:
                log.warning("ignoring unknown mount option %s", key)
                continue
            raise HelperError(f"unknown mount option {key!r}")
        if option.kind is bool:
            if not has_value or value.lower() in ("1", "true", "yes", "on"):
                flags.append(option.flag_name)
            elif value.lower() in ("0", "false", "no", "off"):
                flags.append("--no-" + option.flag_name[2:])
            else:
                raise HelperError(f"{key}={value}: expected true or false")
            continue
        if not has_value or not value:
            raise HelperError(f"mount option {key} needs a value ({key}=...)")
        if name in ("uid", "gid"):
            value = _user_id(value, name)
        flags += [option.flag_name, value]
    return flags


def build_command(invocation: Invocation) -> list[str]:
    """The argv that mounts: ``python -m immichfs mount MOUNTPOINT --flags``.

    The interpreter running this helper is used, so the command works with the
    minimal PATH mount(8) and systemd give helpers.
    """
    flags = _source_flags(invocation.source) + option_flags(
        invocation.options, sloppy=invocation.sloppy
    )
    return [sys.executable, "-m", "immichfs", "mount", invocation.mountpoint, *flags]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mount.fuse.immichfs``."""
    logging.basicConfig(format=f"{HELPER_NAME}: %(message)s", level=logging.WARNING)
    try:
        invocation = parse_argv(sys.argv[1:] if argv is None else argv)
        command = build_command(invocation)
    except ImmichfsError as exc:
        print(f"{HELPER_NAME}: {exc}", file=sys.stderr)
        return 1
    if invocation.verbose or invocation.fake:
        print(shlex.join(command), file=sys.stderr)
    if invocation.fake:
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


# -- `immichfs install-helper`: put the helper where mount(8) finds it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=HELPER_DIR,
        help=f"directory mount(8) searches for helpers (default: {HELPER_DIR})",
    )
    parser.add_argument("--uninstall", action="store_true", help=f"remove {HELPER_NAME} instead")
    parser.add_argument(
        "--force", action="store_true", help="replace a file of that name that is not ours"
    )


def _ours(path: Path) -> bool:
    if path.is_symlink():
        return Path(os.readlink(path)).name == HELPER_NAME
    try:
        return "immichfs" in path.read_text(errors="replace")[:4096]
    except OSError:
        return False


def install_helper(directory: Path, *, force: bool = False) -> Path:
    """Link (or, from a source tree, write a wrapper for) the helper into ``directory``."""
    target = directory / HELPER_NAME
    script = Path(sys.executable).parent / HELPER_NAME
    if (target.exists() or target.is_symlink()) and not (force or _ours(target)):
        raise UserError(f"{target} exists and is not the immichfs helper; use --force")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        if script.is_file():
            target.symlink_to(script)
        else:
            # running from a source tree without the console script
            target.write_text(
                f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m immichfs.cli.mounthelper "$@"\n'
            )
            target.chmod(0o755)
    except PermissionError:
        raise UserError(f"cannot write {target}: run as root") from None
    return target


def run(args: argparse.Namespace) -> int:
    target: Path = args.dir / HELPER_NAME
    if args.uninstall:
        if not (target.exists() or target.is_symlink()):
            print(f"{target} is not installed")
            return 0
        if not (args.force or _ours(target)):
            raise UserError(f"{target} is not the immichfs helper; use --force")
        try:
            target.unlink()
        except PermissionError:
            raise UserError(f"cannot remove {target}: run as root") from None
        print(f"removed {target}")
        return 0
    install_helper(args.dir, force=args.force)
    print(f"installed {target}: mount -t fuse.immichfs and /etc/fstab entries now work")
    return 0


if __name__ == "__main__":
    sys.exit(main())
