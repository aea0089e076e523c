"""Command-line options shared by ``litesam train`` and ``litesam eval`` (standard library only)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_data_options(parser: argparse.ArgumentParser, required: bool = True, ls_split: str = "train") -> None:
    """Add ``--data`` and ``--images``: the annotations and images of a COCO-format or SA-1B set; and
    ``--ls-url``, ``--ls-project``, ``--ls-split`` (default ``ls_split``) for ``--data labelstudio``.

    ``required=False`` where a config file may give the data instead (the command then checks it).
    """
    parser.add_argument(
        "--data",
        type=Path,
        required=required,
        help="COCO annotation file, SA-1B JSON file or folder, \"synthetic\" (generated scenes), or "
        "\"labelstudio\" (a Label Studio project's annotations: --ls-project)",
    )
    parser.add_argument(
        "--images", type=Path, help="image folder (required for COCO; SA-1B: the JSON folder)"
    )
    group = parser.add_argument_group(
        "Label Studio project (--data labelstudio; the API key is read from LABEL_STUDIO_API_KEY)"
    )
    group.add_argument("--ls-url", help="Label Studio base URL (default: LABEL_STUDIO_URL)")
    group.add_argument("--ls-project", type=positive_int, help="the project id")
    group.add_argument(
        "--ls-split",
        choices=("train", "held-out", "all"),
        default=ls_split,
        help="which tasks: held-out = task ids that are multiples of 5, train = the others",
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


def unit_float(text: str) -> float:
    """An argparse ``type``: a number from 0 to 1 (a threshold or a share)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {value}")
    return value


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with "(default: X)" after each option, except where there is no default to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or any(action.default is none for none in (None, False, argparse.SUPPRESS)):
            return action.help
        return super()._get_help_string(action)
