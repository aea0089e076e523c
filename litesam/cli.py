"""The ``litesam`` command line: ``segment``, ``everything``, ``info``, ``train``, ``eval``, ``calibrate`` and
``distill``.

``segment`` and ``everything`` take their weights from ``--checkpoint`` (one of ours). Without one they use
the **demo checkpoint** shipped in the package (:data:`DEMO_CHECKPOINT`: ``litesam_tiny`` trained on
synthetic shapes by ``scripts/make_demo_checkpoint.py``; not for real photos) and say so on stderr; a
``--variant`` other than ``litesam_tiny`` without a checkpoint is refused, since no pretrained Lite-SAM
weights are published. ``--random-weights`` runs the untrained network, for testing the plumbing only,
and every output then says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .allocator import keep_freed_memory
from .errors import LiteSamError
from .distill.cli import add_distill_command
from .eval.calibrate_cli import add_calibrate_command
from .eval.cli import add_eval_command
from .train.cli import add_train_command

RANDOM_WEIGHTS_NOTICE = "NOTE: random weights (--random-weights): the masks are meaningless, for testing only."

#: The demo weights used when no --checkpoint is given (``litesam_tiny``, trained on synthetic shapes).
DEMO_CHECKPOINT = Path(__file__).parent / "weights" / "litesam_tiny_synthetic.pt"
DEMO_VARIANT = "litesam_tiny"
DEMO_NOTICE = (
    f"NOTE: no --checkpoint: using the demo checkpoint {DEMO_CHECKPOINT.name} (litesam_tiny trained on "
    "synthetic shapes; not for real photos)."
)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    keep_freed_memory()  # every command runs models on large, repeated temporaries (litesam.allocator)
    try:
        return args.run(args)
    except LiteSamError as error:
        print(f"litesam: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="litesam", description="Lite-SAM: a 4 M-parameter Segment Anything.")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="one mask from points and/or a box")
    segment.add_argument("image", type=Path)
    segment.add_argument(
        "--point",
        action="append",
        default=[],
        type=_point,
        metavar="X,Y[,L]",
        help="a point in image pixels; L = 1 foreground (default) or 0 background; repeatable",
    )
    segment.add_argument("--box", type=_box, metavar="X0,Y0,X1,Y1", help="a box in image pixels")
    segment.add_argument("--single", action="store_true", help="one mask instead of the best of three")
    segment.add_argument("-o", "--output", type=Path, required=True, help="mask PNG to write (0/255)")
    _model_options(segment)
    segment.set_defaults(run=_segment)

    everything = commands.add_parser("everything", help="masks for everything in one or more images")
    everything.add_argument("images", type=Path, nargs="+")
    everything.add_argument("-o", "--output", type=Path, required=True, help="folder for JSON and overlays")
    everything.add_argument(
        "--prompt-mode",
        choices=("auto", "autoppn", "grid"),
        default="auto",
        help="auto: AutoPPN when the model has a head, else SAM's point grid (official SAM-family checkpoints)",
    )
    everything.add_argument("--points-per-side", type=int, default=32, help="grid mode: n for the n×n grid")
    everything.add_argument(
        "--proposal-threshold",
        type=float,
        help="AutoPPN point-confidence threshold (default: the checkpoint's calibrated value, else the variant's 0.3)",
    )
    everything.add_argument("--top-k", type=int, help="at most this many AutoPPN proposals (default: the variant's)")
    everything.add_argument(
        "--pred-iou-thresh", type=float, help="keep masks with predicted IoU ≥ this (default: the checkpoint's calibrated value, else SAM's 0.88)"
    )
    everything.add_argument(
        "--stability-score-thresh",
        type=float,
        help="keep masks with stability score ≥ this (default: the checkpoint's calibrated value, else SAM's 0.95)",
    )
    everything.add_argument("--box-nms-thresh", type=float, default=0.7)
    everything.add_argument("--no-overlay", action="store_true", help="write only the JSON")
    _model_options(everything)
    everything.set_defaults(run=_everything)

    info = commands.add_parser("info", help="parameters and MACs per component")
    info.add_argument("--variant", default="litesam_r640")
    info.add_argument(
        "--resolutions", type=int, nargs="+", help="input sides (default 224 640 1024; engines: their input size)"
    )
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=_info)

    add_train_command(commands)
    add_eval_command(commands)
    add_calibrate_command(commands)
    add_distill_command(commands)
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="a Lite-SAM checkpoint (records its variant) or an official SAM-family file "
        "(sam_vit_b_01ec64.pth, mobile_sam.pt, …: the engine is recognised); default: the demo checkpoint",
    )
    parser.add_argument("--variant", help="litesam_r640, litesam_r1024, litesam_tiny, sam_vit_b, …, mobile_sam")
    parser.add_argument("--random-weights", action="store_true", help="untrained weights, for testing only")
    parser.add_argument("--device", default="cpu")


def _load_model(args: argparse.Namespace):
    from .build import build_model

    if args.checkpoint is not None and args.random_weights:
        raise LiteSamError("--checkpoint and --random-weights exclude each other")
    if args.random_weights:
        print(RANDOM_WEIGHTS_NOTICE, file=sys.stderr)
        return build_model(args.variant or "litesam_r640", device=args.device)
    if args.checkpoint is not None:
        model = build_model(args.variant, checkpoint=args.checkpoint, device=args.device)
        print(f"litesam: {args.checkpoint}: variant {model.variant}", file=sys.stderr)
        return model
    if args.variant not in (None, DEMO_VARIANT):
        raise LiteSamError(
            f"no weights for {args.variant}: pass --checkpoint PATH (no pretrained Lite-SAM weights are "
            "published; train one with `litesam train`), or --random-weights to test the pipeline"
        )
    print(DEMO_NOTICE, file=sys.stderr)
    return build_model(DEMO_VARIANT, checkpoint=DEMO_CHECKPOINT, device=args.device)


def _segment(args: argparse.Namespace) -> int:
    import cv2

    from .predictor import LiteSamPredictor

    if not args.point and args.box is None:
        raise LiteSamError("give at least one --point or a --box")
    image = read_image(args.image)
    predictor = LiteSamPredictor(_load_model(args))
    predictor.set_image(image)
    coords = labels = None
    if args.point:
        coords = np.array([p[:2] for p in args.point], dtype=np.float32)
        labels = np.array([p[2] for p in args.point], dtype=np.int64)
    masks, scores, _ = predictor.predict(coords, labels, args.box, multimask_output=not args.single, best_only=True)
    best = 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.output), masks[best].astype(np.uint8) * 255):
        raise LiteSamError(f"cannot write {args.output}")
    print(json.dumps({"mask": str(args.output), "score": float(scores[best]), "area": int(masks[best].sum())}))
    return 0


def _everything(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .everything import SegEvery
    from .masks import coco_rle_to_mask

    model = _load_model(args)
    try:  # the flags left unset (None) take the model's defaults: its checkpoint's filters, its variant's proposals
        generator = SegEvery(
            model,
            prompt_mode=args.prompt_mode,
            points_per_side=args.points_per_side,
            box_nms_thresh=args.box_nms_thresh,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_score_thresh,
            proposal_score_thresh=args.proposal_threshold,
            proposal_top_k=args.top_k,
            output_mode="coco_rle",
        )
    except ValueError as error:  # the settings dataclasses check their ranges
        raise LiteSamError(str(error)) from None
    settings = asdict(generator.config)
    args.output.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in tqdm(args.images, desc="segment everything", unit="image", file=sys.stderr):
        try:
            image = read_image(path)
            records = generator.generate(image)
        except LiteSamError as error:
            failures += 1
            tqdm.write(f"litesam: skipped {path}: {error}", file=sys.stderr)
            continue
        document = coco_document(path, image.shape[:2], records, settings, note=_weights_note(args))
        (args.output / f"{path.stem}.json").write_text(json.dumps(document))
        if not args.no_overlay:
            masks = [coco_rle_to_mask(r["segmentation"]) for r in records]
            write_overlay(args.output / f"{path.stem}_overlay.png", image, masks)
    return 1 if failures else 0


def _info(args: argparse.Namespace) -> int:
    from .build import build_model
    from .variants import get_variant
    from .complexity import complexity_report

    report = complexity_report(build_model(args.variant), resolutions=args.resolutions)
    report = {"variant": args.variant, "title": get_variant(args.variant).title, **report}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_format_report(report))
    return 0


def read_image(path: Path) -> np.ndarray:
    """Read an image file as H×W×3 uint8 RGB, EXIF orientation applied (grayscale/alpha converted)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except FileNotFoundError:
        raise LiteSamError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise LiteSamError(f"{path}: not a readable image ({error})") from None


