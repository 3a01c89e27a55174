"""Precision paths: capability detection, the parity gate, the choice, the thread policy.

The figures asserted are parity (agreement, mIoU), never timings; selection is tested on
hand-made figures. Paths this CPU cannot run natively are skipped, as the service would not
offer them.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from ccnet.inference.backends.threads import ThreadPolicy
from ccnet.inference.demo import BUNDLED_MODELS
from ccnet.inference.options import LoadOptions
from ccnet.inference.precision.cache import GateCache
from ccnet.inference.precision.capabilities import capabilities_from, detect_cpu, parse_cpuinfo
from ccnet.inference.precision.gate import (
    GATE_MAX_MIOU_DROP,
    GATE_MIN_AGREEMENT,
    GateFigures,
    gate_data,
    measure_gate,
)
from ccnet.inference.precision.policy import choose_precision, offered_precisions
from ccnet.inference.precision.select import select_precision
from ccnet.service.core.config import Settings

IMAGE_MODEL = BUNDLED_MODELS[0]

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
processor\t: 1
flags\t\t: fpu
"""
ZEN4 = "model name\t: AMD EPYC 9654\nflags\t\t: avx2 avx512f avx512_bf16 avx512_vnni\n"
HASWELL = "model name\t: Intel(R) Xeon(R) CPU E5-2690 v3\nflags\t\t: sse2 avx avx2 fma\n"


@pytest.fixture(scope="module")
def ort_cache(tmp_path_factory) -> Path:
    """A cache holding the demo model's ONNX export (made once for this module)."""
    pytest.importorskip("onnxruntime")
    from ccnet.export.prepare import prepare_served

    cache = tmp_path_factory.mktemp("ccnet-cache")
    settings = LoadOptions(backend="onnxruntime", cache_dir=cache)
    prepare_served(IMAGE_MODEL, "onnxruntime", settings)
    return cache


def _caps(text: str):
    model, flags = parse_cpuinfo(text)
    return capabilities_from(model, flags, "AVX512" if "avx512f" in flags else "AVX2")


def _figures(name: str, speedup: float, agreement: float = 0.999, miou_drop: float = 0.0):
    return GateFigures(name, agreement, agreement, 80.0, 80.0 - miou_drop, 100.0, 100.0 / speedup)


# ------------------------------------------------------------------------- capabilities


def test_cpuinfo_flags_decide_what_is_offered() -> None:
    amx, zen4, old = _caps(SAPPHIRE_RAPIDS), _caps(ZEN4), _caps(HASWELL)
    assert amx.model.startswith("Intel(R) Xeon(R) Platinum") and amx.amx_bf16 and amx.amx_int8
    assert zen4.avx512_bf16 and not zen4.amx_bf16 and zen4.native_int8
    assert old.flags == [] and not old.native_bf16 and not old.native_int8
    assert offered_precisions("torch", "cpu", amx) == ("fp32", "bf16")
    assert offered_precisions("torch", "cpu", zen4) == ("fp32", "bf16")
    assert offered_precisions("torch", "cpu", old) == ("fp32",)  # emulated bf16 is slower
    assert offered_precisions("onnxruntime", "cpu", amx) == ("fp32", "int8")
    assert offered_precisions("onnxruntime", "cpu", old) == ("fp32",)
    assert offered_precisions("torch", "cuda", old) == ("fp32", "fp16")
    assert offered_precisions("tensorrt", "cuda", amx) == ("fp32",)
    # the cache key separates machines: a gate passed on one says nothing about another
    assert len({amx.key(), zen4.key(), old.key()}) == 3


def test_amx_needs_the_tile_flag_too() -> None:
    caps = _caps("model name\t: X\nflags\t\t: amx_bf16 amx_int8\n")
    assert not caps.amx_bf16 and not caps.amx_int8


def test_this_machine_is_described() -> None:
    cpu = detect_cpu()
    described = cpu.describe()
    assert set(described) >= {"model", "isa", "amx", "avx512_bf16", "vnni", "flags"}
    assert described["isa"] == torch.backends.cpu.get_cpu_capability()


# ---------------------------------------------------------------------------- selection


def test_auto_picks_the_fastest_path_that_passes() -> None:
    figures = {"bf16": _figures("bf16", 3.0), "int8": _figures("int8", 5.0, agreement=0.98)}
    choice = choose_precision("auto", ("fp32", "bf16", "int8"), figures)
    assert choice.precision == "bf16"  # int8 is faster but fails the gate
    assert choice.speedup == pytest.approx(3.0)
    assert choice.warning is None
    assert choice.describe()["gate"]["int8"]["passed"] is False


