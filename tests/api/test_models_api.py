"""Control-plane REST API, in-process through Starlette's test client."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shipyard.api.app import create_app
from shipyard.api.state import ControlPlane
from shipyard.config import Settings
from shipyard.registry.service import Registry
from tests.fixtures import write_example_csv, write_sklearn_model


@pytest.fixture
def api(sqlite_settings: Settings) -> Iterator[TestClient]:
    registry = Registry.open(sqlite_settings)
    with TestClient(create_app(ControlPlane.over(registry))) as client:
        yield client
    registry.close()


def register(api: TestClient, path: Path, name: str = "fraud", **options: object) -> dict:
    import json

    with path.open("rb") as artifact:
        response = api.post(
            f"/api/models/{name}/versions",
            files={"artifact": (path.name, artifact)},
            data={"options": json.dumps(options)},
        )
    assert response.status_code == 201, response.text
    return response.json()


def test_register_list_show(api: TestClient, tmp_path: Path) -> None:
    created = register(api, write_sklearn_model(tmp_path), aliases=["production"])
    assert created["version"] == 1
    assert created["flavor"] == "sklearn"
    assert created["aliases"] == ["production"]
    assert created["signature"]["inputs"] == [
        {"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}
    ]

    listed = api.get("/api/models").json()
    assert [m["name"] for m in listed["models"]] == ["fraud"]
    assert listed["models"][0]["aliases"] == {"production": 1}
    assert api.get("/api/models/fraud/versions/production").json()["version"] == 1
    assert api.get("/api/models/fraud/versions/latest").json()["version"] == 1


def test_register_with_example_and_lineage(api: TestClient, tmp_path: Path) -> None:
    import json

    model = write_sklearn_model(tmp_path)
    example = write_example_csv(tmp_path)
    with model.open("rb") as artifact, example.open("rb") as sample:
        response = api.post(
            "/api/models/fraud/versions",
            files={"artifact": (model.name, artifact), "example": (example.name, sample)},
            data={"options": json.dumps({"lineage": {"metrics": {"auc": 0.9}}})},
        )
    assert response.status_code == 201, response.text
    body = response.json()
    assert [s["name"] for s in body["signature"]["inputs"]] == ["f0", "f1", "f2", "f3"]
    assert body["reference_sample"]["rows"] == 20
    assert body["lineage"]["metrics"] == {"auc": 0.9}


def test_register_folder_as_tar(api: TestClient, tmp_path: Path) -> None:
    folder = tmp_path / "pymodel"
    folder.mkdir()
    (folder / "model.py").write_text(
        "class Model:\n    def load(self):\n        pass\n\n"
        "    def predict(self, rows):\n        return rows\n"
    )
    (folder / "weights.txt").write_text("1 2 3\n")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(folder, arcname=".")
    response = api.post(
        "/api/models/echo/versions",
        files={"artifact": ("pymodel.tar", buffer.getvalue())},
        data={"folder": "true"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["flavor"] == "python"


def test_errors_are_json_with_the_right_status(api: TestClient, tmp_path: Path) -> None:
    unknown = api.get("/api/models/ghost")
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "model 'ghost' not found"}

    register(api, write_sklearn_model(tmp_path))
    assert api.get("/api/models/fraud/versions/9").status_code == 404
    assert api.get("/api/models/fraud/versions/nope").status_code == 404

    api.put("/api/models/fraud/aliases/production", json={"version": 1})
    conflict = api.post("/api/models/fraud/versions/1/archive")
    assert conflict.status_code == 409
    assert "aliased as production" in conflict.json()["error"]

    bad_alias = api.put("/api/models/fraud/aliases/latest", json={"version": 1})
    assert bad_alias.status_code == 400
    assert "reserved" in bad_alias.json()["error"]

    missing_body = api.put("/api/models/fraud/aliases/staging", json={"versoin": 1})
    assert missing_body.status_code == 422
    assert "body.version" in missing_body.json()["error"]

    nowhere = api.get("/api/nowhere")
    assert nowhere.status_code == 404
    assert "error" in nowhere.json()


def test_non_model_upload_is_refused_naming_flavors(api: TestClient) -> None:
    response = api.post(
        "/api/models/notes/versions",
        files={"artifact": ("notes.txt", b"just some text\n")},
    )
    assert response.status_code == 400
    message = response.json()["error"]
    assert "notes.txt" in message
    for flavor in ("sklearn", "xgboost", "lightgbm", "onnx", "mlflow", "python"):
        assert flavor in message


def test_bad_options_json_is_a_400(api: TestClient) -> None:
    response = api.post(
        "/api/models/x/versions",
        files={"artifact": ("m.joblib", b"x")},
        data={"options": "{not json"},
    )
    assert response.status_code == 400
    assert "invalid options" in response.json()["error"]


def test_openapi_document_lists_the_registry_routes(api: TestClient) -> None:
    document = api.get("/openapi.json").json()
    assert "/api/models" in document["paths"]
    assert "post" in document["paths"]["/api/models/{name}/versions"]
