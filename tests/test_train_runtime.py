"""Tests of the run features of litesam train: config files merged with flags, the step sampler, gradient
accumulation, the device and AMP choice, the progress bar, and real ``torchrun`` data parallelism (gloo)."""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import os
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
import torch

from litesam.build import build_model, load_checkpoint
from litesam.errors import LiteSamError
from litesam.train.cli import add_train_command, config_from_args
from litesam.train.config import LossWeights, PromptConfig, TrainConfig
from litesam.train.config_file import ConfigFileError, load_config_file
from litesam.train.data import SegmentationDataset, collate_samples
from litesam.train.loop import train
from litesam.train.objective import training_losses
from litesam.train.runtime import RunContext
from litesam.train.sampler import StepBatchSampler
from litesam.train.synthetic import synthetic_records

ROOT = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="litesam")
    add_train_command(parser.add_subparsers(dest="command", required=True))
    return parser


# --- config files ---------------------------------------------------------------------------------------------


def test_config_file_formats_nested_fields_and_flags_win(tmp_path):
    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps({
        "data": "synthetic", "output_dir": str(tmp_path / "out"), "variant": "litesam_tiny", "batch_size": 4,
        "betas": [0.8, 0.9], "accumulate_steps": 3, "prompts": {"box_noise": 0.2}, "losses": {"dice": 2.5},
    }))
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("data: synthetic\noutput_dir: out\nvariant: litesam_tiny\nbatch_size: 4\nlosses:\n  dice: 2.5\n")
    toml_file = tmp_path / "run.toml"
    toml_file.write_text('data = "synthetic"\noutput_dir = "out"\nvariant = "litesam_tiny"\nbatch_size = 4\n'
                         "[losses]\ndice = 2.5\n")
    for path in (yaml_file, toml_file):
        values = load_config_file(path, TrainConfig)
        assert values["batch_size"] == 4 and values["losses"] == {"dice": 2.5}

    config = config_from_args(_parser().parse_args(["train", "--config", str(json_file)]))
    assert config.batch_size == 4 and config.betas == (0.8, 0.9) and config.accumulate_steps == 3
    assert config.prompts == PromptConfig(box_noise=0.2) and config.losses == LossWeights(dice=2.5)
    assert config.lr is None and config.seed == 0  # neither in the file nor given: the defaults

    # A flag typed on the command line wins, even when it repeats the default (8); nested flags merge.
    args = _parser().parse_args(["train", "--config", str(json_file), "--batch-size", "8", "--loss-iou", "3",
                                 "--point-fraction", "0.25", "--no-progress", "-o", str(tmp_path / "other")])
    config = config_from_args(args)
    assert config.batch_size == 8 and config.accumulate_steps == 3 and not config.progress
    assert config.losses == LossWeights(dice=2.5, iou=3.0)
    assert config.prompts == PromptConfig(box_noise=0.2, point_fraction=0.25)
    assert Path(config.output_dir) == tmp_path / "other"


