"""Prompts → masks with the process's model: one best mask per prompt of a
:class:`~backend.labelstudio.prompts.PromptSet`, at the size its regions refer to. Used by interactive clicks
(:mod:`backend.model`) and by the jobs that turn a task's rectangles or keypoints into masks
(:mod:`backend.jobs.prompted`)."""

from __future__ import annotations

import logging

import numpy as np

from litesam.predictor import ImageEmbedding

from .labelstudio.prompts import PromptSet, is_ambiguous, mask_for_regions, prompts_for_image
from .model_service import ModelService

logger = logging.getLogger(__name__)


def masks_for_prompts(
    model: ModelService, embedding: ImageEmbedding, prompt_set: PromptSet
) -> tuple[list[np.ndarray], list[float]]:
    """One best mask (H×W bool at ``original_height × original_width``) and its predicted IoU per prompt."""
    height, width = embedding.original_size
    if (prompt_set.original_height, prompt_set.original_width) != (height, width):
        logger.warning(
            "the prompts refer to a %d×%d image but the image is %d×%d; scaling prompts and masks",
            prompt_set.original_width,
            prompt_set.original_height,
            width,
            height,
        )
    predictor = model.predictor(embedding)
    masks, scores = [], []
    for prompt in prompts_for_image(prompt_set, (height, width)):
        with model.inference():  # one of the process's inference slots (README "Thread policy")
            candidates, ious, _ = predictor.predict(
                point_coords=prompt.point_coords,
                point_labels=prompt.point_labels,
                box=prompt.box,
                multimask_output=is_ambiguous(prompt),
                best_only=True,
            )
        masks.append(mask_for_regions(candidates[0], prompt_set))
        scores.append(float(ious[0]))
    return masks, scores
