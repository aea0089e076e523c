"""Tests of litesam.train's learning side: losses, schedule, the objective, the loop, resuming, the CLI."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from litesam.build import build_model, load_checkpoint
from litesam.errors import LiteSamError
from litesam.train.cli import add_train_command
from litesam.train.config import LossWeights, PromptConfig, TrainConfig, default_workers
from litesam.train.data import collate_samples
from litesam.train.loop import train
from litesam.train.losses import (
    binary_mask_iou,
    box_losses,
    dice_loss,
    generalized_box_iou,
    heatmap_loss,
    mask_losses,
    sigmoid_focal_loss,
)
from litesam.train.objective import decode_prompts, point_and_box_prompts, training_losses
from litesam.train.optim import build_optimizer, warmup_cosine
from tests.coco_support import coco, tiny_dataset  # noqa: F401 (coco: a fixture)


# --- losses -----------------------------------------------------------------------------------------------


def test_mask_losses_perfect_wrong_and_weighting():
    target = torch.zeros(2, 16, 16, dtype=torch.bool)
    target[0, 4:10, 4:10] = True
    target[1, 0:3, :] = True
    perfect = torch.where(target, 30.0, -30.0)
    assert sigmoid_focal_loss(perfect[:, None], target).max() < 1e-8
    assert dice_loss(perfect[:, None], target).max() < 1e-6
    wrong = -perfect
    assert (sigmoid_focal_loss(wrong[:, None], target) > 1.0).all()
    assert (dice_loss(wrong[:, None], target) > 0.9).all()

    iou_perfect = torch.ones(2, 1)
    good = mask_losses(perfect[:, None], iou_perfect, target)
    assert float(good["mask"]) < 1e-5 and float(good["iou"]) == 0.0
    bad = mask_losses(wrong[:, None], iou_perfect, target)  # true IoU 0, predicted 1
    assert float(bad["iou"]) == pytest.approx(1.0)
    expected = LossWeights().focal * bad["focal"] + bad["dice"] + bad["iou"]
    assert float(bad["mask"]) == pytest.approx(float(expected))
    heavy = mask_losses(wrong[:, None], iou_perfect, target, LossWeights(focal=40.0))
    assert float(heavy["mask"]) == pytest.approx(float(40 * bad["focal"] + bad["dice"] + bad["iou"]))

    # Three candidates: only the best one (the perfect one, index 1) is trained.
    candidates = torch.stack([wrong, perfect, torch.zeros_like(perfect)], dim=1)
    iou_pred = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    best = mask_losses(candidates.requires_grad_(), iou_pred, target)
    assert float(best["focal"].detach()) < 1e-8 and float(best["dice"].detach()) < 1e-6
    best["mask"].backward()
    assert candidates.grad[:, 0].abs().sum() == 0 and candidates.grad[:, 2].abs().sum() == 0
    # Input-scale targets: the logits are upsampled to them.
    upsampled = mask_losses(
        perfect[:, None], iou_perfect, target.repeat_interleave(2, 1).repeat_interleave(2, 2)
    )
    assert float(upsampled["dice"]) < 0.05
    empty = mask_losses(
        torch.zeros(0, 3, 16, 16), torch.zeros(0, 3), torch.zeros(0, 16, 16, dtype=torch.bool)
    )
    assert float(empty["mask"]) == 0.0


def test_mask_terms_equal_their_elementwise_definitions():
    """The closed forms (BCE as softplus(x) − x·t, target sums as one batched product, targets shared by a
    prompt's candidates) equal the terms written out pixel by pixel on expanded targets, gradients too."""
    torch.manual_seed(0)
    logits = (3 * torch.randn(5, 3, 12, 10, dtype=torch.float64)).requires_grad_()
    target = torch.rand(5, 12, 10) > 0.6
    target[0] = False  # an empty target
    t = target[:, None].expand_as(logits).double()
    p = torch.sigmoid(logits)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, t, reduction="none")
    expected = {
        "bce": bce.mean(dim=(2, 3)),
        "focal": (bce * (1 - (p * t + (1 - p) * (1 - t))) ** 2 * (0.25 * t + 0.75 * (1 - t))).mean(dim=(2, 3)),
        "dice": 1 - (2 * (p * t).sum(dim=(2, 3)) + 1) / (p.sum(dim=(2, 3)) + t.sum(dim=(2, 3)) + 1),
    }
    got = {
        "bce": sigmoid_focal_loss(logits, target, alpha=-1.0, gamma=0.0),
        "focal": sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0),
        "dice": dice_loss(logits, target),
    }
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12)
        (grad_got,) = torch.autograd.grad(got[name].sum(), logits)
        (grad_expected,) = torch.autograd.grad(expected[name].sum(), logits, retain_graph=True)
        torch.testing.assert_close(grad_got, grad_expected, rtol=1e-10, atol=1e-12)
    predicted = (logits > 0).detach()
    union = (predicted | target[:, None]).sum(dim=(2, 3)).double()
    iou = (predicted & target[:, None]).sum(dim=(2, 3)).double() / union.clamp(min=1)
    empty = torch.zeros(1, 1, 12, 10, dtype=torch.float64) - 1  # both empty: IoU 1
    assert torch.equal(binary_mask_iou(logits, target), torch.where(union > 0, iou, torch.ones_like(iou)))
    assert float(binary_mask_iou(empty, torch.zeros(1, 12, 10, dtype=torch.bool))) == 1.0


