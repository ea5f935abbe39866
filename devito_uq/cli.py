"""The ``devito-uq`` command (placeholder until the demo lands)."""

from __future__ import annotations

import argparse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="devito-uq")
    parser.parse_args(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
