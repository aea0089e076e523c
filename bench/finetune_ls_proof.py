"""Proof that fine-tuning on a Label Studio project's annotations helps: held-out 1-box mIoU before and after.

What runs is the real thing: a real Label Studio 1.23.2 (the test harness's, started from its template), a
project built by ``tests/e2e/finetune_support.py`` (synthetic scenes of another look than the starting
checkpoint's training scenes: more, smaller shapes, washed out; one uploaded as an EXIF-rotated JPEG; brush,
polygon and rectangle annotations made from the exact instance masks), and the user's commands through
``litesam.cli.main``:

    litesam eval  --checkpoint CKPT --data labelstudio --ls-url URL --ls-project N --prompts box   (held-out)
    litesam train --data labelstudio --ls-url URL --ls-project N --variant litesam_tiny --init-checkpoint CKPT
                  --max-steps STEPS --batch-size B --lr LR -o RUN                                 (train split)
    litesam eval  --checkpoint RUN/last.pt ...                                                      (held-out)

with ``LABEL_STUDIO_API_KEY`` = the admin's personal access token. Held-out = task ids that are multiples of
5. Every figure is printed with its box-fill floor. Usage::

    OMP_NUM_THREADS=1 LITESAM_TORCH_THREADS=1 .venv/bin/python bench/finetune_ls_proof.py \\
        [--checkpoint litesam/weights/litesam_tiny_synthetic.pt] [--scenes 60] [--steps 300] [--batch-size 4]
        [--lr 1e-3] [--json results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the Label Studio harness lives in tests/e2e
sys.path.insert(0, str(REPO / "bench"))

from benchlib import header  # noqa: E402

from litesam.cli import DEMO_CHECKPOINT, main  # noqa: E402
from litesam.inference import load_average  # noqa: E402
from tests.e2e.finetune_support import build_project  # noqa: E402
from tests.e2e.labelstudio import LabelStudioServer  # noqa: E402


def run_cli(argv: list[str]) -> str:
    """``litesam ARGV`` in this process; returns what it printed on stdout (a failure exits the script)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    if status != 0:
        raise SystemExit(f"litesam {' '.join(argv[:1])} failed with status {status}")
    return out.getvalue()


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT, help="the litesam_tiny to fine-tune")
    parser.add_argument("--scenes", type=int, default=60, help="annotated tasks in the project (1 in 5 held out)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", default="1e-3")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    print(header("fine-tune on a Label Studio project: held-out 1-box mIoU before / after"))

    with tempfile.TemporaryDirectory(prefix="litesam-finetune-") as scratch:
        scratch = Path(scratch)
        server = LabelStudioServer.start(scratch / "label-studio")
        try:
            started = time.perf_counter()
            project, expected = build_project(server, args.scenes)
            built = time.perf_counter() - started
            os.environ["LABEL_STUDIO_API_KEY"] = server.pat
            os.environ["LITESAM_CACHE_DIR"] = str(scratch / "cache")
            source = ["--data", "labelstudio", "--ls-url", server.url, "--ls-project", str(project)]

            def held_out(weights: Path) -> dict:
                return json.loads(run_cli(["eval", "--checkpoint", str(weights), *source, "--prompts", "box"]))

            before = held_out(args.checkpoint)
            started = time.perf_counter()
            cpu_started = time.process_time()
            summary = json.loads(
                run_cli(
                    [
                        "train",
                        *source,
                        "--variant",
                        "litesam_tiny",
                        "--init-checkpoint",
                        str(args.checkpoint),
                        "--max-steps",
                        str(args.steps),
                        "--batch-size",
                        str(args.batch_size),
                        "--lr",
                        args.lr,
                        "--checkpoint-every",
                        "0",
                        "-o",
                        str(scratch / "run"),
                    ]
                ).strip().splitlines()[-1]
            )
            train_wall, train_cpu = time.perf_counter() - started, time.process_time() - cpu_started
            after = held_out(scratch / "run" / "last.pt")
        finally:
            server.stop()

    results = {
        "checkpoint": str(args.checkpoint),
        "tasks": len(expected),
        "held_out_images": after["images"],
        "held_out_masks": after["masks"],
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": float(args.lr),
        "box_miou_before": before["box"]["miou"],
        "box_ap_before": before["box"]["ap"],
        "box_miou_after": after["box"]["miou"],
        "box_ap_after": after["box"]["ap"],
        "box_fill_miou": after["box_fill"]["miou"],
        "final_loss": summary["losses"].get("loss"),
        "project_build_s": round(built, 1),
        "train_wall_s": round(train_wall, 1),
        "train_cpu_s": round(train_cpu, 1),
        "load_at_end": load_average(),
    }
    print(json.dumps(results, indent=2))
    print(
        f"held-out 1-box mIoU {results['box_miou_before']:.3f} → {results['box_miou_after']:.3f} "
        f"(AP {results['box_ap_before']:.3f} → {results['box_ap_after']:.3f}; box-fill {results['box_fill_miou']:.3f}) "
        f"on {results['held_out_masks']} masks in {results['held_out_images']} held-out tasks, after "
        f"{args.steps} steps × {args.batch_size} in {train_wall:.0f} s wall / {train_cpu:.0f} CPU-s; {load_average()}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main_bench()
