"""``python -m lib.config``: validate params.yaml (``--check NAME``) and select the active profile
(``--set-profile NAME``)."""

from __future__ import annotations

import argparse

import yaml

from lib.config import PROFILES, load, set_profile
from lib.io import AtelierInputError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Validate params.yaml and select the active profile.")
    parser.add_argument("--set-profile", metavar="NAME", help=f"one of {PROFILES}")
    parser.add_argument("--check", metavar="NAME", help="validate one profile and print its parameters")
    args = parser.parse_args(argv)
    try:
        if args.set_profile:
            set_profile(args.set_profile)
            print(f"params.yaml: profile = {args.set_profile}")
        if args.check:
            print(yaml.safe_dump(load(args.check), sort_keys=False))
    except AtelierInputError as err:
        raise SystemExit(f"error: {err}")


if __name__ == "__main__":
    main()
