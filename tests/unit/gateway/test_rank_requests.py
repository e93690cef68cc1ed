"""The Triton request the ranker sends and the reply it reads, at the protobuf level.

The ranker serializes `ModelInferRequest`s itself (a prefix per model and version plus the
rows as `raw_input_contents`); these tests parse what it sends with protobuf and compare it
with the message built the plain way. The real server is exercised in
tests/integration/test_tritonserver.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from tritonclient.grpc import service_pb2

from gateway.stages.rank import INPUT_NAME, OUTPUT_NAME, InferRequestEncoder, read_scores

Request = service_pb2.ModelInferRequest


def _plain_request(model: str, version: str, rows: npt.NDArray[np.float32]) -> Any:
    return Request(
        model_name=model,
        model_version=version,
        inputs=[Request.InferInputTensor(name=INPUT_NAME, datatype="FP32", shape=rows.shape)],
        outputs=[Request.InferRequestedOutputTensor(name=OUTPUT_NAME)],
        raw_input_contents=[rows.tobytes()],
    )


# Row counts around the varint boundaries of the raw contents' length (x 46 x 4 bytes).
@pytest.mark.parametrize("rows", [0, 1, 550, 90_000])
def test_encoded_request_is_the_plain_message(rows: int) -> None:
    features = np.random.default_rng(rows).random((rows, 46), dtype=np.float32)

    encoded = InferRequestEncoder("ranker_v2", 3).encode(features)

    assert Request.FromString(encoded) == _plain_request("ranker_v2", "3", features)


def test_version_zero_leaves_the_choice_to_triton() -> None:
    features = np.ones((2, 3), dtype=np.float32)

    parsed = Request.FromString(InferRequestEncoder("ranker_v3", 0).encode(features))

    assert parsed.model_version == ""
    assert parsed == _plain_request("ranker_v3", "", features)


def test_rows_are_sent_as_float32_in_order() -> None:
    features = np.arange(12, dtype=np.float32).reshape(4, 3)

    parsed = Request.FromString(InferRequestEncoder("m", 1).encode(features))

    sent = np.frombuffer(parsed.raw_input_contents[0], dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(sent, features)
    assert list(parsed.inputs[0].shape) == [4, 3]


def _reply(values: npt.NDArray[Any], *, name: str = OUTPUT_NAME, datatype: str = "FP32") -> Any:
    Response = service_pb2.ModelInferResponse
    return Response(
        model_name="ranker_v2",
        model_version="2",
        outputs=[Response.InferOutputTensor(name=name, datatype=datatype, shape=[len(values), 1])],
        raw_output_contents=[values.tobytes()],
    )


def test_scores_are_read_from_the_raw_output() -> None:
    values = np.array([0.1, 0.7, 0.3], dtype=np.float32)

    scores = read_scores(_reply(values), 3)

    assert scores is not None
    assert scores.dtype == np.float32
    np.testing.assert_array_equal(scores, values)


def test_a_reply_that_does_not_fit_the_request_reads_as_none() -> None:
    values = np.array([0.1, 0.7, 0.3], dtype=np.float32)
    empty = service_pb2.ModelInferResponse(model_name="ranker_v2", model_version="2")

    assert read_scores(_reply(values), 4) is None  # one score per row, or nothing
    assert read_scores(_reply(values, name="logit"), 3) is None
    assert read_scores(_reply(values.astype(np.float64), datatype="FP64"), 3) is None
    assert read_scores(empty, 3) is None