def test_auto_keeps_fp32_when_nothing_is_clearly_faster_or_everything_fails() -> None:
    slow = choose_precision("auto", ("fp32", "bf16"), {"bf16": _figures("bf16", 1.02)})
    assert slow.precision == "fp32"
    failing = choose_precision(
        "auto", ("fp32", "bf16"), {"bf16": _figures("bf16", 4.0, miou_drop=0.8)}
    )
    assert failing.precision == "fp32"
    assert "mIoU" in failing.reason
    assert choose_precision("auto", ("fp32",), {}).precision == "fp32"


def test_an_explicit_failing_path_is_served_with_the_figures_in_a_warning() -> None:
    choice = choose_precision("int8", ("fp32", "int8"), {"int8": _figures("int8", 2, 0.97)})
    assert choice.precision == "int8"
    assert choice.warning is not None
    assert "97.00 %" in choice.warning and "2.00x" in choice.warning


def test_a_path_not_offered_falls_back_to_fp32_with_a_warning() -> None:
    choice = choose_precision("bf16", ("fp32",), {})
    assert choice.precision == "fp32"
    assert "not offered" in (choice.warning or "")
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("fp8", ("fp32",), {})


def test_auto_on_cuda_keeps_fp16() -> None:
    assert choose_precision("auto", ("fp32", "fp16"), {}).precision == "fp16"


def test_gate_thresholds() -> None:
    assert _figures("bf16", 2, agreement=GATE_MIN_AGREEMENT).passed
    assert not _figures("bf16", 2, agreement=GATE_MIN_AGREEMENT - 1e-4).passed
    assert _figures("bf16", 2, miou_drop=GATE_MAX_MIOU_DROP).passed
    assert not _figures("bf16", 2, miou_drop=GATE_MAX_MIOU_DROP + 0.01).passed
    unlabelled = GateFigures("bf16", 0.999, 0.999, None, None, 1.0, 1.0)
    assert unlabelled.passed  # no validation labels: agreement alone decides
    assert not GateFigures("bf16", float("nan"), 1.0, None, None, 1.0, 1.0).passed


def test_the_gate_result_is_cached_and_not_measured_again(tmp_path) -> None:
    calls = []

    def runners(paths):
        calls.append(list(paths))
        reference = lambda batch: np.stack([batch[:, 0], batch[:, 1]], axis=1)  # noqa: E731
        return reference, {"bf16": reference}

    def tiny_data():
        data = gate_data("image", 6, {"name": "ccnet synth", "seed": 0, "size": 32})
        data.photographs = data.photographs[:1]
        data.validation, data.labels, data.num_classes = data.validation[:2], None, 2
        return data

    cache = GateCache(tmp_path, "model-key")
    kwargs = dict(runners=runners, data=tiny_data, cache=cache, name="m")
    first = select_precision("auto", ("fp32", "bf16"), **kwargs)
    assert calls == [["bf16"]] and cache.path.is_file()
    assert first.figures["bf16"].photo_agreement == 1.0
    second = select_precision("bf16", ("fp32", "bf16"), **kwargs)
    assert calls == [["bf16"]], "the cached figures were used"
    assert second.figures["bf16"] == first.figures["bf16"]
    assert select_precision("fp32", ("fp32", "bf16"), **kwargs).precision == "fp32"


def test_a_noise_sized_win_keeps_fp32() -> None:
    """A 5 % bar let timing noise flip the same model between bf16 and fp32 across starts."""
    noisy = choose_precision("auto", ("fp32", "bf16"), {"bf16": _figures("bf16", 1.07)})
    assert noisy.precision == "fp32"
    clear = choose_precision("auto", ("fp32", "bf16"), {"bf16": _figures("bf16", 1.3)})
    assert clear.precision == "bf16"


def test_measuring_is_announced_and_timed_as_the_best_of_rounds(tmp_path, caplog) -> None:
    """A fresh cache measured for ~12 s without a log line; and one slow run (another
    process busy) no longer counts: each path's time is its best interleaved round."""
    from ccnet.inference.precision.gate import TIMING_ROUNDS

    calls = {"fp32": 0, "bf16": 0}

    def counted(name):
        def run(batch):
            calls[name] += 1
            return np.stack([batch[:, 0], batch[:, 1]], axis=1)

        return run

    def runners(paths):
        return counted("fp32"), {"bf16": counted("bf16")}

    def tiny_data():
        data = gate_data("image", 6, {"name": "ccnet synth", "seed": 0, "size": 32})
        data.photographs = data.photographs[:2]
        data.validation, data.labels, data.num_classes = data.validation[:1], None, 2
        return data

    caplog.set_level("INFO", logger="ccnet")
    cache = GateCache(tmp_path, "model-key")
    select_precision(
        "auto", ("fp32", "bf16"), runners=runners, data=tiny_data, cache=cache, name="m"
    )
    messages = [r.getMessage() for r in caplog.records]
    announce = next(i for i, m in enumerate(messages) if "measuring fp32 against bf16" in m)
    measured = next(i for i, m in enumerate(messages) if "measured in" in m)
    assert announce < measured and str(cache.path) in messages[announce]
    # warm-up + rounds × photographs + validation, for each path
    assert calls["bf16"] == 1 + TIMING_ROUNDS * 2 + 1 and TIMING_ROUNDS >= 3