def _weights_note(args: argparse.Namespace) -> str | None:
    """What the outputs must say about their weights: random, the demo checkpoint, or nothing."""
    if args.random_weights:
        return RANDOM_WEIGHTS_NOTICE
    return DEMO_NOTICE if args.checkpoint is None else None


def coco_document(
    path: Path, size: tuple[int, int], records: list[dict], settings: dict, note: str | None
) -> dict:
    """A COCO-style result document for one image: image info plus one annotation per mask, the SegEvery
    settings the masks were made with (``settings``: :class:`litesam.everything.SegEveryConfig` as a dict,
    kept under ``"segevery"``), and a note on the weights when they are random or the demo's.

    Args:
        path: the image file (its name is recorded). size: (height, width) of the image in pixels.
        records: SegEvery's records in ``coco_rle`` mode.
    """
    height, width = size
    annotations = [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, **r} for i, r in enumerate(records)]
    document = {
        "images": [{"id": 1, "file_name": path.name, "height": height, "width": width}],
        "categories": [{"id": 1, "name": "object"}],
        "annotations": annotations,
        "segevery": settings,
    }
    if note is not None:
        document["note"] = note
    return document


def write_overlay(path: Path, image: np.ndarray, masks: list[np.ndarray]) -> None:
    """Blend each mask in its own colour over the image (RGB) and write a PNG."""
    import cv2

    overlay = image.astype(np.float32)
    colours = np.random.default_rng(0).integers(40, 256, size=(max(len(masks), 1), 3))
    for mask, colour in zip(masks, colours):
        overlay[mask] = 0.45 * overlay[mask] + 0.55 * colour
    if not cv2.imwrite(str(path), cv2.cvtColor(overlay.astype(np.uint8), cv2.COLOR_RGB2BGR)):
        raise LiteSamError(f"cannot write {path}")


