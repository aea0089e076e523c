"""Tests of litesam.distill's parts: the teacher caches, the 1024 → 640 grid mapping, the student's copied
decoder, pseudo-label targets (the run itself: tests/test_distill_run.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from litesam.build import build_model, save_checkpoint
from litesam.distill.alignment import cell_centres, teacher_to_student
from litesam.distill.cache import ShardedCache
from litesam.distill.data import DistillDataset, frame_targets
from litesam.distill.sources import data_identity, folder_source, synthetic_source
from litesam.distill.student import build_student
from litesam.distill.teacher import fill_caches, load_teacher, pseudo_mask_config, teacher_caches
from litesam.errors import CheckpointError, DatasetError
from litesam.masks import coco_rle_to_mask
from litesam.modeling.autoppn import cell_centres as autoppn_cell_centres, ltrb_to_boxes
from litesam.predictor import encode_image
from litesam.train.autoppn_targets import build_autoppn_targets

DEMO = "litesam/weights/litesam_tiny_synthetic.pt"


@pytest.fixture(scope="module")
def teacher():
    return load_teacher(DEMO)


def _filled(teacher, tmp_path, count=5, shard_size=2, masks=True):
    source = synthetic_source(count, seed=3)
    config = pseudo_mask_config(teacher, 3, 0.0, 0.0) if masks else None
    embeddings, mask_cache = teacher_caches(teacher, source, tmp_path / "cache", shard_size, config)
    done = fill_caches(teacher, source, embeddings, mask_cache, config)
    return source, embeddings, mask_cache, config, done


# --- caches -------------------------------------------------------------------------------------------------


def test_cache_shards_hold_fp16_embeddings_and_pseudo_masks_of_each_image(teacher, tmp_path):
    source, embeddings, masks, config, done = _filled(teacher, tmp_path)
    assert done == {"embedding_shards": 3, "mask_shards": 3}
    assert embeddings.num_shards == 3 and [len(embeddings.items(s)) for s in range(3)] == [2, 2, 1]
    last = embeddings.read(2)
    assert last["keys"] == [source[4].key]
    assert last["embeddings"].dtype == torch.float16 and last["embeddings"].shape == (1, 64, 16, 16)
    direct = encode_image(teacher.model, source[4].load())
    assert torch.equal(last["embeddings"][0], direct.features[0].half())
    assert tuple(last["input_sizes"][0].tolist()) == direct.input_size
    assert tuple(last["original_sizes"][0].tolist()) == direct.original_size
    shard = masks.read(2, mmap=False)
    assert shard["keys"] == [source[4].key] and len(shard["masks"]) == 1
    assert len(shard["masks"][0]) > 0  # filters off: the teacher's grid finds masks
    mask = coco_rle_to_mask(shard["masks"][0][0])
    assert mask.shape == direct.original_size and mask.any()
    manifest = (embeddings.directory / "manifest.json").read_text()
    assert teacher.sha256 in manifest and data_identity(source) in manifest
    # A second pass computes nothing: everything is sealed.
    assert fill_caches(teacher, source, embeddings, masks, config) == {"embedding_shards": 0, "mask_shards": 0}


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "unsealed"])
def test_a_damaged_or_unfinished_shard_is_detected_and_recomputed(teacher, tmp_path, damage, caplog):
    source, embeddings, masks, config, _ = _filled(teacher, tmp_path, masks=False)
    path = embeddings.shard_path(1)
    original = embeddings.read(1, mmap=False)["embeddings"].clone()
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":
        path.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
    else:  # killed between writing the shard and sealing it
        (path.with_suffix(".json")).unlink()
    assert embeddings.status(1) == ("missing" if damage == "unsealed" else "corrupt")
    assert embeddings.status(0) == "ok"
    with pytest.raises(CheckpointError):
        embeddings.read(1)
    done = fill_caches(teacher, source, embeddings, None)
    assert done["embedding_shards"] == 1  # only the damaged shard
    assert torch.equal(embeddings.read(1)["embeddings"], original)
    if damage != "unsealed":
        assert "corrupt" in caplog.text


def test_a_changed_teacher_checkpoint_or_other_data_gets_another_cache(teacher, tmp_path):
    source, embeddings, _, _, _ = _filled(teacher, tmp_path, masks=False)
    changed = tmp_path / "teacher.pt"
    model = build_model(checkpoint=DEMO)
    with torch.no_grad():
        model.image_encoder.neck.conv.weight.mul_(1.01)
    save_checkpoint(model, changed, "litesam_tiny")
    other = load_teacher(changed)
    assert other.sha256 != teacher.sha256
    new_embeddings, _ = teacher_caches(other, source, tmp_path / "cache", 2, None)
    assert new_embeddings.directory != embeddings.directory
    assert new_embeddings.pending() == [0, 1, 2]
    assert fill_caches(other, source, new_embeddings, None)["embedding_shards"] == 3
    assert not torch.equal(new_embeddings.read(0)["embeddings"], embeddings.read(0)["embeddings"])
    fewer, _ = teacher_caches(teacher, source[:4], tmp_path / "cache", 2, None)
    assert fewer.directory != embeddings.directory


def test_folder_source_keys_by_content_and_refuses_an_empty_folder(tmp_path):
    import cv2

    image = np.zeros((20, 30, 3), dtype=np.uint8)
    image[5:10, 5:20] = (255, 0, 0)
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "b.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "sub" / "a.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    (tmp_path / "notes.txt").write_text("not an image")
    items = folder_source(tmp_path)
    assert [i.name for i in items] == ["b.png", "sub/a.png"]
    assert items[0].key == items[1].key  # same bytes, same key
    assert np.array_equal(items[1].load(), image)
    with pytest.raises(DatasetError, match="no image files"):
        folder_source(_empty(tmp_path))


def _empty(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_a_shard_written_under_another_key_is_refused(tmp_path):
    cache = ShardedCache(tmp_path, "embeddings", {"a": 1}, 3, 2)
    (cache.directory / "manifest.json").write_text('{"key": "something else"}')
    with pytest.raises(CheckpointError, match="another key"):
        ShardedCache(tmp_path, "embeddings", {"a": 1}, 3, 2)


# --- the 1024 → 640 mapping -------------------------------------------------------------------------------


def test_teacher_grid_resampled_to_the_student_grid_lines_up_in_image_coordinates():
    # A teacher map that is a known linear function of position in the padded square (units of its side),
    # sampled at the 64×64 cell centres of a 1024 input; read on the 40×40 grid of a 640 input it must give the
    # same function at the student's cell centres.
    def field(side):
        c = cell_centres(side)
        ys, xs = torch.meshgrid(c, c, indexing="ij")
        return torch.stack([3.0 * xs - 2.0 * ys + 0.5, xs + 4.0 * ys]).float()[None]  # 1×2×side×side

    resampled = teacher_to_student(field(64), 40)
    assert resampled.shape == (1, 2, 40, 40)
    assert torch.allclose(resampled, field(40), atol=1e-5)
    # Position error, in teacher cells, of x read back from a map of x: bilinear is exact; the antialiased
    # filter's discrete weights shift it by at most ~0.06 of a cell inside (0.11 at the border); adaptive
    # pooling, whose bins snap to whole teacher cells, by 0.2.
    x = cell_centres(64)[None].expand(64, 64).float()[None, None]
    def shift(resampled):
        return float((resampled[0, 0, 0] - cell_centres(40).float()).abs().max() * 64)
    assert shift(teacher_to_student(x, 40)) < 1e-4
    assert shift(teacher_to_student(x, 40, mode="antialias")) < 0.12
    assert shift(torch.nn.functional.adaptive_avg_pool2d(x, 40)) > 0.15
    same = field(16)
    assert torch.equal(teacher_to_student(same.half(), 16), same.half().float())
    with pytest.raises(ValueError, match="mode"):
        teacher_to_student(same, 8, mode="area")


def test_an_image_feature_lands_in_the_same_student_cell_at_both_input_sizes():
    # A bright object at x ∈ [300, 340) px of a 1000×600 image: at 1024 it covers input x ∈ [307.2, 348.2),
    # at 640 x ∈ [192, 217.6); the student's cells 12–13 (x ∈ [192, 224)) must receive it.
    teacher_map = torch.zeros(1, 1, 64, 64)
    teacher_map[..., 19:22] = 1.0  # teacher cells covering input x ∈ [304, 352) at 1024
    student = teacher_to_student(teacher_map, 40)[0, 0, 0]
    assert int(student.argmax()) in (12, 13)
    assert float(student[12:14].min()) > 0.5 and float(student[:10].max()) == 0.0


# --- the student ----------------------------------------------------------------------------------------------


def test_student_gets_copies_of_the_teachers_prompt_encoder_and_decoder(teacher):
    student = build_student("litesam_tiny_student", teacher.model, seed=0)
    assert student.variant == "litesam_tiny_student" and student.training
    for name in ("prompt_encoder", "mask_decoder"):
        mine, theirs = getattr(student, name).state_dict(), getattr(teacher.model, name).state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
        assert all(mine[k].data_ptr() != theirs[k].data_ptr() for k in mine)  # copies, not shared
    assert student.image_encoder.backbone.out_channels == 64
    assert len(student.image_encoder.backbone.stages) != len(teacher.model.image_encoder.backbone.stages)


def test_student_of_another_embedding_width_or_an_engine_is_refused(teacher):
    with pytest.raises(CheckpointError, match="64.*cannot be copied|256.*64"):
        build_student("litesam_r640", teacher.model)
    with pytest.raises(CheckpointError, match="Lite-SAM variant"):
        build_student("sam_vit_b", teacher.model)


# --- pseudo-label targets ------------------------------------------------------------------------------------


def test_pseudo_masks_become_listing_1_1_targets_in_the_student_and_teacher_frames(teacher, tmp_path):
    mask = np.zeros((200, 300), dtype=bool)
    mask[40:120, 60:180] = True  # 120×80 px rectangle in a 300×200 image
    # Teacher frame: 256 input, the image resized to 256×171 (h', w' = 171, 256), stride 8.
    targets = frame_targets([mask], (171, 256), 256, 8)
    expected = build_autoppn_targets([np.pad(_resized(mask, 171, 256), ((0, 85), (0, 0)))], stride=8)
    assert np.array_equal(targets.heat.numpy(), expected.heat) and targets.num_peaks == 1
    peak = np.unravel_index(int(targets.heat.argmax()), targets.heat.shape)
    centre = autoppn_cell_centres(32, 32, 8)[peak]
    box = ltrb_to_boxes(centre, targets.box[:, peak[0], peak[1]], 8)
    assert torch.allclose(box, torch.tensor([60, 40, 180, 120]) * 256 / 300, atol=1.0)
    assert not bool(targets.valid[-1].any()) and bool(targets.valid[0].all())  # padding rows are not valid

    # Student side: the dataset's targets come from the same pseudo-masks (through the trainer's dataset).
    source, embeddings, masks, _, _ = _filled(teacher, tmp_path, count=2)
    shards = [embeddings.read(s) for s in range(embeddings.num_shards)]
    pseudo = [m for s in range(masks.num_shards) for m in masks.read(s, mmap=False)["masks"]]
    dataset = DistillDataset(source, shards, 2, pseudo, image_size=256, stride=8, teacher_frame=(256, 8))
    sample = dataset[1]
    assert sample.teacher_embedding.dtype == torch.float16 and sample.teacher_embedding.shape == (64, 16, 16)
    assert sample.student.num_peaks >= 1 and float(sample.student.heat_target.max()) > 0.9
    assert torch.equal(sample.student.heat_target, sample.teacher_targets.heat)  # same frame at the same size
    assert len(sample.student.gt_masks) == min(len(pseudo[1]), 16)
    unlabeled = DistillDataset(source, shards, 2, None, image_size=256, stride=8)
    assert unlabeled[1].student.num_peaks == 0 and len(unlabeled[1].student.gt_masks) == 0

    # With a cache budget the teacher-frame targets are made once and drawn from the same budget as the
    # student's prepared images; without one they are made again, equal.
    cached = DistillDataset(source, shards, 2, pseudo, image_size=256, stride=8, teacher_frame=(256, 8),
                            cache_bytes=2**24)
    first = cached[1].teacher_targets
    assert cached[1].teacher_targets is first and cached.student.cache_left < 2**24 - first.nbytes
    again = dataset[1].teacher_targets
    assert again is not sample.teacher_targets
    for made in (first, again):
        assert torch.equal(made.heat, sample.teacher_targets.heat) and torch.equal(made.box, sample.teacher_targets.box)
        assert torch.equal(made.valid, sample.teacher_targets.valid) and made.num_peaks == sample.teacher_targets.num_peaks


def _resized(mask, h, w):
    import cv2

    return cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5