def test_quantizer_advice_on_the_root_logger_is_held_back(capsys) -> None:
    """Serving an .onnx printed onnxruntime's "consider pre-processing" warning (twice)."""
    import logging

    from ccnet.inference.backends.quantize import _quiet_quantizer

    root = logging.getLogger()
    handlers = list(root.handlers)
    advice = compile(
        "import logging\nlogging.warning('Please consider to run pre-processing')",
        "/x/site-packages/onnxruntime/quantization/quantize.py",
        "exec",
    )
    with _quiet_quantizer():
        exec(advice, {})
    assert root.handlers == handlers  # no stderr handler installed by basicConfig
    assert "pre-processing" not in capsys.readouterr().err


# ------------------------------------------------------------------- gate data & parity


def test_gate_rebuilds_the_demo_validation_split_exactly(tmp_path) -> None:
    from ccnet.training.synth import generate

    generate(tmp_path, "images", 1, n_val=3, seed=5, size=48, progress=False)
    data = gate_data("image", 6, {"name": "ccnet synth", "seed": 5, "size": 48})
    from PIL import Image

    for index in range(3):
        image = np.asarray(Image.open(tmp_path / "val" / "images" / f"{index:06d}.png"))
        mask = np.asarray(Image.open(tmp_path / "val" / "masks" / f"{index:06d}.png"))
        np.testing.assert_array_equal(np.moveaxis(data.validation[index][0], 0, -1), image)
        np.testing.assert_array_equal(data.labels[index][0], mask)
    assert len(data.photographs) == 4 and data.photographs[0].shape[1] == 3
    assert gate_data("image", 19, None).labels is None  # not the model's data: no mIoU


def test_measure_gate_detects_a_broken_path() -> None:
    data = gate_data("image", 6, {"name": "ccnet synth", "seed": 0, "size": 32})
    data.validation, data.labels = data.validation[:4], data.labels[:4]
    rng = np.random.default_rng(0)

    def reference(batch):
        r, g, b = batch[:, 0], batch[:, 1], batch[:, 2]
        # integer pixels + distinct tenths: no two classes ever tie
        offsets = np.arange(6, dtype=np.float32)[None, :, None, None] / 10
        return np.stack([r, g, b, r - g, g - b, b - r], axis=1) + offsets

    def swapped(batch):  # classes 0 and 1 exchanged: wrong wherever either wins
        logits = reference(batch)
        return logits[:, [1, 0, 2, 3, 4, 5]]

    def noisy(batch):
        return reference(batch) + rng.normal(0, 1e-3, (1, 6, *batch.shape[2:]))

    candidates = {"same": reference, "swapped": swapped, "noisy": noisy}
    figures = measure_gate(reference, candidates, data)
    assert figures["same"].passed and figures["same"].photo_agreement == 1.0
    assert figures["same"].miou == figures["same"].miou_fp32
    assert not figures["swapped"].passed
    assert figures["noisy"].photo_agreement > 0.99


@pytest.mark.skipif(not detect_cpu().native_bf16, reason="no AVX512-BF16 or AMX: bf16 not offered")
def test_bf16_on_the_demo_model_passes_the_parity_gate(tmp_path) -> None:
    from ccnet.inference.backends import load_backend

    # one thread: the figures do not depend on it, and a shared CI machine stays responsive
    settings = LoadOptions(backend="torch", precision="bf16", cache_dir=tmp_path, threads=1)
    backend = load_backend(None, IMAGE_MODEL, settings)
    figures = backend.precision_choice.figures["bf16"]
    assert figures.photo_agreement >= GATE_MIN_AGREEMENT, figures.summary()
    assert figures.val_agreement >= GATE_MIN_AGREEMENT, figures.summary()
    assert figures.miou_fp32 - figures.miou <= GATE_MAX_MIOU_DROP, figures.summary()
    assert figures.miou_fp32 > 70  # the demo model on its own validation scenes
    assert backend.precision == "bf16" and backend.precision_choice.warning is None
    assert list((tmp_path / "precision").glob("*.json")), "the gate was cached"


