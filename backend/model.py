"""The thin Label Studio adapter: interactive prompts → Lite-SAM masks → ``brushlabels`` or ``polygonlabels``
results (``LITESAM_OUTPUT``, :meth:`backend.labelstudio.label_config.LabelConfig.output_for`).

:class:`LiteSamBackend` is the ``LabelStudioMLBase`` subclass of label-studio-ml 1.0.9. It is created per
request with the process's :class:`~backend.services.Services` and does only prompts → predictor → results:
the context is parsed (once, by the app) in :mod:`backend.labelstudio.prompts`, the embedding comes
from :mod:`backend.embeddings`. It does not use the framework's per-process manager (which needs ``/setup``
before ``/predict``). Importing ``label_studio_ml.model`` sets torch.multiprocessing's start method to
``spawn`` (a side effect of that package); only the web app imports this module, and the backend starts no
subprocesses.
"""

from __future__ import annotations

import logging

from label_studio_ml.model import LabelStudioMLBase

from .errors import BadRequestError
from .labelstudio.label_config import parse_label_config
from .labelstudio.prompts import PromptSet, parse_context, resolve_label
from .labelstudio.results import mask_regions, prediction
from .prompt_masks import masks_for_prompts
from .services import Services

logger = logging.getLogger(__name__)


class LiteSamBackend(LabelStudioMLBase):
    """Label Studio adapter for one interactive ``/predict``.

    Args:
        services: the process's services (model, embeddings, settings).
        label_config: the project's labeling config (``label_config`` of the ``/predict`` request).
    """

    def __init__(self, services: Services, label_config: str | None = None) -> None:
        super().__init__(label_config=None)
        self.label_config = label_config
        self._services = services

    def predict(self, tasks: list, context: object = None, **kwargs) -> list[dict]:
        """``LabelStudioMLBase``'s entry point: :meth:`predict_prompts` for the prompts of ``context``; no
        predictions for a call without prompt regions (an empty prediction per task would mark the tasks as
        predicted for this model version)."""
        prompt_set = parse_context(context)
        return [] if prompt_set is None else self.predict_prompts(tasks, prompt_set)

    def predict_prompts(self, tasks: list, prompt_set: PromptSet) -> list[dict]:
        """The one prediction of an interactive call: a brush region (or the polygon regions) of each prompt's
        mask, for the single task.

        Raises:
            BadRequestError: the prompts' ``original_width × original_height`` is over
                LITESAM_MAX_IMAGE_PIXELS (their masks are made at that size), not exactly one task, no image
                field, and the other :mod:`backend.errors` on bad input (see the modules involved).
        """
        max_pixels = self._services.settings.max_image_pixels
        pixels = prompt_set.original_width * prompt_set.original_height
        if pixels > max_pixels:
            raise BadRequestError(
                f"the prompt regions' original_width × original_height is {prompt_set.original_width}×"
                f"{prompt_set.original_height} = {pixels} pixels, more than the backend's limit of "
                f"{max_pixels} (LITESAM_MAX_IMAGE_PIXELS); send the image's natural size"
            )
        config = parse_label_config(self.label_config)
        if not isinstance(tasks, list) or len(tasks) != 1 or not isinstance(tasks[0], dict):
            raise BadRequestError("an interactive call (with context) must carry exactly one task object")
        task = tasks[0]
        settings = self._services.settings
        tag, label = resolve_label(prompt_set, config, settings.output)
        image_tag = config.image(tag.to_name)
        data = task.get("data")
        if not isinstance(data, dict) or image_tag.value_key not in data:
            raise BadRequestError(
                f"the task has no data field {image_tag.value_key!r} (the image of <Image "
                f"name={image_tag.name!r}>)"
            )
        uri = data[image_tag.value_key]
        if isinstance(uri, list):  # multi-image task (valueList)
            index = prompt_set.item_index or 0
            if not 0 <= index < len(uri):
                raise BadRequestError(f"item_index {index} is outside the task's {len(uri)} images")
            uri = uri[index]

        embedding, source = self._services.embeddings.embedding_for(uri, task.get("id"))
        masks, scores = masks_for_prompts(self._services.model, embedding, prompt_set)
        regions = [
            region
            for mask, score in zip(masks, scores, strict=True)
            for region in mask_regions(
                mask,
                tag,
                label=label,
                score=score,
                tolerance=settings.polygon_tolerance,
                image_rotation=prompt_set.image_rotation,
                item_index=prompt_set.item_index,
            )
        ]
        logger.info(
            "task %s: %d mask(s) for %r, embedding from %s", task.get("id"), len(regions), label, source
        )
        return [prediction(regions, self._services.model.model_version)]