def test_config_file_errors_are_clear(tmp_path):
    cases = {
        "unknown.json": ({"data": "synthetic", "output_dir": "o", "batch": 3}, "unknown setting(s) batch"),
        "nested.json": ({"losses": {"dcie": 1.0}}, "losses: unknown setting(s) dcie"),
        "type.json": ({"batch_size": "4"}, "batch_size = '4' does not fit type int"),
        "bool.json": ({"amp": 1}, "amp = 1 does not fit type bool"),
        "tuple.json": ({"betas": [0.9]}, "betas"),
        "table.json": ({"prompts": 3}, "prompts must be a table"),
    }
    for name, (values, message) in cases.items():
        (tmp_path / name).write_text(json.dumps(values))
        with pytest.raises(ConfigFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config_file(tmp_path / name, TrainConfig)
    (tmp_path / "broken.toml").write_text("data = \n")
    with pytest.raises(ConfigFileError, match="cannot parse"):
        load_config_file(tmp_path / "broken.toml", TrainConfig)
    (tmp_path / "run.ini").write_text("[run]\n")
    with pytest.raises(ConfigFileError, match="unknown format"):
        load_config_file(tmp_path / "run.ini", TrainConfig)
    with pytest.raises(ConfigFileError, match="cannot read"):
        load_config_file(tmp_path / "missing.json", TrainConfig)
    with pytest.raises(LiteSamError, match="--data is required"):
        config_from_args(_parser().parse_args(["train", "-o", str(tmp_path)]))
    (tmp_path / "bad_value.json").write_text(json.dumps({"data": "synthetic", "output_dir": "o", "epochs": 0}))
    with pytest.raises(LiteSamError, match="invalid training settings: epochs"):
        config_from_args(_parser().parse_args(["train", "--config", str(tmp_path / "bad_value.json")]))


def test_the_written_config_repeats_the_run(tmp_path):
    common = dict(data="synthetic", synthetic_images=2, variant="litesam_tiny", batch_size=2, max_steps=1,
                  device="cpu", checkpoint_every=0, losses=LossWeights(dice=2.0), betas=(0.85, 0.99))
    first = TrainConfig(output_dir=tmp_path / "a", **common)
    train(first)
    written = tmp_path / "a" / "config.json"
    again = config_from_args(_parser().parse_args(["train", "--config", str(written), "-o", str(tmp_path / "b")]))
    assert {**again.to_json(), "output_dir": None} == {**first.to_json(), "output_dir": None}
    train(again)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt")[1], load_checkpoint(tmp_path / "b" / "last.pt")[1]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


# --- step sampler, device, progress ------------------------------------------------------------------------------


def test_step_sampler_shards_steps_by_rank_and_pads_the_last_step():
    plain = list(StepBatchSampler(10, 4, seed=3, epoch=1))
    order = np.random.default_rng([3, 1, 1]).permutation(10).tolist()
    assert plain == [order[0:4], order[4:8], order[8:10]]  # one process: plain batches, a short last one
    # Two processes ≡ one process accumulating two micro-batches: the same micro-batches, rank-major.
    accumulated = list(StepBatchSampler(10, 2, 3, 1, accumulate=2))
    ranks = [list(StepBatchSampler(10, 2, 3, 1, rank=r, world_size=2)) for r in (0, 1)]
    assert [m for step in zip(ranks[0], ranks[1]) for m in step] == accumulated
    assert len(accumulated) == 6 and accumulated[:4] == [order[0:2], order[2:4], order[4:6], order[6:8]]
    assert accumulated[4:] == [order[8:9], order[9:10]]  # the short last step split evenly
    odd = list(StepBatchSampler(9, 2, 3, 1, rank=1, world_size=2, accumulate=2))  # last step: 1 image, 4 parts
    assert len(odd) == 4 and all(len(m) == 1 for m in odd[-2:])
    covered = [i for r in (0, 1) for m in StepBatchSampler(9, 2, 3, 1, rank=r, world_size=2) for i in m]
    assert set(covered) == set(range(9)) and len(covered) == 10  # one image repeated to fill the last step
    skipped = StepBatchSampler(10, 2, 3, 1, skip_steps=1, accumulate=2)
    assert list(skipped) == accumulated[2:] and len(skipped) == 4
    context = RunContext(device=torch.device("cpu"), accumulate_steps=2)
    assert context.steps_per_epoch(10, 2) == 3 and [len(g) for g in context.optimiser_steps(range(6))] == [2, 2, 2]


def test_device_choice_amp_notice_and_progress_bar(caplog, tmp_path):
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:1"):
            with pytest.raises(LiteSamError, match="CUDA is not available"):
                RunContext.start(name)
        args = _parser().parse_args(["train", "--data", "synthetic", "--device", "cuda", "-o", str(tmp_path)])
        with pytest.raises(LiteSamError, match="CUDA is not available"):
            args.run(args)
    with pytest.raises(LiteSamError, match="unknown device"):
        RunContext.start("gpu")
    with caplog.at_level("WARNING"):
        context = RunContext.start("cpu", amp=True)
    assert not context.amp and "--amp is ignored on cpu" in caplog.text
    assert context.device == torch.device("cpu") and context.is_main and not context.distributed

    not_a_terminal = io.StringIO()
    assert not RunContext.start("cpu", stream=not_a_terminal).show_progress
    main, replica = os.openpty()
    fcntl.ioctl(replica, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    with open(replica, "w") as terminal:
        context = RunContext.start("cpu", stream=terminal)
        assert context.show_progress and not RunContext.start("cpu", progress=False, stream=terminal).show_progress
        with context.progress(5, initial=2) as bar:
            bar.update(3)
        terminal.flush()
        drawn = b""
        while select.select([main], [], [], 0.5)[0]:
            drawn += os.read(main, 4096)
    os.close(main)
    drawn = drawn.decode()
    assert "5/5" in drawn and "step" in drawn


# --- gradient accumulation -------------------------------------------------------------------------------------


def _equal_normaliser_batch(model, count: int):
    """Samples whose losses have the same normaliser in every micro-batch: one point-prompted mask per image,
    no proposals; the AutoPPN terms (normalised per micro-batch by its peaks / box weights) weighted 0."""
    prompts = PromptConfig(point_fraction=1.0, proposals_per_image=0)
    dataset = SegmentationDataset(synthetic_records(count, seed=5), image_size=model.img_size,
                                  stride=model.image_encoder.autoppn.stride, max_masks=1, prompts=prompts, seed=0)
    return [dataset[i] for i in range(count)], prompts


def _gradients(model, samples, prompts, weights, micro_batches: int) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    context = RunContext(device=torch.device("cpu"), accumulate_steps=micro_batches)
    size = len(samples) // micro_batches
    for index in range(micro_batches):
        micro = samples[index * size : (index + 1) * size]
        with context.micro_batch(model, index):
            context.scaled(training_losses(model, collate_samples(micro), prompts, weights)["loss"]).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulating_two_batches_of_two_gives_the_gradient_of_a_batch_of_four():
    torch.manual_seed(0)
    model = build_model("litesam_tiny").train()
    samples, prompts = _equal_normaliser_batch(model, 4)
    weights = LossWeights(autoppn=0.0)
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert batch_norms  # LiteViT's convolutional stages

    # BatchNorm in training mode normalises by micro-batch: the stem's gradient depends on how the batch is cut.
    whole, accumulated = _gradients(model, samples, prompts, weights, 1), _gradients(model, samples, prompts, weights, 2)
    stem = "image_encoder.backbone.stem.0.0.weight"
    assert not torch.allclose(accumulated[stem], whole[stem], rtol=1e-3, atol=1e-6)
    # With the batch statistics fixed (BatchNorm layers in eval mode) every term is a mean with the same
    # normaliser in both micro-batches, and accumulation gives the batch-of-four gradient.
    for module in batch_norms:
        module.eval()
    whole, accumulated = _gradients(model, samples, prompts, weights, 1), _gradients(model, samples, prompts, weights, 2)
    assert whole.keys() == accumulated.keys() and len(whole) > 10
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)


def test_train_with_accumulation_counts_optimiser_steps_and_resumes_exactly(tmp_path):
    common = dict(data="synthetic", synthetic_images=8, variant="litesam_tiny", device="cpu", lr=1e-3,
                  warmup_steps=1, max_steps=3, log_every=1, checkpoint_every=0)
    big = train(TrainConfig(output_dir=tmp_path / "big", batch_size=4, **common))
    small = train(TrainConfig(output_dir=tmp_path / "acc", batch_size=2, accumulate_steps=2, **common))
    assert big["step"] == small["step"] == 3 and big["epoch"] == small["epoch"] == 1  # 2 steps per epoch
    logs = [[json.loads(x) for x in (tmp_path / d / "train_log.jsonl").read_text().splitlines()] for d in ("big", "acc")]
    assert [e["lr"] for e in logs[0]] == [e["lr"] for e in logs[1]]  # the schedule counts optimiser steps
    assert [e["step"] for e in logs[1]] == [1, 2, 3]

    train(TrainConfig(output_dir=tmp_path / "cut", batch_size=2, accumulate_steps=2, stop_after=1, **common))
    train(TrainConfig(output_dir=tmp_path / "cut", batch_size=2, accumulate_steps=2, resume=True, **common))
    b, c = load_checkpoint(tmp_path / "acc" / "last.pt")[1], load_checkpoint(tmp_path / "cut" / "last.pt")[1]
    for key in b:
        torch.testing.assert_close(c[key], b[key], rtol=0, atol=0, msg=key)


# --- torchrun ----------------------------------------------------------------------------------------------------


def _torchrun(out: Path, *flags: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LITESAM_TORCH_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "litesam.cli", "train", "-o", str(out), *flags]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.stdout  # only rank 0 prints the summary
    return json.loads(lines[0])


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process_accumulating_two(tmp_path):
    flags = ["--data", "synthetic", "--synthetic-images", "6", "--variant", "litesam_tiny", "--batch-size", "2",
             "--max-steps", "4", "--lr", "1e-3", "--warmup-steps", "1", "--log-every", "1", "--checkpoint-every",
             "0", "--device", "cpu", "--workers", "0"]
    # Two processes, interrupted after 2 of 4 steps (2 steps per epoch: the run crosses an epoch) and resumed.
    first = _torchrun(tmp_path / "ddp", *flags, "--stop-after", "2")
    assert first["world_size"] == 2 and first["step"] == 2 and first["replica_divergence"] == 0.0
    resumed = _torchrun(tmp_path / "ddp", *flags, "--resume")
    assert resumed["step"] == 4 and resumed["replica_divergence"] == 0.0  # the ranks' weights are identical
    state = torch.load(tmp_path / "ddp" / "last.state.pt", weights_only=True)
    assert len(state["torch_rng_ranks"]) == 2

    # One process with the same micro-batches: rank r's batch is micro-batch r of the same step.
    # At one torch thread, as each rank ran: products summed in another order (two threads) differ by
    # rounding, which Adam's first steps (close to sign(gradient)) can blow past the tolerance.
    args = _parser().parse_args(["train", *flags, "--accumulate-steps", "2", "-o", str(tmp_path / "one")])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(config_from_args(args))
    finally:
        torch.set_num_threads(threads)
    ddp, one = load_checkpoint(tmp_path / "ddp" / "last.pt")[1], load_checkpoint(tmp_path / "one" / "last.pt")[1]
    # Parameters only: BatchNorm running statistics are buffers, which DDP broadcasts from rank 0 at each
    # forward, so in the DDP run they follow rank 0's micro-batches alone (the training forward uses batch
    # statistics, so the parameters do not depend on them).
    parameters = [name for name, _ in build_model("litesam_tiny").named_parameters()]
    for key in parameters:
        torch.testing.assert_close(ddp[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    logs = [[json.loads(x) for x in (tmp_path / d / "train_log.jsonl").read_text().splitlines()] for d in ("ddp", "one")]
    assert [e["step"] for e in logs[0]] == [1, 2, 3, 4]  # rank 0 alone writes the log
    assert [e["loss"] for e in logs[0]] == pytest.approx([e["loss"] for e in logs[1]], rel=1e-4)
