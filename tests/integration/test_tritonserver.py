"""The real ``tritonserver`` serves our ONNX models through the Python backend and ensembles.

A tiny ranker, ``score = sigmoid(features @ w + b)``, is written to a local-flavour repository
together with an ensemble wrapping it; one server, started once on free ports, serves the
module. Tests that need a broken model start servers of their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc.aio as grpcclient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from benchmarks.harness.scenarios import tiny_ranker_onnx
from gateway.stages.rank import RankerFailure, TritonRanker
from infra.local.tritonserver import (
    TritonServer,
    TritonServerError,
    TritonServerOptions,
    prepare_backend_directory,
    tritonserver_command,
)
from triton_models import repository as repo
from triton_models.ranker_repositories import ServingOptions, write_ranker

pytestmark = pytest.mark.integration

StartTriton = Callable[..., TritonServer]  # the start_tritonserver fixture

FEATURES = 8
MODEL = "ranker"
ENSEMBLE = "ranker_ensemble"
SLOW_QUEUE = "ranker_slow_queue"
"""Holds a lone request 300 ms in its queue, waiting for a batch."""
SERVED = "ranker_served"
"""An ensemble configured as `make models` configures the real rankers (ranker_repositories)."""
MAX_BATCH = 1024

FEATURES_SPEC = repo.TensorSpec("features", np.float32, (FEATURES,))
SCORE_SPEC = repo.TensorSpec("score", np.float32, (1,))


def _ranker_onnx() -> bytes:
    """features [B, F] float32 -> score [B, 1] = sigmoid(features @ w + b), B dynamic."""
    rng = np.random.default_rng(7)
    weights = rng.normal(size=(FEATURES, 1)).astype(np.float32)
    bias = np.array([0.25], dtype=np.float32)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", ["features", "w"], ["logit_raw"]),
            helper.make_node("Add", ["logit_raw", "b"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["score"]),
        ],
        name="tiny_ranker",
        inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURES])],
        outputs=[helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # what onnxruntime releases of the last years all read
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _ranker_spec(name: str = MODEL, *, input_name: str = "features") -> repo.OnnxModelSpec:
    return repo.OnnxModelSpec(
        name=name,
        inputs=(repo.TensorSpec(input_name, np.float32, (FEATURES,)),),
        outputs=(SCORE_SPEC,),
        max_batch_size=MAX_BATCH,
        # A long enough window that concurrent requests meet in the queue on a busy machine.
        dynamic_batching=repo.DynamicBatching(
            preferred_batch_size=(64, 256), max_queue_delay_microseconds=20_000
        ),
        instance_count=1,
        intra_op_threads=1,
    )


@pytest.fixture(scope="module")
def ranker_onnx() -> bytes:
    return _ranker_onnx()


@pytest.fixture(scope="module")
def model_repository(tmp_path_factory: pytest.TempPathFactory, ranker_onnx: bytes) -> Path:
    root = tmp_path_factory.mktemp("model_repository")
    repo.write_onnx_model(
        root,
        _ranker_spec(),
        ranker_onnx,
        flavour=repo.Flavour.LOCAL,
        metadata={"trained_on": "tests", "features": FEATURES},
    )
    repo.write_ensemble(
        root,
        repo.EnsembleSpec(
            name=ENSEMBLE,
            inputs=(FEATURES_SPEC,),
            outputs=(SCORE_SPEC,),
            steps=(
                repo.EnsembleStep(
                    model_name=MODEL,
                    input_map={"features": "features"},
                    output_map={"score": "score"},
                ),
            ),
            max_batch_size=MAX_BATCH,
        ),
    )
    slow = dataclasses.replace(
        _ranker_spec(SLOW_QUEUE),
        dynamic_batching=repo.DynamicBatching(
            preferred_batch_size=(MAX_BATCH,),
            max_queue_delay_microseconds=300_000,
        ),
    )
    repo.write_onnx_model(root, slow, ranker_onnx, flavour=repo.Flavour.LOCAL)
    onnx_path = root.parent / "ranker.onnx"
    # A hidden layer of 1,024 gives a real model's cost: about a millisecond for 500 rows.
    onnx_path.write_bytes(tiny_ranker_onnx(FEATURES, hidden=1024, seed=11))
    write_ranker(root, SERVED, onnx_path, FEATURES, {}, ServingOptions(), repo.Flavour.LOCAL)
    return root


@pytest.fixture(scope="module")
def triton(start_tritonserver: StartTriton, model_repository: Path) -> Iterator[TritonServer]:
    server = start_tritonserver(model_repository, model_control_mode="explicit", load_models=("*",))
    yield server
    server.stop()


@pytest.fixture
async def client(triton: TritonServer) -> AsyncIterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        yield client
    finally:
        await client.close()


def _reference_scores(onnx_bytes: bytes, features: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (scores,) = session.run(["score"], {"features": features})
    return np.asarray(scores)


async def _infer(
    client: grpcclient.InferenceServerClient, model: str, features: npt.NDArray[np.float32]
) -> npt.NDArray[Any]:
    tensor = grpcclient.InferInput("features", list(features.shape), FEATURES_SPEC.wire_type)
    tensor.set_data_from_numpy(features)
    result = await client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput("score")])
    return np.asarray(result.as_numpy("score"))


async def _stats(client: grpcclient.InferenceServerClient, model: str) -> dict[str, Any]:
    response = await client.get_inference_statistics(
        model_name=model, model_version="1", as_json=True
    )
    (stats,) = response["model_stats"]
    return dict(stats)


def _batch_counts(stats: dict[str, Any]) -> dict[int, int]:
    """Executions per batch size, from a model's cumulative statistics."""
    return {
        int(entry["batch_size"]): int(entry["compute_infer"]["count"])
        for entry in stats.get("batch_stats", [])
    }


