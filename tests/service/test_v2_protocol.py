"""The Open Inference Protocol (/v2) spoken by Triton's own client against a real server (and the
model repository of ``ccnet export triton`` speaking the same language), and its limits and
errors through the test client."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from ccnet import Segmenter
from ccnet.service.core.config import BUNDLED_MODELS
from tests.export.test_triton import parse_pbtxt
from tests.service.conftest import make_client, png_bytes

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = "ccnet-tiny"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """``ccnet serve`` on 127.0.0.1 and a free port; ``host:port`` once ready (120 s bound)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("v2") / "server.log"
    env = {
        **os.environ,
        "CCNET_LOG_FORMAT": "text",
        "CCNET_MAX_BATCH_WAIT_MS": "5",
        "CCNET_PRECISION": "fp32",  # auto picks per process by measured speed
    }
    for name in ("CCNET_API_KEY", "CCNET_MODELS", "CCNET_BACKEND", "CCNET_PORT", "CCNET_HOST"):
        env.pop(name, None)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ccnet",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"127.0.0.1:{port}"
    client = httpclient.InferenceServerClient(url, connection_timeout=2, network_timeout=30)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"ccnet serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                if client.is_server_ready():
                    break
            except (InferenceServerException, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ccnet serve not ready in 120 s:\n{log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        client.close()
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def client(server) -> Iterator[object]:
    with httpclient.InferenceServerClient(server, network_timeout=60) as connected:
        yield connected


@pytest.fixture(scope="module")
def reference() -> Segmenter:
    return Segmenter.from_file(BUNDLED_MODELS[0], precision="fp32")


def _photo(name: str, step: int = 1) -> np.ndarray:
    image = np.asarray(getattr(skimage.data, name)())[::step, ::step]
    return np.ascontiguousarray(image[..., :3] if image.ndim == 3 else image)


def test_health_and_metadata(client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL and metadata["versions"] == ["1"]
    assert {t["name"]: t["datatype"] for t in metadata["inputs"]} == {
        "image": "UINT8",
        "image_bytes": "BYTES",
    }
    assert {t["name"]: t["shape"] for t in metadata["outputs"]}["logits"] == [-1, 6, -1, -1]
    assert not client.is_model_ready("no-such-model")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_gives_the_python_api_mask(client, reference, binary) -> None:
    """A batch of two photographs (one size), the binary extension or plain JSON: each mask
    equals the Python API's (and so /v1/segment's) for that photograph."""
    camera = _photo("camera", 4)  # grayscale (H, W): as RGB
    photos = np.stack([_photo("astronaut", 4), np.repeat(camera[..., None], 3, axis=2)])
    image = httpclient.InferInput("image", list(photos.shape), "UINT8")
    image.set_data_from_numpy(photos, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput("mask", binary_data=binary)]
    result = client.infer(MODEL, [image], outputs=wanted, request_id="req-1")
    masks = result.as_numpy("mask")
    assert masks.dtype == np.uint8 and masks.shape == photos.shape[:3]
    for photo, mask in zip(photos, masks, strict=True):
        np.testing.assert_array_equal(mask, reference(photo).mask)
    assert result.get_response()["id"] == "req-1"


def test_logits_on_request_and_all_outputs_by_default(client, reference) -> None:
    photo = _photo("coffee", 5)[None]  # 80×120: a multiple of 8, so logits are unscaled
    image = httpclient.InferInput("image", list(photo.shape), "UINT8")
    image.set_data_from_numpy(photo)
    both = [httpclient.InferRequestedOutput(name) for name in ("mask", "logits")]
    result = client.infer(MODEL, [image], outputs=both)
    logits = result.as_numpy("logits")
    assert logits.dtype == np.float32 and logits.shape == (1, 6, 80, 120)
    np.testing.assert_array_equal(logits.argmax(axis=1), result.as_numpy("mask"))
    plain = client.infer(MODEL, [image])  # no outputs named: the mask, in binary
    np.testing.assert_array_equal(plain.as_numpy("mask")[0], reference(photo[0]).mask)
    assert plain.as_numpy("logits") is None


def test_encoded_images_as_bytes(client, reference) -> None:
    photo = _photo("chelsea", 3)
    data = np.array([png_bytes(photo)], dtype=np.object_)
    image = httpclient.InferInput("image_bytes", [1], "BYTES")
    image.set_data_from_numpy(data)
    result = client.infer(MODEL, [image])
    np.testing.assert_array_equal(result.as_numpy("mask")[0], reference(photo).mask)


def test_errors_reach_the_client(client) -> None:
    photo = np.zeros((1, 16, 16, 3), dtype=np.uint8)
    image = httpclient.InferInput("image", [1, 16, 16, 3], "UINT8")
    image.set_data_from_numpy(photo)
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no-such-model", [image])
    assert unknown.value.status() == "404" and "unknown_model" in str(unknown.value)
    wrong = httpclient.InferInput("image", [1, 16, 16], "UINT8")
    wrong.set_data_from_numpy(photo[..., 0])
    with pytest.raises(InferenceServerException) as bad:
        client.infer(MODEL, [wrong])
    assert bad.value.status() == "400" and "[N, H, W, 3]" in str(bad.value)
    assert client.is_server_live()  # and it keeps serving


def test_readme_tritonclient_script_runs(server, tmp_path) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- ci: tritonclient -->\s*```python\n(.*?)```", text, re.S)
    assert found, "README has no block marked <!-- ci: tritonclient -->"
    Image.fromarray(_photo("astronaut", 2)).save(tmp_path / "photo.jpg")
    done = subprocess.run(
        [sys.executable, "-c", found.group(1)],
        cwd=tmp_path,
        env={**os.environ, "CCNET_URL": server},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("(256, 256) [")


# ---------------------------------------------------------------------------- Triton's model routes

SERVED_TENSORS = {
    "image": ("TYPE_UINT8", [-1, -1, 3]),
    "image_bytes": ("TYPE_STRING", [1]),
    "mask": ("TYPE_UINT8", [-1, -1]),
    "logits": ("TYPE_FP32", [6, -1, -1]),
}


def test_model_config_as_triton_answers(client) -> None:
    for version in ("", "1"):
        config = client.get_model_config(MODEL, model_version=version)
        assert config["name"] == MODEL and config["max_batch_size"] == 8, version
        tensors = {t["name"]: (t["data_type"], t["dims"]) for t in config["input"]}
        tensors |= {t["name"]: (t["data_type"], t["dims"]) for t in config["output"]}
        assert tensors == SERVED_TENSORS, version
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 5000
        classes = json.loads(config["parameters"]["classes"]["string_value"])
        assert classes == client.get_model_metadata(MODEL)["parameters"]["classes"]
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_config("no-such-model")
    assert unknown.value.status() == "404" and "unknown_model" in str(unknown.value)


def test_repository_index_as_triton_answers(client) -> None:
    index = client.get_model_repository_index()
    assert [(m["name"], m["version"], m["state"]) for m in index] == [
        (MODEL, "1", "READY"),
        ("ccnet3d-tiny", "1", "UNAVAILABLE"),  # a clip model: /v1 only
    ]
    assert "/v1/segment/video" in index[1]["reason"]


def test_inference_statistics_count_what_ran(client) -> None:
    def stats(version: str = "") -> dict:
        (entry,) = client.get_inference_statistics(MODEL, model_version=version)["model_stats"]
        assert entry["name"] == MODEL and entry["version"] == "1"
        return entry

    before = stats()
    photos = np.stack([_photo("astronaut", 8), _photo("chelsea", 4)[:64, :64]])  # two 64×64
    image = httpclient.InferInput("image", list(photos.shape), "UINT8")
    image.set_data_from_numpy(photos)
    client.infer(MODEL, [image])
    after = stats("1")
    assert after["inference_count"] - before["inference_count"] == 2
    inference, earlier = after["inference_stats"], before["inference_stats"]
    for part in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[part]["count"] - earlier[part]["count"] == 2, part
        assert inference[part]["ns"] >= earlier[part]["ns"], part
    assert inference["success"]["ns"] > earlier["success"]["ns"]
    assert inference["fail"] == earlier["fail"]
    assert after["execution_count"] > before["execution_count"]
    executions = sum(batch["compute_infer"]["count"] for batch in after["batch_stats"])
    assert executions == after["execution_count"]
    assert after["last_inference"] >= max(before["last_inference"], 1)
    every = client.get_inference_statistics()["model_stats"]
    assert [entry["name"] for entry in every] == [MODEL]  # the image models /v2 serves
    with pytest.raises(InferenceServerException) as unknown:
        client.get_inference_statistics("no-such-model")
    assert unknown.value.status() == "404" and "unknown_model" in str(unknown.value)


def test_routes_we_lack_answer_in_the_protocols_shape(client) -> None:
    """tritonclient calls this server does not implement get a readable error, not a crash."""
    with pytest.raises(InferenceServerException) as trace:
        client.get_trace_settings()
    assert trace.value.status() == "404" and "GET /v2/trace/setting" in str(trace.value)
    with pytest.raises(InferenceServerException) as load:
        client.load_model(MODEL)
    assert load.value.status() == "404" and "not_found" in str(load.value)
    assert client.is_server_live()


@pytest.fixture(scope="module")
def triton_model(tmp_path_factory) -> Path:
    """``ccnet export triton`` of the model the server serves (the bundled ccnet-tiny), with
    its default interface and the logits output."""
    from ccnet.export.onnx import export_onnx
    from ccnet.export.triton import write_triton_repository

    folder = tmp_path_factory.mktemp("triton")
    network = export_onnx(
        BUNDLED_MODELS[0], folder / "onnx", check_sizes=((64, 96), (75, 57)), progress=None
    )
    written = write_triton_repository(
        network.model_path, folder / "repo", "ccnet_tiny", logits=True, progress=None
    )
    return written.model_dir


def test_exported_triton_model_gives_the_v2_masks(client, triton_model) -> None:
    """The same UINT8 tensor to /v2 (tritonclient) and to the exported Triton model (ONNX
    Runtime, as Triton's onnxruntime backend runs it): the same mask, byte for byte, on three
    photographs of different sizes (two off the stride of 8); the same tensors declared."""
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(triton_model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    for name in ("chelsea", "coffee", "rocket"):  # 300×451, 400×600, 427×640
        batch = _photo(name)[None]
        image = httpclient.InferInput("image", list(batch.shape), "UINT8")
        image.set_data_from_numpy(batch)
        wanted = [httpclient.InferRequestedOutput(n) for n in ("mask", "logits")]
        served = client.infer(MODEL, [image], outputs=wanted)
        mask, logits = session.run(["mask", "logits"], {"image": batch})
        assert mask.dtype == served.as_numpy("mask").dtype == np.uint8, name
        assert mask.shape == batch.shape[:3], name
        assert mask.tobytes() == served.as_numpy("mask").tobytes(), name
        # the server runs PyTorch, the export ONNX Runtime: logits agree to float rounding
        np.testing.assert_allclose(logits, served.as_numpy("logits"), rtol=1e-4, atol=1e-4)
    exported = parse_pbtxt((triton_model / "config.pbtxt").read_text())
    tensors = {}
    for block in (*exported["input"], *exported["output"]):
        for tensor in block if isinstance(block, list) else [block]:
            tensors[tensor["name"][0]] = (tensor["data_type"][0], tensor["dims"][0])
    served_tensors = {k: v for k, v in SERVED_TENSORS.items() if k != "image_bytes"}
    assert tensors == served_tensors  # all but the encoded files, which a graph cannot decode


# ---------------------------------------------------------------------------- via TestClient


def _json_request(array: np.ndarray) -> dict[str, object]:
    return {
        "inputs": [
            {
                "name": "image",
                "datatype": "UINT8",
                "shape": list(array.shape),
                "data": array.reshape(-1).tolist(),
            }
        ]
    }


def test_same_key_and_limits_as_v1() -> None:
    image = np.zeros((1, 40, 40, 3), dtype=np.uint8)
    with make_client(api_key="secret", max_pixels=1000, max_batch_size=2) as client:
        assert client.get("/v2/health/live").status_code == 200  # probes need no key
        denied = client.post(f"/v2/models/{MODEL}/infer", json=_json_request(image))
        assert denied.status_code == 401 and denied.json()["code"] == "unauthorized"
        key = {"X-API-Key": "secret"}
        assert client.get(f"/v2/models/{MODEL}", headers=key).status_code == 200
        large = client.post(f"/v2/models/{MODEL}/infer", json=_json_request(image), headers=key)
        assert large.status_code == 413 and large.json()["code"] == "image_too_large"
        three = np.zeros((3, 8, 8, 3), dtype=np.uint8)
        batch = client.post(f"/v2/models/{MODEL}/infer", json=_json_request(three), headers=key)
        assert batch.status_code == 413 and batch.json()["code"] == "batch_too_large"


@pytest.mark.parametrize(
    ("body", "headers", "code"),
    [
        (b"not json", {}, "invalid_inference_request"),
        (b'{"inputs": []}', {}, "invalid_inference_request"),
        (b'{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 2, 2, 3], '
         b'"data": [300, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]}]}', {}, "invalid_inference_request"),
        (b'{"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], '
         b'"data": ["' + base64.b64encode(b"not an image") + b'"]}]}', {}, "invalid_image"),
        (b'{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 2, 2, 3], '
         b'"parameters": {"binary_data_size": 12}}]}' + b"\x00" * 5,
         {"Inference-Header-Content-Length": "106"}, "invalid_inference_request"),
        (b"{}", {"Inference-Header-Content-Length": "999"}, "invalid_inference_request"),
    ],
    ids=["not-json", "no-input", "out-of-range", "undecodable", "short-binary", "bad-length"],
)  # fmt: skip
def test_malformed_requests_are_400(body, headers, code) -> None:
    with make_client() as client:
        response = client.post(
            f"/v2/models/{MODEL}/infer",
            content=body,
            headers={"Content-Type": "application/json", **headers},
        )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == code and body["error"].startswith(f"{code}: ")


def test_clip_models_are_refused_on_v2() -> None:
    with make_client() as client:
        response = client.post("/v2/models/ccnet3d-tiny/infer", json={"inputs": []})
    assert response.status_code == 400
    assert response.json()["code"] == "unsupported_model"


def test_every_v2_error_has_the_protocols_shape() -> None:
    """Unknown routes (404), wrong methods (405), a bad key (401), bad bodies (400, 422):
    ``error`` is a string under /v2; /v1 keeps its ``{"error": {"code", "message"}}``."""
    with make_client(api_key="secret") as client:
        key = {"X-API-Key": "secret"}
        answers = [
            (client.get("/v2/no/such/route", headers=key), 404, "not_found"),
            (client.get("/v2/repository/index", headers=key), 405, "method_not_allowed"),
            (client.get(f"/v2/models/{MODEL}/config"), 401, "unauthorized"),
            (client.get("/v2/models/no-such-model/stats", headers=key), 404, "unknown_model"),
            (
                client.post("/v2/repository/index", content=b"[1]", headers=key),
                400,
                "invalid_request",
            ),
            (
                client.post("/v2/repository/index", content=b" " * 2000, headers=key),
                413,
                "payload_too_large",
            ),
        ]
        for response, status, code in answers:
            body = response.json()
            assert response.status_code == status, response.text
            assert isinstance(body["error"], str) and body["error"].startswith(f"{code}: ")
            assert body["code"] == code
        assert client.get("/v1/no/such/route").json()["error"]["code"] == "not_found"
        ready = client.post("/v2/repository/index", json={"ready": True}, headers=key).json()
        assert ready == [{"name": MODEL, "version": "1", "state": "READY"}]


def test_repository_index_lists_files_that_failed_to_load() -> None:
    """A models-folder file that failed to load is UNAVAILABLE with the reason, unless the
    name still serves (a failed reload keeps the previous version READY)."""
    from ccnet.service.reload import LoadFailure

    with make_client() as client:
        registry = client.app.state.ccnet.registry
        for file in ("broken.pt", f"{MODEL}.pt"):
            failure = LoadFailure(file, "0" * 64, f"ValueError: {file}: not a checkpoint", 0.0)
            registry.record_failure(failure, file)
        index = client.post("/v2/repository/index").json()
    assert [(m["name"], m["state"]) for m in index] == [
        ("broken", "UNAVAILABLE"),
        (MODEL, "READY"),
        ("ccnet3d-tiny", "UNAVAILABLE"),
    ]
    assert index[0]["reason"] == "broken.pt failed to load: ValueError: broken.pt: not a checkpoint"
    assert index[0]["version"] == ""