def test_generalized_box_iou_on_known_boxes():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [2.0, 0.0, 3.0, 1.0], [1.0, 1.0, 3.0, 3.0]])
    # identical; disjoint: IoU 0, hull 3, union 2; overlapping: IoU 1/7, hull 9, union 7.
    expected = torch.tensor([1.0, -1.0 / 3.0, 1.0 / 7.0 - 2.0 / 9.0])
    torch.testing.assert_close(generalized_box_iou(a, b), expected, atol=1e-5, rtol=0)


def test_autoppn_losses():
    heat = torch.zeros(1, 8, 8)
    heat[0, 2:5, 2:5] = torch.tensor([[0.2, 0.5, 0.2], [0.5, 1.0, 0.5], [0.2, 0.5, 0.2]])
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    peaks = torch.tensor([1])
    exact = torch.logit(heat.clamp(1e-6, 1 - 1e-6))[:, None]
    assert float(heatmap_loss(exact, heat, valid, peaks)) < 1e-6
    off = float(heatmap_loss(torch.zeros(1, 1, 8, 8), heat, valid, peaks))
    assert off > 1.0
    assert float(heatmap_loss(torch.zeros(1, 1, 8, 8), heat, valid, torch.tensor([4]))) == pytest.approx(
        off / 4
    )
    # Cells in the padding do not count.
    padding = valid.clone()
    padding[0, :, 6:] = False
    wrong_in_padding = exact.clone()
    wrong_in_padding[..., 6:] = 5.0
    assert float(heatmap_loss(wrong_in_padding, heat, padding, peaks)) < 1e-6

    target = torch.full((1, 4, 8, 8), 2.0)
    same = box_losses(target.clone(), target, heat)
    assert float(same["box_l1"]) == 0.0 and float(same["box_giou"]) < 1e-6
    wrong = target.clone()
    wrong[:, :, 3, 3] = 4.0  # the peak cell (heat 1) predicts a box twice as large
    errors = box_losses(wrong, target, heat)
    # One of the five cells with heat ≥ 0.3: weight 1 of a total 3; L1 = 2/8 per distance; GIoU = 1/4.
    assert float(errors["box_l1"]) == pytest.approx((2.0 / 8.0) / 3.0)
    assert float(errors["box_giou"]) == pytest.approx((1 - 0.25) / 3.0, rel=1e-4)
    ignored = target.clone()
    ignored[:, :, 2, 2] = 9.0  # heat 0.2 < 0.3
    assert float(box_losses(ignored, target, heat)["box_l1"]) == 0.0
    nothing = box_losses(target, target, torch.zeros(1, 8, 8))
    assert float(nothing["box_l1"]) == 0.0 and float(nothing["box_giou"]) == 0.0


# --- schedule, optimisation, loop -------------------------------------------------------------------------