def test_command_has_what_the_wheel_needs(tmp_path: Path) -> None:
    command = tritonserver_command(TritonServerOptions(model_repository=tmp_path))
    backend_dir = Path(
        next(a for a in command.argv if a.startswith("--backend-directory=")).split("=", 1)[1]
    )
    python_backend = backend_dir / "python"
    assert (python_backend / "libtriton_python.so").is_file()
    assert (python_backend / "triton_python_backend_stub").is_file()
    assert "nvidia_pytriton.libs" in command.env["LD_LIBRARY_PATH"]
    assert command.env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert "--http-port=8000" in command.argv
    assert "--grpc-port=8001" in command.argv
    assert "--metrics-port=8002" in command.argv
    # Preparing again is a no-op that yields the same directory.
    assert prepare_backend_directory() == backend_dir


def test_module_entry_point_prints_the_command(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.local.tritonserver",
            "--model-repository",
            str(tmp_path),
            "--model-control-mode=poll",
            "--repository-poll-secs=3",
            "--print-command",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = completed.stdout.strip()
    assert line.startswith("env LD_LIBRARY_PATH=")
    assert "--model-control-mode=poll" in line
    assert "--repository-poll-secs=3" in line
    assert f"--model-repository={tmp_path.resolve()}" in line


async def test_every_model_is_ready(
    client: grpcclient.InferenceServerClient, model_repository: Path
) -> None:
    version = model_repository / MODEL / "1"
    assert {"metadata.json", "model.onnx", "model.py"} <= {p.name for p in version.iterdir()}
    assert repo.read_version_metadata(model_repository / MODEL, 1)["features"] == FEATURES
    assert (model_repository / ENSEMBLE / "1").is_dir()

    index = await client.get_model_repository_index(as_json=True)
    states = {model["name"]: model.get("state") for model in index["models"]}
    assert {MODEL, ENSEMBLE} <= set(states)
    assert states[MODEL] == "READY"
    assert states[ENSEMBLE] == "READY"
    assert await client.is_server_ready()
    assert await client.is_model_ready(MODEL)
    assert await client.is_model_ready(ENSEMBLE)


async def test_ensemble_scores_match_onnxruntime(
    client: grpcclient.InferenceServerClient, ranker_onnx: bytes
) -> None:
    features = np.random.default_rng(1).normal(size=(500, FEATURES)).astype(np.float32)

    scores = await _infer(client, ENSEMBLE, features)

    assert scores.shape == (500, 1)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, _reference_scores(ranker_onnx, features), rtol=0, atol=1e-5)


TRANSPORTS = pytest.mark.parametrize("over_http", [False, True], ids=["grpc", "http"])


