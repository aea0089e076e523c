"""Tests of Label Studio regions → training masks (backend.labelstudio.regions, the brush RLE decoder) and of the
task records of backend.training_data (EXIF-rotated images, box-only rectangles, the split rule)."""

import io

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, encode_rle
from PIL import Image

from backend.labelstudio.brush_rle import brush_rle_to_mask, mask_to_brush_rle
from backend.labelstudio.label_config import OutputTag
from backend.labelstudio.regions import choose_annotation, rasterise_polygon, rectangle_corners, region_mask
from backend.labelstudio.results import brush_region, mask_regions
from backend.training_data import LabelStudioRecord, in_split
from litesam.cli import main
from litesam.errors import DatasetError, InvalidMaskError
from litesam.train.data import SegmentationDataset
from tests import brush_rle_decoder
from tests.backend_support import closed_port
from tests.mask_cases import MASK_CASES, disc

POLYGON_TAG = OutputTag("poly", "image", ("Object",), "polygon")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


# ----------------------------------------------------------------------------------------------- brush
@pytest.mark.parametrize("name", sorted(MASK_CASES))
def test_brush_rle_round_trip(name):
    mask = MASK_CASES[name]
    rle = mask_to_brush_rle(mask)
    decoded = brush_rle_to_mask(rle, *mask.shape)
    assert decoded.dtype == bool and decoded.shape == mask.shape
    assert np.array_equal(decoded, mask)
    assert np.array_equal(decoded, brush_rle_decoder.brush_rle_to_mask(rle, *mask.shape))


def test_brush_decoder_reads_editor_strokes_with_partial_alpha():
    """The editor's strokes carry antialiased alpha (the SDK then writes literal chunks): ≥ 128 is on."""
    rng = np.random.default_rng(5)
    rgba = np.zeros((29, 41, 4), dtype=np.uint8)
    rgba[..., :3] = rng.integers(0, 256, size=(29, 41, 3))
    rgba[..., 3] = rng.integers(0, 256, size=(29, 41)) * (rng.random((29, 41)) < 0.6)
    rgba[4:20, 5:30, 3] = 255
    rle = encode_rle(rgba.ravel())
    alpha = decode_rle(rle).reshape(29, 41, 4)[:, :, 3]
    assert np.array_equal(brush_rle_to_mask(rle, 29, 41), alpha >= 128)


def test_brush_decoder_refuses_wrong_sizes_and_broken_streams():
    rle = mask_to_brush_rle(MASK_CASES["two_blobs"])
    with pytest.raises(InvalidMaskError, match="holds 240000 values, but a 800×300 mask needs 960000"):
        brush_rle_to_mask(rle, 300, 200 * 4)
    with pytest.raises(InvalidMaskError, match="ends in the middle"):
        brush_rle_to_mask(rle[: len(rle) // 2], 200, 300)
    with pytest.raises(InvalidMaskError, match="integers 0…255"):
        brush_rle_to_mask([*rle[:-1], 256], 200, 300)


def test_brush_region_of_another_size_is_resized_onto_the_image():
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:30, 0:30] = True  # left half, rows 10–29
    region = brush_region(mask, from_name="m", to_name="image", label="Object", score=1.0)
    assert np.array_equal(region_mask(region, 40, 60), mask)
    doubled = region_mask(region, 80, 120)
    assert doubled.shape == (80, 120) and np.array_equal(doubled, np.kron(mask, np.ones((2, 2), dtype=bool)))


# -------------------------------------------------------------------------------------------- polygons
def test_polygon_pixel_centre_rule_on_a_square_and_a_triangle():
    square = rasterise_polygon(np.array([[2, 3], [7, 3], [7, 9], [2, 9]]), 12, 10)
    expected = np.zeros((12, 10), dtype=bool)
    expected[3:9, 2:7] = True
    assert np.array_equal(square, expected)
    triangle = rasterise_polygon(np.array([[0, 0], [8, 0], [0, 8]]), 8, 8)
    rows, cols = np.mgrid[:8, :8]
    assert np.array_equal(triangle, rows + cols + 1 < 8)  # centre (c+.5, r+.5) below the hypotenuse x+y=8


@pytest.mark.parametrize(("height", "width"), [(120, 200), (333, 157)])
def test_polygons_written_by_the_backend_read_back_at_natural_size(height, width):
    """Masks → polygon regions (percent, holes bridged) → masks again, at the natural size."""
    ring = disc(height, width, height / 2, width / 3, min(height, width) / 3)
    ring &= ~disc(height, width, height / 2, width / 3, min(height, width) / 7)
    blob = disc(height, width, height / 4, 0.8 * width, min(height, width) / 6)
    for mask in (ring, blob):
        exact = mask_regions(mask, POLYGON_TAG, label="Object", score=1.0, tolerance=0)
        (region,) = exact
        assert region["original_width"] == width and region["original_height"] == height
        read = region_mask(region, height, width)
        assert read.shape == (height, width)
        assert iou(read, mask) >= 0.99
        (simplified,) = mask_regions(mask, POLYGON_TAG, label="Object", score=1.0)
        assert iou(region_mask(simplified, height, width), mask) >= 0.95
    hole = disc(height, width, height / 2, width / 3, min(height, width) / 7)
    (ring_region,) = mask_regions(ring, POLYGON_TAG, label="Object", score=1.0, tolerance=0)
    read_ring = region_mask(ring_region, height, width)
    assert not read_ring[hole].any() and not read_ring[blob].any()  # the bridged hole stays a hole


# ------------------------------------------------------------------------------------------ rectangles
def rect(x, y, w, h, rotation=0.0):
    return {
        "type": "rectanglelabels",
        "to_name": "image",
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, "rectanglelabels": ["Object"]},
    }


