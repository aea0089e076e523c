"""Command-line options shared by ``litesam train`` and ``litesam eval`` (standard library only)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_data_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Add ``--data`` and ``--images``: the annotations and images of a COCO-format or SA-1B set.

    ``required=False`` where a config file may give the data instead (the command then checks it).
    """
    parser.add_argument(
        "--data",
        type=Path,
        required=required,
        help="COCO annotation file, SA-1B JSON file or folder, or \"synthetic\" (generated scenes)",
    )
    parser.add_argument(
        "--images", type=Path, help="image folder (required for COCO; SA-1B: the JSON folder)"
    )


def positive_int(text: str) -> int:
    """An argparse ``type``: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with "(default: X)" after each option, except where there is no default to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or any(action.default is none for none in (None, False, argparse.SUPPRESS)):
            return action.help
        return super()._get_help_string(action)