def _http(triton: TritonServer, over_http: bool) -> str | None:
    return triton.http_url if over_http else None


@TRANSPORTS
async def test_the_gateways_ranker_scores_what_onnxruntime_scores(
    triton: TritonServer,
    client: grpcclient.InferenceServerClient,
    ranker_onnx: bytes,
    over_http: bool,
) -> None:
    # The ranker encodes its requests itself (InferRequestEncoder over gRPC, HttpInferEncoder
    # over HTTP): Triton must read them as it reads tritonclient's, in rows of odd sizes too.
    rng = np.random.default_rng(4)
    ranker = TritonRanker(triton.grpc_url, http_url=_http(triton, over_http))
    try:
        scored = [
            (features, await ranker.score(ENSEMBLE, version, features, 5.0))
            for rows, version in ((550, 0), (1, 1), (MAX_BATCH, 1))
            for features in [rng.normal(size=(rows, FEATURES)).astype(np.float32)]
        ]
        config = (await client.get_model_config(ENSEMBLE, as_json=True))["config"]
        ready = await ranker.ready_versions()
    finally:
        await ranker.close()

    for features, result in scored:
        assert result.scores.shape == (len(features),)
        assert result.model_version == f"{ENSEMBLE}/1"
        expected = _reference_scores(ranker_onnx, features).reshape(-1)
        np.testing.assert_allclose(result.scores, expected, rtol=0, atol=1e-5)
    assert config["name"] == ENSEMBLE
    assert config["platform"] == "ensemble"
    assert config["ensemble_scheduling"]["step"][0]["model_name"] == MODEL
    assert ready[ENSEMBLE] == ["1"]
    assert ready[MODEL] == ["1"]


async def test_dynamic_batching_merges_concurrent_requests(
    client: grpcclient.InferenceServerClient,
    ranker_onnx: bytes,
    record_property: Any,
) -> None:
    requests, rows = 64, 4
    rng = np.random.default_rng(2)
    batches = [rng.normal(size=(rows, FEATURES)).astype(np.float32) for _ in range(requests)]
    before = await _stats(client, MODEL)

    results = await asyncio.gather(*(_infer(client, ENSEMBLE, batch) for batch in batches))

    after = await _stats(client, MODEL)
    for batch, scores in zip(batches, results, strict=True):
        np.testing.assert_allclose(scores, _reference_scores(ranker_onnx, batch), atol=1e-5)
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    before_sizes, after_sizes = _batch_counts(before), _batch_counts(after)
    sizes = {
        size: count - before_sizes.get(size, 0)
        for size, count in sorted(after_sizes.items())
        if count > before_sizes.get(size, 0)
    }
    record_property(
        "triton_batching",
        {"requests": requests, "rows": rows, "executions": executions, "batch_sizes": sizes},
    )
    print(
        f"dynamic batching: {requests} requests x {rows} rows -> {executions} executions; "
        f"executed batch sizes (size: count) {sizes}"
    )
    assert inferences == requests * rows
    # Each execution ran several requests' rows at once: the batcher merged them.
    assert executions < requests, f"no merging: {executions} executions, batch sizes {sizes}"
    assert max(sizes) > rows


async def test_tensor_name_mismatch_stops_the_model_from_loading(
    start_tritonserver: StartTriton, tmp_path: Path, ranker_onnx: bytes
) -> None:
    # Its own server: under strict readiness a failed model leaves the server not ready.
    name = "ranker_bad_names"
    repo.write_onnx_model(
        tmp_path, _ranker_spec(name, input_name="feats"), ranker_onnx, flavour=repo.Flavour.LOCAL
    )
    server = start_tritonserver(tmp_path, model_control_mode="explicit")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as failure:
            await client.load_model(name)

        message = str(failure.value)
        assert "config.pbtxt does not match model.onnx" in message
        assert "input 'feats' is in config.pbtxt but model.onnx has inputs ['features']" in message
        assert "input 'features' of model.onnx is missing from config.pbtxt" in message
        assert not await client.is_model_ready(name)
        (entry,) = (await client.get_model_repository_index(as_json=True))["models"]
        assert entry["name"] == name
        assert entry["state"] == "UNAVAILABLE"
        assert "input 'feats'" in entry["reason"]
        assert not await client.is_server_ready()
    finally:
        await client.close()
        server.stop()