def test_rectangle_area_in_pixels():
    area = region_mask(rect(10, 20, 50, 25), 80, 100)
    expected = np.zeros((80, 100), dtype=bool)
    expected[16:36, 10:60] = True
    assert np.array_equal(area, expected)


def test_rotated_rectangle_turns_clockwise_about_its_top_left_corner():
    # 40×20 px at (50, 10), turned 90° clockwise about (50, 10): it then covers x 30…50, y 10…50.
    corners = rectangle_corners(rect(50, 10, 40, 20, rotation=90)["value"], 100, 100)
    np.testing.assert_allclose(corners, [[50, 10], [50, 50], [30, 50], [30, 10]], atol=1e-9)
    area = region_mask(rect(50, 10, 40, 20, rotation=90), 100, 100)
    expected = np.zeros((100, 100), dtype=bool)
    expected[10:50, 30:50] = True
    assert np.array_equal(area, expected)
    tilted = region_mask(rect(30, 30, 40, 20, rotation=30), 100, 100)
    assert tilted.sum() == pytest.approx(40 * 20, rel=0.03)  # the area of the rectangle, not of its box
    rows, cols = np.nonzero(tilted)
    assert cols.min() < 30 < cols.max() and rows.max() > 50  # it leans down-left of its corner


@pytest.mark.parametrize(
    "value",
    [{"x": 1, "y": 2, "width": 0, "height": 5}, {"x": 1, "y": 2, "width": "a", "height": 5}, {"x": 1}],
)
def test_bad_rectangles_are_refused(value):
    with pytest.raises(DatasetError, match="rectangle"):
        region_mask({"type": "rectanglelabels", "value": value}, 10, 10)


# ------------------------------------------------------------------------------------ which annotation
def test_choose_annotation_skips_cancelled_prefers_ground_truth_then_the_latest():
    old = {"id": 1, "updated_at": "2026-01-01T10:00:00Z", "result": []}
    new = {"id": 2, "updated_at": "2026-01-02T10:00:00Z", "result": []}
    corrected = {"id": 1, "updated_at": "2026-01-03T10:00:00Z", "result": []}
    cancelled = {"id": 3, "updated_at": "2026-01-04T10:00:00Z", "was_cancelled": True, "result": []}
    truth = {"id": 0, "updated_at": "2025-12-01T10:00:00Z", "ground_truth": True, "result": []}
    assert choose_annotation([old, new, cancelled]) is new
    assert choose_annotation([new, corrected]) is corrected
    assert choose_annotation([new, truth, cancelled]) is truth
    assert choose_annotation([cancelled]) is None and choose_annotation([]) is None


