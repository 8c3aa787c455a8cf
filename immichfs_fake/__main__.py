"""``python -m immichfs_fake [options]``: same as ``immichfs fake-server``."""

from __future__ import annotations

import argparse
import sys

from immichfs_fake import cli


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m immichfs_fake", description=__doc__)
    cli.add_arguments(parser)
    from immichfs.errors import UserError

    try:
        return cli.run(parser.parse_args())
    except UserError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
