"""Which regions of a task become prompts (backend.jobs.prompted.task_prompts), and the written versions."""

from backend.jobs.prompted import task_prompts, written_version
from tests.backend_support import keypoint, rectangle


def test_boxes_one_prompt_per_rectangle_of_the_image_keypoints_grouped_by_label():
    other_image = rectangle(5, 5, 10, 10, 100, 80, to_name="other")
    annotation = {
        "result": [
            rectangle(10, 10, 20, 20, 100, 80, label="Person"),
            rectangle(40, 10, 20, 20, 100, 80, label="Vehicle", rotation=30),
            other_image,
            keypoint(10, 10, 100, 80, label="Person"),
            keypoint(20, 20, 100, 80, label="Person"),
            keypoint(50, 50, 100, 80, label="Object"),
            {"type": "brushlabels", "to_name": "image", "value": {"rle": [1], "brushlabels": ["Person"]}},
        ]
    }
    boxes = task_prompts([annotation], "boxes", "image")
    assert [(p["label"], len(p["regions"])) for p in boxes] == [("Person", 1), ("Vehicle", 1)]
    points = task_prompts([annotation, {"result": [keypoint(70, 70, 100, 80, label="Person")]}], "points", "image")
    assert [(p["label"], len(p["regions"])) for p in points] == [("Person", 2), ("Object", 1), ("Person", 1)]
    assert task_prompts([{"result": []}, {}], "boxes", "image") == []


def test_each_mode_writes_its_own_model_version():
    assert written_version("litesam_r640-abc", "segevery") == "litesam_r640-abc"
    assert written_version("litesam_r640-abc", "boxes") == "litesam_r640-abc-boxes"
    assert written_version("litesam_r640-abc", "points") == "litesam_r640-abc-points"