def test_warmup_cosine_schedule():
    values = [warmup_cosine(step, 10, 110) for step in range(111)]
    assert (
        values[0] == pytest.approx(0.1)
        and values[9] == pytest.approx(1.0)
        and values[10] == pytest.approx(1.0)
    )
    assert values[60] == pytest.approx(0.5) and values[110] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))
    assert warmup_cosine(110, 10, 110, min_ratio=0.1) == pytest.approx(0.1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = build_optimizer(model, 1e-3, 0.1, (0.9, 0.999)).param_groups
    assert [p.dim() for p in decay["params"]] == [2] and decay["weight_decay"] == 0.1
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_a_few_steps_on_a_fixed_batch_reduce_the_loss(coco):
    annotation_file, image_dir, _ = coco
    dataset = tiny_dataset(annotation_file, image_dir, seed=0)
    batch = collate_samples([dataset[0], dataset[2]])
    torch.manual_seed(0)
    model = build_model("litesam_tiny").train()
    optimizer = build_optimizer(model, 3e-3, 0.0, (0.9, 0.999))
    history = []
    for _ in range(20):
        losses = training_losses(model, batch, dataset.prompts)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    first, last = history[0], history[-1]
    assert all(math.isfinite(h["loss"]) for h in history)
    trace = [round(h["loss"], 3) for h in history]
    assert last["loss"] < 0.8 * first["loss"], trace
    assert last["mask"] < 0.6 * first["mask"] and last["heat"] < 0.8 * first["heat"], trace
    assert last["box_giou"] < first["box_giou"], trace
    assert first["n_point"] + first["n_box"] == 6 and first["n_proposal"] == 0  # 3 masks per image


def test_every_prompt_kind_in_one_decoder_pass_equals_a_pass_per_kind(coco):
    """decode_prompts' single pass gives each kind the outputs a pass of its own gives: three ambiguity masks
    for points and point + box prompts, the single mask for boxes alone, rows in each kind's prompt order."""
    annotation_file, image_dir, _ = coco
    dataset = tiny_dataset(annotation_file, image_dir, seed=0)
    batch = collate_samples([dataset[0], dataset[2]])
    torch.manual_seed(0)
    model = build_model("litesam_tiny").eval()
    prompted = point_and_box_prompts(batch)
    prompted["proposal"] = [  # point + box prompts: each ground-truth box and its centre
        (torch.full((len(boxes),), i), (boxes[:, :2] + boxes[:, 2:]) / 2, boxes, batch.gt_masks[i])
        for i, boxes in enumerate(batch.gt_boxes)
    ]
    assert all(prompted[kind] for kind in ("point", "box", "proposal"))
    with torch.no_grad():
        embeddings = model.image_encoder.embed(batch.model_input(model.preprocess))
        image_pe = model.prompt_encoder.get_dense_pe()
        decoded = decode_prompts(model, embeddings, image_pe, prompted)
        for kind, items in prompted.items():
            owners, points, boxes, targets = (None if parts[0] is None else torch.cat(parts) for parts in zip(*items))
            labels = None if points is None else torch.ones(len(points), 1, dtype=torch.int64)
            sparse, dense = model.prompt_encoder(
                points=None if points is None else (points[:, None], labels), boxes=boxes, masks=None
            )
            alone = model.mask_decoder(embeddings[owners], image_pe, sparse, dense, multimask_output=kind != "box")
            logits, iou, kind_targets = decoded[kind]
            assert logits.shape == alone[0].shape and logits.shape[1] == (1 if kind == "box" else 3)
            assert torch.allclose(logits, alone[0], atol=1e-4) and torch.allclose(iou, alone[1], atol=1e-5)
            assert torch.equal(kind_targets, targets)


def test_autoppn_proposals_matched_to_ground_truth_are_trained(coco):
    annotation_file, image_dir, _ = coco
    prompts = PromptConfig(proposals_per_image=5, proposal_match_iou=0.01)
    batch = collate_samples([tiny_dataset(annotation_file, image_dir, prompts=prompts)[0]])
    torch.manual_seed(0)
    model = build_model("litesam_tiny").train()
    with torch.no_grad():  # every cell a confident proposal with a 64-px box
        model.image_encoder.autoppn.heat.bias.fill_(5.0)
        model.image_encoder.autoppn.box.bias.fill_(4.0)
    losses = training_losses(model, batch, prompts)
    assert 1 <= float(losses["n_proposal"]) <= 5 and math.isfinite(float(losses["loss"].detach()))
    losses["loss"].backward()
    assert model.mask_decoder.iou_token.weight.grad.abs().sum() > 0


def test_train_writes_loadable_checkpoints_and_resumes_to_the_same_weights(coco, tmp_path):
    annotation_file, image_dir, _ = coco
    common = dict(
        data=annotation_file,
        images=image_dir,
        variant="litesam_tiny",
        batch_size=2,
        warmup_steps=2,
        lr=1e-3,
        device="cpu",
        log_every=1,
        checkpoint_every=0,
        max_steps=5,  # 2 steps per epoch (3 images, batch 2): the run crosses two epoch ends
    )
    out = tmp_path / "run"
    summary = train(TrainConfig(output_dir=out, stop_after=3, **common))  # interrupted after step 3
    assert summary["step"] == 3 and summary["total_steps"] == 5 and summary["epoch"] == 1
    # checkpoint_every 0: one checkpoint at the end of the invocation, none at the epoch end (step 2)
    assert sorted(p.name for p in out.glob("*.pt")) == ["last.pt", "last.state.pt", "step_0000003.pt"]
    assert load_checkpoint(out / "last.pt")[0] == "litesam_tiny"
    model = build_model(checkpoint=out / "last.pt")
    assert model.img_size == 256
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3]
    assert log[0]["lr"] < log[1]["lr"] == 1e-3  # the LR each step used: a 2-step warm-up

    resumed = train(TrainConfig(output_dir=out, resume=True, **common))
    assert resumed["step"] == 5
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4, 5]
    assert log[2]["lr"] > log[3]["lr"] > log[4]["lr"] > 0  # the cosine spans the 5 steps the run makes

    # The resumed run ends with exactly the weights of an uninterrupted 5-step run (same seed, CPU).
    straight = tmp_path / "straight"
    train(TrainConfig(output_dir=straight, **common))
    a, b = load_checkpoint(out / "last.pt")[1], load_checkpoint(straight / "last.pt")[1]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    straight_log = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    assert [e["lr"] for e in straight_log] == [e["lr"] for e in log]

    with pytest.raises(LiteSamError, match="cannot resume"):
        train(TrainConfig(output_dir=tmp_path / "empty", resume=True, **common))