def _format_report(report: dict) -> str:
    """A text table: parameters, then GMACs per resolution (ptflops default backend, aten in brackets)."""
    sides = [str(r) for r in report["resolutions"]]
    header = f"{'component':<24}{'params':>12}" + "".join(f"{'GMACs @' + s:>20}" for s in sides)
    lines = [f"variant {report['variant']}: {report['title']} (ptflops {report['ptflops_version']})", header]
    for name, part in report["components"].items():
        cells = []
        for side in sides:
            default, aten = part.get("macs", {}).get(side), part.get("macs_aten", {}).get(side)
            cells.append("-" if default is None else f"{default / 1e9:.3f} ({aten / 1e9:.3f})")
        lines.append(f"{name:<24}{part['params']:>12,}" + "".join(f"{c:>20}" for c in cells))
    return "\n".join(lines)


def _point(text: str) -> tuple[float, float, int]:
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected X,Y or X,Y,L, got {text!r}")
    try:
        x, y = float(parts[0]), float(parts[1])
        label = int(parts[2]) if len(parts) == 3 else 1
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers in {text!r}") from None
    if label not in (0, 1):
        raise argparse.ArgumentTypeError(f"label must be 0 or 1, got {label}")
    return x, y, label


def _box(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected four numbers X0,Y0,X1,Y1, got {text!r}") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected four numbers X0,Y0,X1,Y1, got {text!r}")
    return values


if __name__ == "__main__":
    raise SystemExit(main())
