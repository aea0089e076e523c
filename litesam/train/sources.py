"""Record sources that live outside ``litesam``, found through entry points (group :data:`GROUP`).

``litesam`` knows nothing of Label Studio, HTTP or Redis (ARCHITECTURE.md), yet ``litesam train`` and
``litesam eval`` read a Label Studio project's annotations: the package that speaks Label Studio (the
backend, ``backend.training_data:project_records``) registers a reader under the name
:data:`LABEL_STUDIO` in ``pyproject.toml``, and this module calls it. A reader takes
``(url, project, split)`` and returns image records (``image_id``, ``height``, ``width``, ``image()``,
``instance_masks()``, optionally ``box_masks()``: box-only instances that shape AutoPPN's targets only).
"""

from __future__ import annotations

from importlib.metadata import entry_points

from ..errors import DatasetError

GROUP = "litesam.record_sources"
#: ``--data`` value (``TrainConfig.data``) and entry-point name of the Label Studio project reader.
LABEL_STUDIO = "labelstudio"
#: Splits of a Label Studio project: train tasks, held-out tasks (ids that are multiples of 5), all.
LABEL_STUDIO_SPLITS = ("train", "held-out", "all")


def label_studio_records(url: str | None, project: int | None, split: str) -> list:
    """The records of a Label Studio project's ``split`` (``url`` None: the reader's default, ``LABEL_STUDIO_URL``).

    Raises:
        DatasetError: no project id, an unknown split, no reader installed, or what the reader raises.
    """
    if project is None:
        raise DatasetError("--data labelstudio needs --ls-project (the Label Studio project id)")
    if split not in LABEL_STUDIO_SPLITS:
        raise DatasetError(f"unknown Label Studio split {split!r}: use one of {', '.join(LABEL_STUDIO_SPLITS)}")
    found = entry_points(group=GROUP, name=LABEL_STUDIO)
    if not found:
        raise DatasetError(
            f"no reader of Label Studio projects is installed (entry point {LABEL_STUDIO!r} of group {GROUP!r}); "
            "install this repository with `pip install -e .` (scripts/install.sh)"
        )
    reader = next(iter(found)).load()
    return reader(url, project, split)