def test_max_steps_sets_the_run_and_the_schedule_and_short_warmups_warn(coco, tmp_path, caplog):
    annotation_file, image_dir, _ = coco
    common = dict(data=annotation_file, images=image_dir, variant="litesam_tiny", batch_size=3, device="cpu")
    # 1 step per epoch: max_steps is not capped by epochs (the old trainer stopped at 4 here).
    summary = train(TrainConfig(output_dir=tmp_path / "a", epochs=4, max_steps=6, log_every=1, **common))
    assert summary["step"] == 6 and summary["total_steps"] == 6 and summary["epoch"] == 5
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["lr"] == 2e-3  # litesam_tiny's default peak LR; 5 % of 6 steps: no warm-up
    assert log[-1]["lr"] < 0.1 * 2e-3  # the cosine reaches its end with the run, not a high LR
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "warm-up" in r.getMessage()]
    assert not warnings  # automatic warm-up: 5 %
    with caplog.at_level("WARNING"):
        train(TrainConfig(output_dir=tmp_path / "b", max_steps=2, warmup_steps=1000, **common))
    assert any(r.levelname == "WARNING" and "warm-up (1000 steps)" in r.getMessage() for r in caplog.records)
    config = TrainConfig(output_dir=tmp_path / "c", **common)
    assert config.resolved_warmup(100) == 5 and config.resolved_warmup(10**6) == 1000
    assert config.total_steps(7) == 28 and config.workers() == default_workers() >= 0


