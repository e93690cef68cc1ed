"""Model versions added to a live repository while a gateway serves (issue #10).

tritonserver runs in poll mode (repository polled every second) on a private copy of the
built repository; an in-process gateway polls Triton's READY versions every second
(prediction cache off, so every answer is a real Triton call), while control-arm users send a
Recommend every 100 ms.

Error budgets:
- a good version 2 (model and ensemble): every control answer reports `ranker_v2/2` within
  20 s; zero failed requests; degraded answers (RANKER_UNAVAILABLE, popularity fallback) only
  inside one window no longer than the gateway's poll interval plus 2 s (Triton keeps two
  versions loaded, so this is a ceiling, not the expected case);
- a version 2 whose model.onnx is random bytes: the gateway keeps serving `ranker_v2/1`, zero
  failed requests, zero degraded answers;
- a version 2 whose metadata.json lists the features in another order: xfail (strict), since
  the ensemble runs the newest loaded ONNX version and the gateway can only stop routing to
  it (the fallback answers, flagged) until the version is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc.aio
from recsys.v1 import recommendation_pb2 as pb
from recsys.v1 import recommendation_pb2_grpc as pb_grpc

from gateway.config import Settings
from tests.integration.conftest import StartTriton
from tests.integration.faults.conftest import in_process_gateway

pytestmark = pytest.mark.integration
POLL_S = 1.0
SWITCH_BUDGET_S = 20.0
HOLD_S = 6.0  # several Triton and gateway poll rounds after a bad version lands
SOURCE = Path(__file__).resolve().parents[3] / "build" / "triton" / "local"
MODELS = ("ranker_v2_onnx", "ranker_v2")  # the model first, then the ensemble calling it


@dataclass
class Traffic:
    """Outcomes of the background requests."""

    answers: list[tuple[float, str, tuple[int, ...]]] = field(default_factory=list)
    """(monotonic time, model_version, degraded reasons) of each answer."""
    errors: list[tuple[float, str]] = field(default_factory=list)
    """(monotonic time, status and details) of each failed request."""

    def since(self, moment: float) -> list[tuple[float, str, tuple[int, ...]]]:
        return [a for a in self.answers if a[0] >= moment]


@dataclass
class Live:
    """A gateway over a Triton that follows `repository`, with traffic running."""

    repository: Path
    control: list[str]
    traffic: Traffic
    triton_grpc_url: str


async def _drive(
    stub: pb_grpc.RecommendationServiceAsyncStub, users: list[str], traffic: Traffic
) -> None:
    n = 0
    while True:
        user_id = users[n % len(users)]
        n += 1
        try:
            reply = await stub.Recommend(pb.RecommendRequest(user_id=user_id), timeout=10)
        except grpc.aio.AioRpcError as error:
            traffic.errors.append((time.monotonic(), f"{error.code().name}: {error.details()}"))
        else:
            traffic.answers.append(
                (time.monotonic(), reply.model_version, tuple(reply.degraded_reasons))
            )
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def _live(
    start_tritonserver: StartTriton,
    make_settings: Callable[..., Settings],
    user_ids: list[str],
    tmp_path: Path,
) -> AsyncIterator[Live]:
    repository = tmp_path / "repository"
    shutil.copytree(SOURCE, repository, ignore=shutil.ignore_patterns("__pycache__"))
    triton = start_tritonserver(repository, model_control_mode="poll", repository_poll_secs=1)
    settings = make_settings(
        MODEL__REPOSITORY_DIR=str(repository),
        MODEL__RANKER__TRITON_GRPC_URL=triton.grpc_url,
        MODEL__RANKER__TRITON_HTTP_URL=triton.http_url,
        MODEL__RANKER__TIMEOUT_MS="2000",
        MODEL__RANKER__MODEL_POLL_INTERVAL_S=str(POLL_S),
        MODEL__RANKER__PREDICTION_CACHE_SIZE="0",
        SERVING__DEFAULT_DEADLINE_MS="5000",
    )
    try:
        async with in_process_gateway(settings) as (_, stub):
            control = []
            for user_id in user_ids[:12]:
                reply = await stub.Recommend(pb.RecommendRequest(user_id=user_id), timeout=10)
                assert not reply.degraded, reply.degraded_reasons
                if reply.model_version.startswith("ranker_v2/"):
                    assert reply.model_version == "ranker_v2/1"
                    control.append(user_id)
            assert len(control) >= 3, "too few control-arm users among the first 12"
            traffic = Traffic()
            driver = asyncio.create_task(_drive(stub, control, traffic))
            try:
                yield Live(repository, control, traffic, triton.grpc_url)
            finally:
                driver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await driver
    finally:
        triton.stop()


def _stage(repository: Path, target: int) -> dict[str, Path]:
    """Copies version 1 of both models to hidden folders (published by `_publish`)."""
    staged = {}
    for model in MODELS:
        staged[model] = repository / f".{model}-{target}"
        shutil.copytree(
            repository / model / "1", staged[model], ignore=shutil.ignore_patterns("__pycache__")
        )
    return staged


def _publish(repository: Path, staged: dict[str, Path], target: int) -> float:
    """Renames the staged versions into place (Triton never sees a half-written folder), the
    model before its ensemble; returns the monotonic time."""
    for model in MODELS:
        os.rename(staged[model], repository / model / str(target))
    return time.monotonic()


def _outcomes(answers: list[tuple[float, str, tuple[int, ...]]]) -> dict[str, int]:
    """How many answers had each model version and degraded reasons."""
    counts = Counter(
        "+".join([v, *(pb.DegradedReason.Name(pb.DegradedReason.ValueType(r)) for r in reasons)])
        for _, v, reasons in answers
    )
    return dict(sorted(counts.items()))


async def test_good_version_switches_without_failed_requests(
    start_tritonserver: StartTriton,
    make_settings: Callable[..., Settings],
    real_user_ids: list[str],
    tmp_path: Path,
) -> None:
    async with _live(start_tritonserver, make_settings, real_user_ids, tmp_path) as live:
        traffic, n = live.traffic, len(live.control)
        added = _publish(live.repository, _stage(live.repository, 2), 2)
        while True:
            await asyncio.sleep(0.2)
            recent = traffic.answers[-n:]
            if recent[0][0] > added and all(a[1] == "ranker_v2/2" for a in recent):
                break
            assert (
                time.monotonic() - added < SWITCH_BUDGET_S
            ), f"still {recent[-1][1]} {SWITCH_BUDGET_S:.0f} s after version 2 landed"
        switch_s = time.monotonic() - added
        await asyncio.sleep(1.0)  # and it stays there
        during = traffic.since(added)
    assert not traffic.errors, traffic.errors
    degraded = [(t, v, r) for t, v, r in during if r]
    assert {(v, r) for _, v, r in degraded} <= {
        ("popularity", (pb.DEGRADED_REASON_RANKER_UNAVAILABLE,))
    }, _outcomes(degraded)
    window_s = degraded[-1][0] - degraded[0][0] if degraded else 0.0
    assert window_s <= POLL_S + 2.0, f"degraded for {window_s:.2f} s during the switch"
    print(
        f"\nreload: every control user on ranker_v2/2 {switch_s:.2f} s after it landed; "
        f"{len(during)} answers during the switch, 0 failed, {len(degraded)} degraded "
        f"(RANKER_UNAVAILABLE) over {window_s:.2f} s"
    )


async def _version_state(grpc_url: str, model: str, version: str) -> str | None:
    """Triton's state of `model` `version` once it has settled (READY, or UNAVAILABLE after a
    failed load), waiting up to SWITCH_BUDGET_S; None when Triton never listed it."""
    client = tritonclient.grpc.aio.InferenceServerClient(grpc_url)
    try:
        deadline = time.monotonic() + SWITCH_BUDGET_S
        while time.monotonic() < deadline:
            index = await client.get_model_repository_index(as_json=True)
            for entry in index.get("models", []):
                if (entry.get("name"), entry.get("version")) == (model, version) and entry.get(
                    "state"
                ) in ("READY", "UNAVAILABLE"):
                    return str(entry["state"])
            await asyncio.sleep(0.2)
        return None
    finally:
        await client.close()


def _corrupt_model(staged: dict[str, Path]) -> None:
    (staged["ranker_v2_onnx"] / "model.onnx").write_bytes(os.urandom(4096))


def _reorder_features(staged: dict[str, Path]) -> None:
    for folder in staged.values():
        path = folder / "metadata.json"
        metadata = json.loads(path.read_text())
        metadata["feature_names"] = metadata["feature_names"][::-1]
        path.write_text(json.dumps(metadata))


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(_corrupt_model, id="corrupt"),
        pytest.param(
            _reorder_features,
            id="mismatch",
            marks=pytest.mark.xfail(
                strict=True,
                raises=AssertionError,
                reason=(
                    "a version that loads but lists other features cannot be routed around: "
                    "the ensemble's step runs the newest loaded ranker_v2_onnx version, so the "
                    "gateway stops routing to ranker_v2 and the fallback answers (flagged) "
                    "until the version is replaced"
                ),
            ),
        ),
    ],
)
async def test_bad_version_keeps_the_previous_one_serving(
    spoil: Callable[[dict[str, Path]], None],
    start_tritonserver: StartTriton,
    make_settings: Callable[..., Settings],
    real_user_ids: list[str],
    tmp_path: Path,
) -> None:
    async with _live(start_tritonserver, make_settings, real_user_ids, tmp_path) as live:
        staged = _stage(live.repository, 2)
        spoil(staged)
        added = _publish(live.repository, staged, 2)
        # Hold only once Triton has settled version 2 (a slow load on a busy machine would
        # otherwise leave the whole hold on version 1, proving nothing).
        state = await _version_state(live.triton_grpc_url, "ranker_v2_onnx", "2")
        if spoil is _reorder_features:
            assert state == "READY", f"ranker_v2_onnx version 2 never loaded ({state})"
        await asyncio.sleep(HOLD_S)
        after = live.traffic.since(added)
    outcomes = _outcomes(after)
    print(f"\n{spoil.__name__}: {len(after)} answers after version 2 landed: {outcomes}")
    assert not live.traffic.errors, live.traffic.errors
    assert len(after) > 20
    assert outcomes == {"ranker_v2/1": len(after)}, outcomes