def test_failed_start_reports_the_server_log(tmp_path: Path, ranker_onnx: bytes) -> None:
    root = tmp_path / "repository"
    repo.write_onnx_model(
        root, _ranker_spec("broken", input_name="feats"), ranker_onnx, flavour=repo.Flavour.LOCAL
    )
    server = TritonServer(
        TritonServerOptions(model_repository=root).with_free_ports(),
        log_path=tmp_path / "tritonserver.log",
        startup_timeout_s=120,
    )

    with pytest.raises(TritonServerError) as failure:
        server.start()

    assert "exited" in str(failure.value)
    assert "input 'feats' is in config.pbtxt" in str(failure.value)
    assert not server.is_running()


def test_production_flavour_config_says_onnxruntime(tmp_path: Path, ranker_onnx: bytes) -> None:
    spec = repo.OnnxModelSpec(
        name=MODEL,
        inputs=(FEATURES_SPEC,),
        outputs=(SCORE_SPEC,),
        max_batch_size=MAX_BATCH,
        dynamic_batching=repo.DynamicBatching((64, 256), 2_000),
        instance_count=2,
        intra_op_threads=3,
        version_policy=repo.SpecificVersions((1, 2)),
        parameters={"ranker_variant": "b"},
    )

    model_dir = repo.write_onnx_model(
        tmp_path, spec, ranker_onnx, flavour=repo.Flavour.PRODUCTION, version=2, metadata={"a": 1}
    )

    config = repo.parse_config((model_dir / "config.pbtxt").read_text())
    assert config.backend == "onnxruntime"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == MAX_BATCH
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("features", model_config_pb2.TYPE_FP32, [FEATURES])
    ]
    assert list(config.dynamic_batching.preferred_batch_size) == [64, 256]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2_000
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert list(config.version_policy.specific.versions) == [1, 2]
    assert config.parameters["intra_op_thread_count"].string_value == "3"
    assert config.parameters["ranker_variant"].string_value == "b"
    assert sorted(p.name for p in (model_dir / "2").iterdir()) == ["metadata.json", "model.onnx"]
    assert json.loads((model_dir / "2" / "metadata.json").read_text()) == {"a": 1}
    assert repo.read_version_metadata(model_dir, 2) == {"a": 1}
    # The same spec, read back from the ONNX graph itself.
    inputs, outputs = repo.tensor_specs_from_onnx(onnx.load_from_string(ranker_onnx))
    assert (inputs, outputs) == ((FEATURES_SPEC,), (SCORE_SPEC,))


# The gateway's TritonRanker against the real server. tritonserver 2.51 died with SIGSEGV
# within seconds when calls were cancelled under load (triton-inference-server/server#7368);
# the ranker never cancels a call, and Triton drops those queued past their budget.


async def _until_answered(ranker: TritonRanker) -> None:
    unanswered = await ranker.drain(10.0)
    assert unanswered == 0, f"{unanswered} calls never answered"


async def _successes_and_failures(
    client: grpcclient.InferenceServerClient, model: str
) -> tuple[int, int]:
    stats = (await _stats(client, model))["inference_stats"]
    return int(stats["success"].get("count", 0)), int(stats["fail"].get("count", 0))


