"""``python -m immichfs_fake [options]``: same as ``immichfs fake-server``."""

from __future__ import annotations

import argparse
import sys

from immichfs_fake import cli


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m immichfs_fake", description=__doc__)
    cli.add_arguments(parser)
    return cli.run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
