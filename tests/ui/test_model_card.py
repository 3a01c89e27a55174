"""Demo honesty: /v1/models and the demo page say what a model was trained on."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from ccnet.inference.model_card import training_card
from ccnet.service.core.config import Settings
from ccnet.service.main import create_app

STATIC = Path(__file__).resolve().parents[2] / "service" / "static"


def test_models_say_the_demo_models_know_synthetic_textures() -> None:
    app = create_app(Settings(log_level="warning"), background_load=False)
    with TestClient(app) as client:
        models = client.get("/v1/models").json()["models"]
    assert {m["name"] for m in models} == {"ccnet-tiny", "ccnet3d-tiny"}
    for model in models:
        card = model["training"]
        assert card["synthetic"] is True, model["name"]
        assert "ccnet synth" in card["data"]
        assert "synthetic textures" in card["summary"]
        for entry in model["classes"]:
            assert entry["name"] in card["summary"], entry["name"]
        assert card["real_weights"]["convert"].startswith("ccnet convert --from official|mmseg")
        assert card["real_weights"]["train"].startswith("ccnet train")
        assert 0.5 < card["val_miou"] < 1


def test_a_model_trained_on_real_data_has_no_demo_note() -> None:
    meta = {"classes": ["road", "car"], "provenance": {"data": "data/cityscapes"}}
    card = training_card(meta)
    assert card == {
        "data": "data/cityscapes",
        "synthetic": False,
        "val_miou": None,
        "summary": "Trained on data/cityscapes.",
        "real_weights": None,
    }
    # an ONNX sidecar nests the checkpoint's provenance
    nested = training_card({"classes": [], "provenance": {"checkpoint": meta["provenance"]}})
    assert nested["data"] == "data/cityscapes"


def test_demo_page_shows_the_training_card() -> None:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    script = (STATIC / "app.js").read_text(encoding="utf-8")
    for element in ("model-card-summary", "model-card-classes", "model-card-convert"):
        assert f'id="{element}"' in html, element
        assert f'$("{element}")' in script, element
    assert re.search(r"model\.training", script), "app.js does not read the model's card"
