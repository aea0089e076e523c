"""The teacher and the one pass over the data that fills its caches.

For each image the teacher computes its embedding once (:func:`litesam.predictor.encode_image`, the
teacher's own resizing and input size), stored as fp16; when pseudo-masks are asked for, its SegEvery (SAM's
point grid and SAM's filters by default, or its own AutoPPN; :mod:`litesam.everything`) runs on that **fp16-rounded** embedding, so the
masks are the same whether the embedding was computed in this run or read back from an earlier one. Masks are
stored as COCO RLE at the image's original size.

Cache keys (:mod:`.cache`): the embeddings by the teacher checkpoint's sha256, its variant, input size and
resize filter, and the data identity; the masks by the embedding key plus the SegEvery settings.

Payloads. Embedding shard: ``keys`` (list of item keys), ``embeddings`` N×C×n×n float16, ``input_sizes`` N×2
int64 (h', w') and ``original_sizes`` N×2 int64 (H, W). Mask shard: ``keys`` and ``masks``, per image a list
of COCO RLE dicts (``size`` [H, W], ``counts`` str), best ranked first.

Under DDP each process fills the shards ``s`` with ``s % world_size == rank``; the caller waits for all
before training.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..build import build_model, checkpoint_sha256
from ..everything import SegEvery, SegEveryConfig
from ..modeling.lite_sam import LiteSAM
from ..predictor import ImageEmbedding, encode_image
from .cache import ShardedCache
from .sources import ImageSource, data_identity

logger = logging.getLogger(__name__)


@dataclass
class Teacher:
    """A teacher model in eval mode and what identifies it.

    Attributes:
        model: the teacher (any SAM-family engine or Lite-SAM).
        checkpoint: its file; sha256: the file's sha256 (hex).
    """

    model: LiteSAM
    checkpoint: Path
    sha256: str

    @property
    def variant(self) -> str:
        return self.model.variant

    @property
    def embed_dim(self) -> int:
        return self.model.prompt_encoder.embed_dim

    def key_fields(self) -> dict:
        """What the teacher contributes to a cache key."""
        return {"teacher_sha256": self.sha256, "teacher_variant": self.variant,
                "teacher_input": self.model.img_size, "teacher_resize": self.model.resize}


def load_teacher(checkpoint: str | Path, device: str | torch.device = "cpu") -> Teacher:
    """Build the teacher from its checkpoint (:func:`litesam.build.build_model`; raises CheckpointError)."""
    model = build_model(checkpoint=checkpoint, device=device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return Teacher(model, Path(checkpoint), checkpoint_sha256(checkpoint))


def pseudo_mask_config(
    teacher: Teacher,
    points_per_side: int,
    pred_iou_thresh: float,
    stability_score_thresh: float,
    prompts: str = "grid",
) -> SegEveryConfig:
    """The teacher's SegEvery for pseudo-masks: SAM's point grid (``prompts="grid"``) or, with ``"auto"``, the
    teacher's own AutoPPN when it has one (its variant's decoding); the given filters; COCO RLE output."""
    return SegEveryConfig.for_variant(
        teacher.variant,
        prompt_mode=prompts,
        points_per_side=points_per_side,
        pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh,
        output_mode="coco_rle",
    )


def teacher_caches(
    teacher: Teacher,
    source: ImageSource,
    root: str | Path,
    shard_size: int,
    masks: SegEveryConfig | None,
) -> tuple[ShardedCache, ShardedCache | None]:
    """The embedding cache and (when ``masks`` gives SegEvery settings) the pseudo-mask cache of a source."""
    fields = {**teacher.key_fields(), "data": data_identity(source)}
    embeddings = ShardedCache(root, "embeddings", fields, len(source), shard_size)
    if masks is None:
        return embeddings, None
    settings = {"prompt_mode": masks.prompt_mode, "proposals": asdict(masks.proposals), "points_per_side": masks.points_per_side,
                "pred_iou_thresh": masks.pred_iou_thresh, "stability_score_thresh": masks.stability_score_thresh,
                "stability_score_offset": masks.stability_score_offset, "box_nms_thresh": masks.box_nms_thresh,
                "multimask_output": masks.multimask_output}
    return embeddings, ShardedCache(root, "masks", {"embeddings": embeddings.key, "segevery": settings},
                                    len(source), shard_size)


@torch.inference_mode()
def fill_caches(
    teacher: Teacher,
    source: ImageSource,
    embeddings: ShardedCache,
    masks: ShardedCache | None,
    masks_config: SegEveryConfig | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Compute the missing or corrupt shards of this process's share (see the module docstring).

    Args:
        progress: called with the number of images of each shard once it is done.
    Returns:
        ``{"embedding_shards": computed, "mask_shards": computed}``.
    Raises:
        DatasetError (or another LiteSamError): an unreadable image, named.
    """
    mine = range(rank, embeddings.num_shards, world_size)
    todo_embeddings = set(embeddings.pending(iter(mine)))
    todo_masks = set(masks.pending(iter(mine))) if masks is not None else set()
    generator = SegEvery(teacher.model, masks_config) if masks is not None else None
    done = {"embedding_shards": 0, "mask_shards": 0}
    for shard in sorted(todo_embeddings | todo_masks):
        keys = [source[i].key for i in embeddings.items(shard)]
        if shard in todo_embeddings:
            payload = _embed_shard(teacher.model, source, embeddings.items(shard))
            embeddings.write(shard, payload)
            done["embedding_shards"] += 1
        else:
            payload = embeddings.read(shard)
            if payload["keys"] != keys:
                raise RuntimeError(f"cache shard {embeddings.shard_path(shard)} holds other images than its key says")
        if shard in todo_masks:
            records = []
            for row in range(len(keys)):
                embedding = ImageEmbedding(
                    payload["embeddings"][row : row + 1].float(),
                    tuple(int(v) for v in payload["input_sizes"][row]),
                    tuple(int(v) for v in payload["original_sizes"][row]),
                )
                records.append([r["segmentation"] for r in generator.generate_from_embedding(embedding)])
            masks.write(shard, {"keys": keys, "masks": records})
            done["mask_shards"] += 1
        if progress is not None:
            progress(len(keys))
    return done


def _embed_shard(model: LiteSAM, source: ImageSource, items: range) -> dict:
    features, input_sizes, original_sizes = [], [], []
    for index in items:
        embedding = encode_image(model, source[index].load())
        features.append(embedding.features.to("cpu", torch.float16))
        input_sizes.append(embedding.input_size)
        original_sizes.append(embedding.original_size)
    return {
        "keys": [source[i].key for i in items],
        "embeddings": torch.cat(features).contiguous(),
        "input_sizes": torch.tensor(input_sizes, dtype=torch.int64),
        "original_sizes": torch.tensor(original_sizes, dtype=torch.int64),
    }