@TRANSPORTS
async def test_ranker_timeouts_under_overload_leave_triton_running(
    triton: TritonServer, over_http: bool
) -> None:
    # No breaker, no allowance and no batching: every call reaches Triton, however many are
    # unanswered.
    ranker = TritonRanker(
        triton.grpc_url,
        failure_threshold=1_000_000,
        max_abandoned_calls=1_000_000,
        max_calls_in_flight=1_000_000,
        http_url=_http(triton, over_http),
    )
    features = np.random.default_rng(3).normal(size=(500, FEATURES)).astype(np.float32)
    callers = 64

    async def timed_call() -> float:
        started = time.perf_counter()
        await ranker.score(SERVED, 0, features, 5.0)
        return time.perf_counter() - started

    outcomes: dict[str, int] = {}

    async def caller(seed: int, typical_s: float) -> None:
        rng = random.Random(seed)
        stop = time.monotonic() + 4.0
        while time.monotonic() < stop:
            # Budgets around the typical latency: many calls end just as their budget does,
            # the moment a cancellation used to race the response inside Triton.
            budget = rng.uniform(0.3, 1.5) * typical_s
            try:
                scored = await ranker.score(SERVED, 0, features, budget)
                assert scored.scores.shape == (500,)
                outcome = "scored"
            except RankerFailure as failure:
                outcome = failure.reason
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    try:
        typical_s = float(np.median(await asyncio.gather(*(timed_call() for _ in range(callers)))))
        await asyncio.gather(*(caller(seed, typical_s) for seed in range(callers)))
        await _until_answered(ranker)
    finally:
        await ranker.close()

    assert triton.is_running(), triton.log_tail()
    assert "Signal (11)" not in triton.log_tail(200)
    assert set(outcomes) <= {"scored", "RANKER_TIMEOUT"}, outcomes
    assert outcomes.get("RANKER_TIMEOUT", 0) > 0 and outcomes.get("scored", 0) > 0, outcomes


@TRANSPORTS
async def test_a_timed_out_call_is_left_to_finish(
    triton: TritonServer, client: grpcclient.InferenceServerClient, over_http: bool
) -> None:
    ranker = TritonRanker(triton.grpc_url, http_url=_http(triton, over_http))
    features = np.ones((4, FEATURES), dtype=np.float32)
    before = await _successes_and_failures(client, SLOW_QUEUE)
    try:
        started = time.perf_counter()
        with pytest.raises(RankerFailure) as failure:
            await ranker.score(SLOW_QUEUE, 0, features, 0.05)
        waited = time.perf_counter() - started
        assert failure.value.reason == "RANKER_TIMEOUT"
        assert ranker.abandoned_calls == 1
        await _until_answered(ranker)
    finally:
        await ranker.close()

    assert waited < 0.25, f"the ranker waited {waited:.3f} s on a 50 ms budget"
    # The gateway gave up at 50 ms; Triton still ran the call to its end, not cancelled.
    after = await _successes_and_failures(client, SLOW_QUEUE)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 0)


@TRANSPORTS
async def test_a_cancelled_caller_leaves_the_call_to_finish(
    triton: TritonServer, client: grpcclient.InferenceServerClient, over_http: bool
) -> None:
    ranker = TritonRanker(triton.grpc_url, max_abandoned_calls=1, http_url=_http(triton, over_http))
    features = np.ones((4, FEATURES), dtype=np.float32)
    before = await _successes_and_failures(client, SLOW_QUEUE)
    try:
        caller = asyncio.create_task(ranker.score(SLOW_QUEUE, 0, features, 2.0))
        await asyncio.sleep(0.05)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert ranker.abandoned_calls == 1

        # The unanswered call fills the allowance: the next fails at once, without Triton.
        started = time.perf_counter()
        with pytest.raises(RankerFailure) as failure:
            await ranker.score(SLOW_QUEUE, 0, features, 2.0)
        assert time.perf_counter() - started < 0.05
        assert failure.value.reason == "RANKER_UNAVAILABLE"
        assert "1 earlier calls to Triton are still unanswered" in str(failure.value)

        await _until_answered(ranker)
        scored = await ranker.score(ENSEMBLE, 0, features, 2.0)
    finally:
        await ranker.close()

    assert scored.scores.shape == (4,)
    after = await _successes_and_failures(client, SLOW_QUEUE)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 0)  # ran to the end, not cancelled


async def test_over_http_an_unknown_model_or_version_fails_with_tritons_message(
    triton: TritonServer,
) -> None:
    ranker = TritonRanker(triton.grpc_url, http_url=triton.http_url)
    features = np.ones((4, FEATURES), dtype=np.float32)
    try:
        with pytest.raises(RankerFailure, match="HTTP 404: Request for unknown model: 'nope'"):
            await ranker.score("nope", 0, features, 5.0)
        with pytest.raises(RankerFailure, match=f"'{ENSEMBLE}' version 9 is not found"):
            await ranker.score(ENSEMBLE, 9, features, 5.0)
        # the connection that carried the errors still serves
        assert (await ranker.score(ENSEMBLE, 1, features, 5.0)).scores.shape == (4,)
    finally:
        await ranker.close()
