"""Make the demo checkpoint ``litesam/weights/litesam_tiny_synthetic.pt`` from the synthetic generator.

The demo checkpoint is what ``litesam segment`` and ``litesam everything`` use when no ``--checkpoint`` is
given: ``litesam_tiny`` trained from scratch on synthetic scenes (:mod:`litesam.train.synthetic`):
``litesam train --data synthetic --variant litesam_tiny --max-steps 8000 --batch-size 4 --progressive-side
0``, every other setting the CLI's default (seed 0): the learning proof's recipe (``bench/train_proof.py``)
at 256 px throughout, as the checkpoint was made before progressive resizing became litesam_tiny's
default. **Trained on synthetic shapes; not for real photos.** The backend never serves it unless it is
named as ``LITESAM_CHECKPOINT``.

Steps: train (or take the finished run given with ``--from-run``), store the weights in float16 (half the
size; they are loaded into float32 models) with the label, the recipe and the held-out figures in the
file, load the stored file back and score it on the held-out scenes, then calibrate its SegEvery filters on
the calibration scenes (synthetic seed 2; ``litesam calibrate``'s rule) and write them into the file.

Reproducible: the same seed on the same CPU kind, torch version and thread count gives the same weights (the
trainer's resume test checks bit-equality on the CPU); other CPUs may differ in float rounding.

    python scripts/make_demo_checkpoint.py [--from-run runs/proof] [--steps 8000] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from litesam.build import CHECKPOINT_FORMAT, build_model, load_checkpoint, write_calibrated_filters
from litesam.eval.calibration import annotated_scenes, calibrate
from litesam.eval.segany import evaluate_segany, load_eval_records
from litesam.train.synthetic import CALIBRATION_SEED

LABEL = "trained on synthetic shapes; not for real photos"
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "litesam" / "weights" / "litesam_tiny_synthetic.pt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-run", type=Path, help="a finished `litesam train` run folder to convert")
    parser.add_argument("--steps", type=int, default=8000, help="--max-steps of the training run")
    parser.add_argument("--batch-size", type=int, default=4, help="--batch-size of the training run")
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="folder of a new training run")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT, help="the checkpoint to write")
    args = parser.parse_args()

    recipe = ["train", "--data", "synthetic", "--variant", "litesam_tiny",
              "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--progressive-side", "0"]
    run = args.from_run
    if run is None:
        run = args.run
        subprocess.run([sys.executable, "-m", "litesam.cli", *recipe, "-o", str(run)], check=True)
    state = json.loads((run / "train_log.jsonl").read_text().splitlines()[-1])
    if state["step"] != args.steps:
        raise SystemExit(f"{run} ended at step {state['step']}, not the recipe's {args.steps}")
    variant, weights = load_checkpoint(run / "last.pt", "litesam_tiny")
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}

    held_out = load_eval_records("synthetic")
    report = evaluate_segany(_model_from(half), held_out)
    figures = {
        "held_out": "60 synthetic scenes of seed 1 (litesam eval --data synthetic)",
        "box_miou": round(report["box"]["miou"], 4),
        "box_ap": round(report["box"]["ap"], 4),
        "point_miou": round(report["point"]["miou"], 4),
        "box_fill_miou": round(report["box_fill"]["miou"], 4),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "variant": variant,
            "state_dict": half,
            "label": LABEL,
            "recipe": "litesam " + " ".join(recipe) + " (seed 0; scripts/make_demo_checkpoint.py)",
            "figures": figures,
        },
        args.output,
    )
    stored = build_model(checkpoint=args.output)  # the file as every user loads it
    again = evaluate_segany(stored, held_out, prompts=("box",))
    assert again["box"]["miou"] == report["box"]["miou"], "the stored weights differ from the scored ones"
    calibration = calibrate(stored, annotated_scenes(load_eval_records("synthetic", synthetic_seed=CALIBRATION_SEED)))
    record = calibration.record(f"annotations of synthetic (seed {CALIBRATION_SEED})")
    write_calibrated_filters(args.output, args.output, calibration.chosen.filters, record)
    size = args.output.stat().st_size
    print(json.dumps({"checkpoint": str(args.output), "bytes": size, "label": LABEL, **figures,
                      "segevery_filters": {**calibration.chosen.filters, "calibration": record}}, indent=2))
    return 0


def _model_from(half: dict[str, torch.Tensor]):
    model = build_model("litesam_tiny")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.items()})
    return model.eval()


if __name__ == "__main__":
    raise SystemExit(main())