def test_split_by_task_id():
    assert [t for t in range(1, 21) if in_split(t, "held-out")] == [5, 10, 15, 20]
    assert all(in_split(t, "train") != in_split(t, "held-out") and in_split(t, "all") for t in range(50))
    with pytest.raises(DatasetError, match="unknown Label Studio split"):
        in_split(3, "test")


# ------------------------------------------------------------------------------- records (EXIF, boxes)
def exif_scene(tmp_path) -> tuple[LabelStudioRecord, np.ndarray]:
    """A JPEG stored 60 wide × 40 high with EXIF orientation 6 (shown turned 90° clockwise: 40 × 60), whose
    shown image has a white square at rows 5–24, columns 10–29; its annotation is a brush mask of that square
    at the shown size, a polygon of the same square and a rectangle."""
    shown = np.zeros((60, 40, 3), dtype=np.uint8)
    shown[5:25, 10:30] = 255
    stored = np.rot90(shown, k=1)  # orientation 6 turns the stored image 90° clockwise to show it
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(stored)).save(buffer, "JPEG", exif=exif, quality=95)
    path = tmp_path / "exif.jpg"
    path.write_bytes(buffer.getvalue())
    square = shown[..., 0] > 0
    brush = brush_region(square, from_name="mask", to_name="image", label="Object", score=1.0)
    (polygon,) = mask_regions(square, POLYGON_TAG, label="Object", score=1.0)
    box = rect(25, 50, 50, 10)  # x 10–30, y 30–36 of the shown 40 × 60 image
    record = LabelStudioRecord(7, path, 60, 40, (brush, polygon), (box,), max_pixels=10**6)
    return record, square


def test_record_of_an_exif_rotated_image_has_the_shown_orientation(tmp_path):
    record, square = exif_scene(tmp_path)
    image = record.image()
    assert image.shape == (60, 40, 3)  # natural (EXIF-transposed) size, not the stored 40 × 60
    masks = list(record.instance_masks())
    assert [m.shape for m in masks] == [(60, 40), (60, 40)]
    assert np.array_equal(masks[0], square)
    assert iou(masks[1], square) >= 0.95
    bright = image.mean(axis=2) > 128
    assert iou(bright, square) >= 0.95  # the masks lie on the object as the image is shown
    (box,) = record.box_masks()
    assert box.shape == (60, 40) and np.array_equal(np.argwhere(box).min(0), [30, 10])


def test_box_only_instances_shape_autoppn_targets_but_get_no_mask_loss(tmp_path):
    record, _ = exif_scene(tmp_path)
    without_boxes = LabelStudioRecord(7, record.path, 60, 40, record.mask_regions, (), 10**6)
    dataset = SegmentationDataset([record], image_size=64, stride=8)
    sample = dataset[0]
    plain = SegmentationDataset([without_boxes], image_size=64, stride=8)[0]
    assert len(sample.gt_masks) == 2  # the two masks; the rectangle has none
    assert sample.num_peaks == plain.num_peaks + 1  # but it is one more AutoPPN target
    assert sample.heat_target.sum() > plain.heat_target.sum()


def test_record_reports_a_changed_image(tmp_path):
    record, _ = exif_scene(tmp_path)
    Image.new("RGB", (10, 10)).save(record.path, "PNG")
    with pytest.raises(DatasetError, match="task 7: its cached image .* changed size"):
        record.image()


# ------------------------------------------------------------------------------- the CLI's error paths
def test_cli_names_what_a_label_studio_source_lacks_and_never_prints_the_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LITESAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    assert main(["eval", "--random-weights", "litesam_tiny", "--data", "labelstudio"]) == 2
    assert "needs --ls-project" in capsys.readouterr().err
    url = f"http://127.0.0.1:{closed_port()}"
    train = ["train", "--data", "labelstudio", "--ls-url", url, "--ls-project", "3", "--variant", "litesam_tiny"]
    assert main([*train, "-o", str(tmp_path / "run")]) == 2
    assert "an API key in LABEL_STUDIO_API_KEY" in capsys.readouterr().err
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "secret-legacy-key-0123456789")
    assert main([*train, "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Label Studio project 3" in err and "could not be reached" in err
    assert "secret-legacy-key" not in err and "Traceback" not in err
