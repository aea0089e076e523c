"""``litesam-backend distill --project N``: ``litesam distill`` on the task images of a Label Studio project.

The library knows nothing of Label Studio (ARCHITECTURE.md, "Layers"), so the project's images are turned into
a :class:`litesam.distill.sources.ImageSource` here and handed to :func:`litesam.distill.loop.distill`. They are
listed with label-studio-sdk (:class:`~backend.labelstudio.client.LabelStudioClient`) and downloaded as the
backend downloads any task image (:class:`~backend.images.ImageFetcher`: Label Studio's uploads, local files
and cloud storage, allowed hosts only, the SSRF guard, the size and pixel limits), decoded at the natural,
EXIF-transposed size. The image field is the one of the project's first image tag (``--image-key`` to choose).
Every task's image URL is checked against those rules (host policy, SSRF guard, image paths) while the project
is listed, so a project holding a URL the backend may not fetch is refused before anything is written.

Cache keys: an uploaded file never changes behind its URI, so its key is that stable name; any other URI (a
cloud object, an http URL) is keyed by project, task id and URI, so the teacher caches follow the project's
task list. An image that cannot be fetched stops the run with its task id and the reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from litesam.distill.cli import add_distill_options, config_from_args
from litesam.distill.sources import ImageItem
from litesam.errors import DatasetError, LiteSamError

from .errors import BackendError
from .settings import Settings


def project_images(settings: Settings, project: int, image_key: str | None = None) -> list[ImageItem]:
    """The images of a project's tasks, in task-id order, as distillation items (nothing is downloaded yet;
    every URL is checked as :meth:`~backend.images.ImageFetcher.check` does).

    Raises:
        BackendError: Label Studio unreachable or not configured, or a label config without an image tag.
        DatasetError: no task holds an image in the image field, or a task's image URL may not be fetched
            (named by its task id).
    """
    from .images import ImageFetcher, decode_image
    from .labelstudio.client import LabelStudioClient
    from .labelstudio.label_config import parse_label_config

    client = LabelStudioClient(settings)
    if image_key is None:
        config = parse_label_config(client.label_config(project))
        image_key = config.images[0].value_key if config.images else None
        if image_key is None:
            raise DatasetError(f"project {project}'s label config has no <Image> tag; give --image-key")
    fetcher = ImageFetcher(settings, client)
    items = []
    for task_id, data, _ in sorted(client.tasks(project, None), key=lambda t: t[0]):
        uri = data.get(image_key)
        if not isinstance(uri, str) or not uri:
            continue
        try:
            fetcher.check(uri, task_id)
        except BackendError as exc:
            raise DatasetError(f"task {task_id}: {exc.message}") from None
        stable = client.immutable_source(uri)
        key = f"labelstudio:{stable}" if stable else f"labelstudio:{project}:{task_id}:{uri}"

        def load(uri=uri, task_id=task_id):
            try:
                return decode_image(fetcher.fetch(uri, task_id).data, settings.max_image_pixels)
            except BackendError as exc:
                raise DatasetError(f"task {task_id}: {exc.message}") from None

        items.append(ImageItem(key, f"task {task_id}", load))
    if not items:
        raise DatasetError(f"no task of project {project} has an image in its {image_key!r} field")
    return items


def add_distill_command(subparsers: argparse._SubParsersAction, settings: Settings) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="distil a Lite-SAM student on a Label Studio project's task images",
        description="litesam distill on the task images of a project (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY; "
        "images fetched with the backend's rules). Every other option is litesam distill's.",
    )
    parser.add_argument("--project", type=int, required=True, help="Label Studio project id")
    parser.add_argument("--image-key", help="task data field of the image (default: the first <Image> tag's)")
    add_distill_options(parser, exclude=("data", "images", "synthetic_images", "synthetic_seed"))
    parser.set_defaults(func=_distill)


def _distill(args: argparse.Namespace, settings: Settings) -> int:
    from litesam.distill.loop import distill

    try:
        config = config_from_args(args, data=f"labelstudio:{args.project}")
        source = project_images(settings, args.project, args.image_key)
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
        summary = distill(config, source=source)
    except LiteSamError as error:
        print(f"litesam-backend: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