def test_init_from_our_checkpoint_or_from_sam_weights(coco, tmp_path):
    annotation_file, image_dir, _ = coco

    def one_step(name: str, lr: float, **kwargs) -> dict[str, torch.Tensor]:
        summary = train(
            TrainConfig(
                data=annotation_file,
                images=image_dir,
                output_dir=tmp_path / name,
                variant="litesam_tiny",
                max_steps=1,
                batch_size=3,
                warmup_steps=0,
                device="cpu",
                lr=lr,
                **kwargs,
            )
        )
        return load_checkpoint(summary["checkpoint"])[1]

    trained = one_step("ours", 1e-2)
    # A 1e-9 step leaves the starting weights in place (up to 1e-9).
    resumed = one_step("from_ours", 1e-9, init_checkpoint=tmp_path / "ours" / "last.pt")
    for key in ("mask_decoder.iou_token.weight", "image_encoder.neck.conv.weight"):
        torch.testing.assert_close(resumed[key], trained[key], atol=1e-6, rtol=0)

    # An official-SAM-style file: bare prompt_encoder.* / mask_decoder.* (and image_encoder.*) keys.
    torch.manual_seed(123)
    donor = build_model("litesam_tiny").state_dict()
    torch.save(donor, tmp_path / "sam_style.pth")
    from_sam = one_step("from_sam", 1e-9, sam_checkpoint=tmp_path / "sam_style.pth")
    torch.testing.assert_close(
        from_sam["mask_decoder.iou_token.weight"], donor["mask_decoder.iou_token.weight"]
    )
    torch.testing.assert_close(
        from_sam["prompt_encoder.point_embeddings.0.weight"],
        donor["prompt_encoder.point_embeddings.0.weight"],
    )
    assert not torch.allclose(
        from_sam["image_encoder.neck.conv.weight"], donor["image_encoder.neck.conv.weight"]
    )


def test_cli_train_command(coco, tmp_path, capsys):
    annotation_file, image_dir, _ = coco
    parser = argparse.ArgumentParser(prog="litesam")
    add_train_command(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cli"
    args = parser.parse_args(
        [
            "train",
            "--data",
            str(annotation_file),
            "--images",
            str(image_dir),
            "--variant",
            "litesam_tiny",
            "--epochs",
            "1",
            "--batch-size",
            "3",
            "--device",
            "cpu",
            "--workers",
            "0",
            "-o",
            str(out),
        ]
    )
    assert args.run(args) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["step"] == 1 and Path(summary["checkpoint"]) == out / "last.pt"
    assert f"litesam calibrate --checkpoint {out / 'last.pt'}" in captured.err  # new weights: no filters yet

    args = parser.parse_args(
        [
            "train",
            "--data",
            str(tmp_path / "none.json"),
            "--images",
            str(image_dir),
            "--variant",
            "litesam_tiny",
            "-o",
            str(out),
        ]
    )
    with pytest.raises(LiteSamError, match="does not exist"):
        args.run(args)
    args = parser.parse_args(
        [
            "train",
            "--data",
            str(annotation_file),
            "--variant",
            "litesam_tiny",
            "--point-fraction",
            "2",
            "-o",
            str(out),
        ]
    )
    with pytest.raises(LiteSamError, match="point_fraction"):
        args.run(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "x", "-o", "y", "--epochs", "0"])

    capsys.readouterr()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("images per micro-batch and process (default: 8)", "--accumulate-steps", "(default: 1)", "--loss-focal", "(default: 1.0)", "--loss-autoppn", "(default: 0.25)",
                  "only at the end (default: 1000)", "2e-3 for litesam_tiny"):
        assert shown in text, shown
    assert "(default: None)" not in text


def test_cli_loss_weights_reach_the_config(coco, tmp_path, capsys):
    annotation_file, image_dir, _ = coco
    parser = argparse.ArgumentParser(prog="litesam")
    add_train_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", "--data", "synthetic", "--synthetic-images", "2", "--variant", "litesam_tiny",
                              "--max-steps", "1", "--batch-size", "2", "--loss-dice", "3", "--loss-autoppn", "0",
                              "--checkpoint-every", "0", "-o", str(tmp_path / "w")])
    assert args.run(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 1
    state = torch.load(tmp_path / "w" / "last.state.pt", weights_only=True)
    assert state["config"]["losses"]["dice"] == 3.0 and state["config"]["losses"]["autoppn"] == 0.0
    assert state["config"]["data"] == "synthetic"
    log = json.loads((tmp_path / "w" / "train_log.jsonl").read_text())
    assert log["loss"] == pytest.approx(log["mask"], rel=1e-5)  # λ = 0: the AutoPPN terms drop out