def test_auto_on_torch_never_serves_a_failing_path(tmp_path) -> None:
    from ccnet.inference.backends import load_backend

    settings = LoadOptions(backend="torch", precision="auto", cache_dir=tmp_path, threads=1)
    backend = load_backend(None, IMAGE_MODEL, settings)
    choice = backend.precision_choice
    assert choice.offered == offered_precisions("torch", "cpu")
    chosen = choice.figures.get(backend.precision)
    assert backend.precision == "fp32" or (chosen is not None and chosen.passed)


@pytest.mark.skipif(not detect_cpu().native_int8, reason="no VNNI: int8 not offered")
def test_int8_onnxruntime_model_is_quantized_and_gated(ort_cache, caplog) -> None:
    onnx = pytest.importorskip("onnx")
    from ccnet.inference.backends import load_backend

    tmp_path = ort_cache
    settings = LoadOptions(backend="onnxruntime", precision="int8", cache_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="ccnet.inference"):
        backend = load_backend(None, IMAGE_MODEL, settings)
    assert backend.precision == "int8"
    (int8_file,) = tmp_path.glob("int8/*/model.onnx")
    graph = onnx.load(int8_file).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("QuantizeLinear") >= 10, "the convolutions were quantized"
    # the attention stays float: its inputs are dequantized tensors, not int8 ones
    attention = [node for node in graph.node if node.op_type == "CrissCrossAttention"]
    assert attention and all(node.domain == "ccnet" for node in attention)
    figures = backend.precision_choice.figures["int8"]
    # int8 must at least agree with fp32 on the model's own validation scenes
    assert figures.val_agreement >= 0.99, figures.summary()
    assert figures.miou_fp32 - figures.miou <= 2 * GATE_MAX_MIOU_DROP, figures.summary()
    if not figures.passed:
        assert any("fails the parity gate" in r.getMessage() for r in caplog.records)
        auto = LoadOptions(backend="onnxruntime", cache_dir=tmp_path)
        assert load_backend(None, IMAGE_MODEL, auto).precision == "fp32"


# ------------------------------------------------------------------------ thread policy


def test_thread_policy_gives_a_lone_request_every_core() -> None:
    policy = ThreadPolicy(4)
    assert policy.widths == (1, 2, 4)
    assert policy.threads_for(running=1, waiting=0) == 4
    assert policy.threads_for(running=2, waiting=0) == 2
    assert policy.threads_for(running=1, waiting=7) == 1
    assert ThreadPolicy(4, fixed=3).threads_for(1, 0) == 3
    assert ThreadPolicy(4, fixed=3).widths == (3,)
    waiting = [0]
    policy.bind_backlog(lambda: waiting[0])
    with policy.slot() as alone:
        assert alone == 4
        with policy.slot() as second:
            assert second == 2
    waiting[0] = 3
    with policy.slot() as busy:
        assert busy == 1
    with pytest.raises(ValueError, match="cores must be >= 1"):
        ThreadPolicy(0)


class _Recorder(torch.nn.Module):
    """Records PyTorch's thread count as each forward pass sees it, and can hold a pass."""

    def __init__(self, barrier: threading.Barrier | None = None) -> None:
        super().__init__()
        self.seen: list[int] = []
        self.barrier = barrier
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        if self.barrier is not None:
            self.barrier.wait(timeout=10)
        return self.conv(x)


def _torch_backend(module: torch.nn.Module, policy: ThreadPolicy):
    from ccnet.inference.backends.base import ModelInfo
    from ccnet.inference.backends.torch_backend import TorchBackend

    info = ModelInfo("rec", "image", ["a", "b"], [[0, 0, 0], [1, 1, 1]])
    meta = {"normalization": {"mean": [0.0] * 3, "std": [1.0] * 3}}
    return TorchBackend(info, module, meta, device="cpu", thread_policy=policy)


def test_torch_backend_applies_the_policy_per_calling_thread() -> None:
    batch = np.zeros((1, 3, 4, 4), np.float32)
    lone = _Recorder()
    _torch_backend(lone, ThreadPolicy(3)).infer(batch)
    assert lone.seen == [3]

    barrier = threading.Barrier(2)
    held = _Recorder(barrier)
    backend = _torch_backend(held, ThreadPolicy(4))
    first = threading.Thread(target=backend.infer, args=(batch,))
    first.start()
    while not held.seen:  # the first pass has started (alone: every core)
        threading.Event().wait(0.01)
    second = threading.Thread(target=backend.infer, args=(batch,))
    second.start()
    first.join(10)
    second.join(10)
    assert held.seen == [4, 2]


