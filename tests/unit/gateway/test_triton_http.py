"""The HTTP inference encoder and decoder (`gateway.triton_http`), without a server: requests
are parsed back with httptools' request parser, replies built by hand."""

from __future__ import annotations

import json
from typing import Any

import httptools
import numpy as np
import numpy.typing as npt
import pytest

from gateway.triton_http import HttpInferEncoder


class _Parsed:
    def __init__(self, data: bytes) -> None:
        self.headers: dict[str, str] = {}
        self.body = b""
        self.url = b""
        parser = httptools.HttpRequestParser(self)
        parser.feed_data(data)
        self.method = parser.get_method()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body += body


def _request(encoder: HttpInferEncoder, *args: Any) -> _Parsed:
    return _Parsed(b"".join(bytes(part) for part in encoder.encode(*args)))


def test_a_request_carries_the_rows_of_every_part_after_a_json_header() -> None:
    encoder = HttpInferEncoder("triton:8000", "ranker v2", 3, "features", ["score", "other"])
    parts = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((1, 3), np.float32)]
    request = _request(encoder, parts, [("traceparent", "00-ab-cd-01")])

    assert (request.method, request.url) == (b"POST", b"/v2/models/ranker%20v2/versions/3/infer")
    assert request.headers["host"] == "triton:8000"
    assert request.headers["traceparent"] == "00-ab-cd-01"
    length = int(request.headers["inference-header-content-length"])
    assert int(request.headers["content-length"]) == len(request.body) == length + 9 * 4
    header = json.loads(request.body[:length])
    assert header["inputs"] == [
        {
            "name": "features",
            "shape": [3, 3],
            "datatype": "FP32",
            "parameters": {"binary_data_size": 36},
        }
    ]
    assert [o["name"] for o in header["outputs"]] == ["score", "other"]
    assert all(o["parameters"] == {"binary_data": True} for o in header["outputs"])
    rows = np.frombuffer(request.body[length:], np.float32).reshape(3, 3)
    np.testing.assert_array_equal(rows, np.concatenate(parts))


def test_the_latest_version_has_no_version_in_the_path_and_unsafe_headers_are_left_out() -> None:
    encoder = HttpInferEncoder("h:1", "ranker_v2", 0, "features", ["score"])
    headers = [("tracestate", "a=1\r\nX-Injected: yes"), ("baggage", "k=é"), ("ok", "fine")]
    request = _request(encoder, [np.zeros((1, 2), np.float32)], headers)
    assert request.url == b"/v2/models/ranker_v2/infer"
    assert "x-injected" not in request.headers and "tracestate" not in request.headers
    assert "baggage" not in request.headers and request.headers["ok"] == "fine"


def _reply(
    outputs: list[dict[str, Any]], values: list[npt.NDArray[np.float32]], extra: bytes = b""
) -> bytes:
    header = json.dumps({"model_version": "4", "outputs": outputs}).encode()
    return header + b"".join(v.tobytes() for v in values) + extra


def _output(name: str, rows: int, datatype: str = "FP32") -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "parameters": {"binary_data_size": rows * 4}}


def test_a_reply_is_read_by_name_whatever_the_order() -> None:
    encoder = HttpInferEncoder("h:1", "m", 0, "features", ["score", "discovery_score"])
    first, second = np.array([1, 2], np.float32), np.array([3, 4], np.float32)
    body = _reply([_output("discovery_score", 2), _output("score", 2)], [first, second])
    header_length = body.index(b"}]}") + 3
    reply = encoder.decode(header_length, body, 2)
    assert reply.model_version == "4" and reply.outputs is not None
    assert reply.outputs["discovery_score"].tolist() == [1, 2]
    assert reply.outputs["score"].tolist() == [3, 4]


@pytest.mark.parametrize(
    ("outputs", "extra"),
    [
        ([_output("score", 3)], b""),  # three values for two rows
        ([_output("score", 2, "FP64")], b""),  # another type
        ([_output("other", 2)], b""),  # another output
        ([_output("score", 2), _output("score", 2)], b""),  # twice
        ([_output("score", 2)], b"\0\0\0\0"),  # bytes left over
        ([{"name": "score"}], b""),  # no size
        (["score"], b""),  # not an object
    ],
)
def test_a_misshapen_reply_gives_no_outputs(outputs: list[Any], extra: bytes) -> None:
    encoder = HttpInferEncoder("h:1", "m", 0, "features", ["score"])
    body = _reply(outputs, [np.zeros(2, np.float32)], extra)
    header_length = len(json.dumps({"model_version": "4", "outputs": outputs}).encode())
    assert encoder.decode(header_length, body, 2).outputs is None


def test_a_reply_whose_header_is_not_json_gives_no_outputs() -> None:
    encoder = HttpInferEncoder("h:1", "m", 0, "features", ["score"])
    assert encoder.decode(5, b"not json at all", 1).outputs is None
