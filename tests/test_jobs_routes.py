"""The pre-annotation job routes (with basic auth), the ``preannotate`` command and the batch ``/predict``,
in-process on a real Redis (backend.jobs.routes, backend.preannotate_cli, backend.jobs.batch)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from backend.app import create_app
from backend.errors import (
    BadRequestError,
    JobBusyError,
    QueueUnavailableError,
)
from backend.jobs.batch import handle_batch_predict
from backend.jobs.board import JobBoard
from backend.jobs.options import JobOptions
from backend.jobs.routes import jobs_blueprint
from backend.preannotate_cli import add_preannotate_command
from backend.services import build_services
from backend.settings import Secret
from backend.store import embedding_key
from tests.backend_support import (
    FakeLabelStudio,
    closed_port,
    decode_brush,
    png_bytes,
    settings_for,
)
from tests.jobs_support import OPEN_FILTERS

REPO = Path(__file__).resolve().parents[1]
CONFIG = (REPO / "label_config.xml").read_text()
BASIC = ("admin", "jobs-basic-pass")


# -- HTTP routes -------------------------------------------------------------------------------------------


@pytest.fixture
def client(checkpoint, redis_db):
    settings = settings_for(checkpoint, basic_auth_user=BASIC[0], basic_auth_pass=Secret(BASIC[1]))
    app = create_app(settings, blueprints=[jobs_blueprint])
    return app.test_client()


AUTH = {"Authorization": "Basic YWRtaW46am9icy1iYXNpYy1wYXNz"}  # admin:jobs-basic-pass


def test_routes_start_read_and_list_jobs(client, redis_db):
    response = client.post(
        "/jobs", json={"project": 12, "options": {"chunk_size": 4, **OPEN_FILTERS}}, headers=AUTH
    )
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["created"] is True and body["job"]["project"] == 12 and body["job"]["state"] == "queued"
    job_id = body["job"]["id"]

    again = client.post("/jobs", json={"project": 12, "overwrite": True}, headers=AUTH)
    assert again.status_code == 200 and again.get_json() == {"created": False, "job": body["job"]}

    one = client.get(f"/jobs/{job_id}", headers=AUTH)
    assert one.status_code == 200 and one.get_json() == JobBoard(redis_db).status(job_id)
    listed = client.get("/jobs?limit=5", headers=AUTH).get_json()["jobs"]
    assert [j["id"] for j in listed] == [job_id]
    options = json.loads(JobBoard(redis_db).record_fields(job_id)["options"])
    assert options["chunk_size"] == 4 and options["pred_iou_thresh"] == 0.0
    assert body["job"]["mode"] == "segevery" and body["job"]["rejected"] == []

    boxes = client.post(
        "/jobs", json={"project": 13, "mode": "boxes", "options": {"output": "polygon"}}, headers=AUTH
    ).get_json()["job"]
    assert boxes["mode"] == "boxes" and JobBoard(redis_db).job_record(boxes["id"]).mode == "boxes"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"project": "12"}, "'project' must be a positive integer"),
        ({"project": 12, "overwrite": "yes"}, "'overwrite' must be true or false"),
        ({"project": 12, "tasks": []}, "'tasks' must be a non-empty list"),
        ({"project": 12, "options": {"chunk_size": -1}}, "'chunk_size' must be a positive integer"),
        ({"project": 12, "priority": 1}, "unknown field(s) priority"),
        ({"project": 12, "mode": "masks"}, "'mode' must be one of segevery, boxes, points"),
        ({"project": 12, "options": {"output": "svg"}}, "option 'output' must be one of auto, brush, polygon"),
        ({"project": 12, "options": {"polygon_tolerance": -1}}, "'polygon_tolerance' must be a number"),
        ({"project": 12, "options": {"prompt_source": ""}}, "'prompt_source' must be a model version"),
    ],
)
def test_routes_refuse_bad_requests(client, body, fragment):
    response = client.post("/jobs", json=body, headers=AUTH)
    assert response.status_code == 400 and fragment in response.get_json()["error"]


def test_post_jobs_takes_only_json(client):
    response = client.post("/jobs", data='{"project": 12}', content_type="text/plain", headers=AUTH)
    assert response.status_code == 415 and "Content-Type: application/json" in response.get_json()["error"]


def test_routes_answer_404_for_unknown_jobs_and_400_for_bad_limits(client):
    assert client.get("/jobs/" + "0" * 32, headers=AUTH).status_code == 404
    assert client.get("/jobs?limit=0", headers=AUTH).status_code == 400
    assert client.get("/jobs?limit=abc", headers=AUTH).status_code == 400


def test_basic_auth_covers_every_jobs_route(client):
    for method, path in [
        ("get", "/jobs"),
        ("post", "/jobs"),
        ("get", "/jobs/ui"),
        ("get", "/jobs/abc"),
        ("delete", "/jobs/abc"),
        ("get", "/jobs/static/jobs.js"),
    ]:
        response = getattr(client, method)(path)
        assert response.status_code == 401, path
    wrong = {"Authorization": "Basic YWRtaW46d3Jvbmc="}  # admin:wrong
    assert client.get("/jobs", headers=wrong).status_code == 401


def test_jobs_page_and_its_static_files(client):
    page = client.get("/jobs/ui", headers=AUTH)
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    for fragment in (
        'id="start-form"',
        'id="project"',
        'id="start"',
        'class="cancel"',
        'data-jobs-url="/jobs"',
        'src="/jobs/static/jobs.js"',
        'href="/jobs/static/jobs.css"',
    ):
        assert fragment in html
    assert "http://" not in html and "https://" not in html  # no external files
    script = client.get("/jobs/static/jobs.js", headers=AUTH)
    assert script.status_code == 200 and b"fetch(jobsUrl" in script.get_data()
    assert b'method: "DELETE"' in script.get_data()
    assert client.get("/jobs/static/jobs.css", headers=AUTH).status_code == 200


def test_routes_say_so_when_redis_is_down(checkpoint):
    settings = settings_for(checkpoint, redis_url=Secret(f"redis://127.0.0.1:{closed_port()}/0"))
    client = create_app(settings, blueprints=[jobs_blueprint]).test_client()
    for response in (client.post("/jobs", json={"project": 1}), client.get("/jobs")):
        assert response.status_code == 503
        assert "Redis does not answer" in response.get_json()["error"]
    services = build_services(settings)
    tasks = [{"id": i, "data": {"image": "/data/upload/1/x.png"}} for i in (1, 2, 3)]
    with pytest.raises(QueueUnavailableError, match="the 3 tasks cannot be queued"):
        handle_batch_predict(services, "1.1", tasks, CONFIG, sync_limit=2)




# -- cancelling ---------------------------------------------------------------------------------------------


def test_delete_route_cancels_and_answers_404_for_unknown_jobs(client, redis_db):
    job_id = client.post("/jobs", json={"project": 18}, headers=AUTH).get_json()["job"]["id"]
    response = client.delete(f"/jobs/{job_id}", headers=AUTH)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["cancelled"] is True and body["job"]["state"] == "cancelled"
    again = client.delete(f"/jobs/{job_id}", headers=AUTH)
    assert again.status_code == 200 and again.get_json() == {"cancelled": False, "job": body["job"]}
    assert client.post("/jobs", json={"project": 18}, headers=AUTH).status_code == 202  # the project is free
    missing = client.delete("/jobs/" + "0" * 32, headers=AUTH)
    assert missing.status_code == 404 and "no pre-annotation job" in missing.get_json()["error"]
    assert client.delete(f"/jobs/{job_id}").status_code == 401


def test_preannotate_cancel_command(checkpoint, redis_db, capsys):
    settings = settings_for(checkpoint)
    board = JobBoard(redis_db)
    status, _ = board.start(19)
    assert run_command(["preannotate", "--cancel", status["id"]], settings) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "cancelled" and "project 19 is free" in out.err
    assert board.status(status["id"])["cancel_reason"] == "cancelled from the command line"
    assert run_command(["preannotate", "--cancel", status["id"]], settings) == 0  # still cancelled
    assert "already ended (cancelled)" in capsys.readouterr().err
    assert run_command(["preannotate", "--cancel", "0" * 32], settings) == 2
    assert "no pre-annotation job" in capsys.readouterr().err
    assert run_command(["preannotate"], settings) == 2
    assert run_command(["preannotate", "--project", "19", "--cancel", status["id"]], settings) == 2


# -- the preannotate command -------------------------------------------------------------------------------


def run_command(argv, settings):
    parser = argparse.ArgumentParser(prog="litesam-backend")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_preannotate_command(subparsers, settings)
    args = parser.parse_args(argv)
    return args.func(args, settings)


def test_preannotate_command_queues_a_job(checkpoint, redis_db, capsys):
    settings = settings_for(checkpoint)
    code = run_command(
        [
            "preannotate",
            "--project",
            "31",
            "--tasks",
            "4,5",
            "--pred-iou-thresh",
            "0",
            "--label",
            "Person",
            "--chunk-size",
            "1",
        ],
        settings,
    )
    assert code == 0
    job_id = capsys.readouterr().out.strip()
    status = JobBoard(redis_db).status(job_id)
    assert (status["project"], status["tasks"], status["source"]) == (31, [4, 5], "cli")
    options = json.loads(JobBoard(redis_db).record_fields(job_id)["options"])
    assert (options["pred_iou_thresh"], options["label"], options["chunk_size"]) == (0.0, "Person", 1)

    assert run_command(["preannotate", "--project", "31"], settings) == 0  # the running job
    assert capsys.readouterr().out.strip() == job_id
    assert run_command(["preannotate", "--project", "32", "--pred-iou-thresh", "2"], settings) == 2
    assert "from 0 to 1" in capsys.readouterr().err


# -- batch /predict ("Retrieve predictions") ---------------------------------------------------------------


def test_a_large_batch_predict_becomes_a_job_and_answers_no_results(checkpoint, redis_db):
    services = build_services(settings_for(checkpoint))
    tasks = [{"id": i, "data": {"image": f"/data/upload/2/{i}.png"}} for i in (41, 42, 43)]
    assert handle_batch_predict(services, "2.1764000000", tasks, CONFIG, sync_limit=2) == []
    (status,) = JobBoard(redis_db).recent()
    assert (status["project"], status["tasks"], status["source"]) == (2, [41, 42, 43], "predict")
    assert handle_batch_predict(services, "2.1764000000", tasks, CONFIG, sync_limit=2) == []
    assert len(JobBoard(redis_db).recent()) == 1  # the running job is reused
    others = [{"id": i, "data": {"image": f"/data/upload/2/{i}.png"}} for i in (44, 45, 46)]
    with pytest.raises(JobBusyError, match="running on other tasks"):  # never dropped in silence
        handle_batch_predict(services, "2.1764000000", others, CONFIG, sync_limit=2)
    assert not services.model.loaded  # nothing was computed in the web process
    with pytest.raises(BadRequestError, match="does not start with a project id"):
        handle_batch_predict(services, "x.1", tasks, CONFIG, sync_limit=2)
    with pytest.raises(BadRequestError, match="integer ids"):
        handle_batch_predict(services, "2.1", [{"data": {}}], CONFIG)


def test_a_small_batch_predict_is_answered_now_with_one_prediction_per_task(checkpoint, redis_db):
    server = FakeLabelStudio()
    try:
        server.add("/data/upload/2/a.png", png_bytes(90, 70, seed=1))
        server.add("/data/upload/2/b.png", png_bytes(50, 64, seed=2))
        server.add("/data/upload/2/bad.png", b"not an image")
        services = build_services(settings_for(checkpoint, label_studio_url=server.url))
        tasks = [
            {"id": 1, "data": {"image": "/data/upload/2/a.png"}},
            {"id": 2, "data": {"image": "/data/upload/2/b.png"}},
        ]
        answers = handle_batch_predict(
            services, "2.1", tasks, CONFIG, options=JobOptions.from_json({**OPEN_FILTERS, "label": "Vehicle"})
        )
        assert len(answers) == 2  # random weights, opened filters: plumbing only
        for answer, size in zip(answers, [(70, 90), (64, 50)], strict=True):
            assert answer["model_version"] == services.model.model_version and answer["result"]
            for region in answer["result"]:
                assert region["from_name"] == "mask" and region["value"]["brushlabels"] == ["Vehicle"]
                assert decode_brush(region).shape == size
                assert set(decode_brush(region).ravel()) <= {0, 255}
        keys = redis_db.keys(embedding_key(services.model.model_version, "*"))
        assert len(keys) == 2  # the embeddings were stored for later clicks
        multi_config = (
            '<View><Image name="image" valueList="$images"/>'
            '<BrushLabels name="mask" toName="image"><Label value="Object"/></BrushLabels></View>'
        )
        multi = {"id": 4, "data": {"images": ["/data/upload/2/a.png", "/data/upload/2/b.png"]}}
        (answer,) = handle_batch_predict(
            services, "2.1", [multi], multi_config, options=JobOptions.from_json(OPEN_FILTERS)
        )
        assert {r["item_index"] for r in answer["result"]} == {0, 1}
        for region in answer["result"]:
            assert decode_brush(region).shape == [(70, 90), (64, 50)][region["item_index"]]
        broken = {"id": 5, "data": {"images": ["/data/upload/2/a.png", "/data/upload/2/bad.png"]}}
        with pytest.raises(BadRequestError, match="task 5: image 2 of 2: the file is not an image"):
            handle_batch_predict(services, "2.1", [broken], multi_config)
        with pytest.raises(BadRequestError, match="task 3: the file is not an image"):
            handle_batch_predict(
                services, "2.1", [{"id": 3, "data": {"image": "/data/upload/2/bad.png"}}], CONFIG
            )
    finally:
        server.close()