def test_bf16_is_autocast_on_the_same_weights() -> None:
    module = _Recorder()
    backend = _torch_backend(module, ThreadPolicy(1))
    fp32, runners = backend.precision_runners(["bf16"])
    batch = np.random.default_rng(0).normal(size=(1, 3, 8, 8)).astype(np.float32)
    reference = fp32(batch)
    low = runners["bf16"](batch)
    assert low.dtype == np.float32 and low.shape == reference.shape
    assert not np.array_equal(low, reference)  # really computed in bf16
    np.testing.assert_allclose(low, reference, rtol=0.05, atol=0.05)
    assert next(module.parameters()).dtype == torch.float32
    with pytest.raises(Exception, match="fp16"):
        backend.use_precision("fp16")  # CUDA only


def test_onnxruntime_backend_keeps_one_session_per_thread_count(ort_cache) -> None:
    from ccnet.inference.backends import load_backend

    settings = LoadOptions(backend="onnxruntime", precision="fp32", cache_dir=ort_cache)
    backend = load_backend(None, IMAGE_MODEL, settings)
    policy = backend.thread_policy
    assert policy is not None
    assert {key for key in backend._sessions} == {("fp32", width) for width in policy.widths}
    batch = np.full((1, 3, 32, 32), 100.0, np.float32)
    outputs = []
    for width in policy.widths:  # every session computes the same logits
        outputs.append(backend._run(backend._session("fp32", width), batch))
    for output in outputs[1:]:
        np.testing.assert_allclose(output, outputs[0], rtol=1e-4, atol=1e-4)


def test_settings_precision_is_validated() -> None:
    assert Settings().precision == "auto"
    with pytest.raises(ValueError, match="precision"):
        Settings(precision="fp8")


def test_models_endpoint_and_metrics_report_the_precision() -> None:
    from ccnet.inference.options import PRECISIONS
    from ccnet.service.cli import PRECISIONS as _PRECISIONS
    from tests.service.conftest import make_client

    assert _PRECISIONS == PRECISIONS  # the CLI's choices are the setting's
    with make_client(precision="auto") as client:  # the default cache: gated once per machine
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        entry = models["ccnet-tiny"]["precision"]
        assert entry["requested"] == "auto"
        assert entry["chosen"] in entry["offered"]
        assert entry["cpu"]["avx512_bf16"] == detect_cpu().avx512_bf16
        assert entry["cpu"]["amx"] == (detect_cpu().amx_bf16 or detect_cpu().amx_int8)
        if entry["chosen"] != "fp32":
            assert entry["gate"][entry["chosen"]]["passed"] is True
            assert entry["speedup"] == entry["gate"][entry["chosen"]]["speedup"]
        metrics = client.get("/metrics").text
        info = [line for line in metrics.splitlines() if "ccnet_model_precision_info{" in line]
        assert any(
            'model="ccnet-tiny"' in line and f'precision="{entry["chosen"]}"' in line
            for line in info
        ), info
        assert "ccnet_model_precision_speedup{" in metrics


def test_evaluate_resolves_its_precision_like_the_service(tmp_path) -> None:
    from ccnet.inference.precision.policy import autocast
    from ccnet.inference.precision.select import resolve_checkpoint_precision
    from ccnet.model import load_checkpoint

    model, meta = load_checkpoint(IMAGE_MODEL)
    with pytest.raises(ValueError, match=r"ccnet-tiny\.pt: int8 runs on ONNX Runtime"):
        resolve_checkpoint_precision("int8", IMAGE_MODEL, model, meta, "cpu", tmp_path)
    assert resolve_checkpoint_precision("fp32", IMAGE_MODEL, model, meta, "cpu", tmp_path) == (
        "fp32"
    )
    chosen = resolve_checkpoint_precision("auto", IMAGE_MODEL, model, meta, "cpu", tmp_path)
    assert chosen in offered_precisions("torch", "cpu")
    with autocast("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu")
    with autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")


def test_without_the_gate_data_auto_stays_fp32() -> None:
    def missing():
        raise ImportError("No module named 'skimage'")

    def runners(paths):
        raise AssertionError("nothing is measured without data")

    kwargs = dict(runners=runners, data=missing, cache=None, name="m")
    auto = select_precision("auto", ("fp32", "bf16"), **kwargs)
    assert auto.precision == "fp32" and "skimage" in auto.reason
    explicit = select_precision("bf16", ("fp32", "bf16"), **kwargs)
    assert explicit.precision == "bf16" and "cannot run" in (explicit.warning or "")
