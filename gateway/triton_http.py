"""Triton inference over its HTTP/1.1 endpoint: KServe v2 `infer` with binary tensors.

The gateway's ranking calls go here rather than to Triton's gRPC `ModelInfer`: from Python a
gRPC call costs both sides more CPU than the same request over HTTP/1.1 on a persistent
connection, where the event loop writes the request and reads the reply with no completion-
queue thread in between (`python -m benchmarks.triton_transport` measures both, side by side:
0.52-0.60x the client's CPU per call and 0.84-0.91x tritonserver's). The request is a
small JSON header (`Inference-Header-Content-Length`) followed by the rows' bytes, and the
reply a JSON header followed by each output's bytes (Triton's binary tensor extension), so
no float is ever written as text.

`TritonHttpClient` keeps a few persistent connections to one Triton (HTTP/1.1 answers one
request per connection at a time; the gateway has at most `max_calls_in_flight` calls out per
model, plus the ones it stopped waiting for). Responses are parsed by `httptools`, the parser
uvloop's servers use. Control calls (model versions) stay on gRPC (`TritonRanker`).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

import httptools
import numpy as np
import numpy.typing as npt

MAX_IDLE_CONNECTIONS = 8
"""Idle connections kept open for the next calls; more are closed as they come back."""


class TritonHttpError(Exception):
    """A call failed: Triton refused or could not be reached (`status` 0), or answered with an
    HTTP error (its status and Triton's message). `unanswered`: the connection closed before
    any byte of the reply came."""

    def __init__(self, detail: str, status: int = 0, *, unanswered: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.unanswered = unanswered


@dataclass(frozen=True, slots=True)
class InferReply:
    """A successful reply: the version that answered and the named FP32 outputs, or None for
    outputs when the reply did not hold exactly the requested FP32 vectors of `rows` values."""

    model_version: str
    outputs: dict[str, npt.NDArray[np.float32]] | None


class HttpInferEncoder:
    """Requests to one model and version, with the parts that never change prepared once."""

    def __init__(
        self, host: str, model: str, version: int, input_name: str, outputs: Sequence[str]
    ) -> None:
        path = f"/v2/models/{quote(model, safe='')}"
        if version:
            path += f"/versions/{version}"
        self.outputs = tuple(outputs)
        self._head = (
            f"POST {path}/infer HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/octet-stream\r\n"
        )
        self._input = json.dumps(input_name)
        requested = ",".join(
            json.dumps({"name": name, "parameters": {"binary_data": True}}) for name in outputs
        )
        self._outputs = f'"outputs":[{requested}]}}'

    def encode(
        self,
        parts: Sequence[npt.NDArray[np.float32]],
        headers: Sequence[tuple[str, str]] = (),
    ) -> list[bytes | memoryview]:
        """The request scoring the rows of `parts` (C-contiguous FP32 `[n_i, F]`, one width)
        as one `[sum n_i, F]` tensor, as buffers to write in order (the rows are not copied)."""
        rows = sum(part.shape[0] for part in parts)
        size = sum(part.nbytes for part in parts)
        header = (
            f'{{"inputs":[{{"name":{self._input},"shape":[{rows},{parts[0].shape[1]}],'
            f'"datatype":"FP32","parameters":{{"binary_data_size":{size}}}}}],{self._outputs}'
        ).encode()
        # Trace context comes from callers: only plain ASCII lines go on (a line break must not
        # start a header of its own).
        extra = "".join(
            f"{name}: {value}\r\n"
            for name, value in headers
            if (name + value).isascii() and "\r" not in name + value and "\n" not in name + value
        )
        head = (
            f"{self._head}Inference-Header-Content-Length: {len(header)}\r\n"
            f"Content-Length: {len(header) + size}\r\n{extra}\r\n"
        ).encode("latin-1")
        return [head, header, *(part.data.cast("B") for part in parts)]

    def decode(self, header_length: int, body: bytes, rows: int) -> InferReply:
        """The outputs of a 200 reply to a request of `rows` rows."""
        version = ""
        try:
            meta = json.loads(body[:header_length])
            version = str(meta.get("model_version", ""))
            listed = meta["outputs"]
            if sorted(o["name"] for o in listed) != sorted(self.outputs):
                return InferReply(version, None)
            found: dict[str, npt.NDArray[np.float32]] = {}
            offset = header_length
            for output in listed:  # binary outputs follow the header in its order
                size = output["parameters"]["binary_data_size"]
                if output["datatype"] != "FP32" or size != rows * 4:
                    return InferReply(version, None)
                found[output["name"]] = np.frombuffer(body, np.float32, rows, offset)
                offset += size
        except (ValueError, KeyError, TypeError, AttributeError):  # not the reply Triton gives
            return InferReply(version, None)
        return InferReply(version, found if offset == len(body) else None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its reply parsed as it arrives."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._reply: asyncio.Future[tuple[int, int, bytes]] | None = None
        self._body: list[bytes] = []
        self._header_length = -1
        self._answered = False
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(TritonHttpError(f"malformed HTTP reply from Triton: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(
            TritonHttpError(
                f"Triton closed the connection ({exc or 'no error'})", unanswered=not self._answered
            )
        )

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"inference-header-content-length":
            self._header_length = int(value)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        reply, self._reply = self._reply, None
        body = b"".join(self._body)
        self._body = []
        header_length, self._header_length = self._header_length, -1
        if not self._parser.should_keep_alive():
            self.close()
        if reply is not None and not reply.done():
            reply.set_result((self._parser.get_status_code(), header_length, body))

    def _fail(self, error: TritonHttpError) -> None:
        reply, self._reply = self._reply, None
        if reply is not None and not reply.done():
            reply.set_exception(error)

    def send(self, buffers: list[bytes | memoryview]) -> asyncio.Future[tuple[int, int, bytes]]:
        """Writes one request; the future gets (status, JSON header length or -1, body)."""
        assert self._transport is not None and self._reply is None
        self._reply = asyncio.get_running_loop().create_future()
        self._answered = False
        self._transport.writelines(buffers)
        return self._reply

    def close(self) -> None:
        """Closes the connection at once (a reply still due fails)."""
        self.closed = True
        if self._transport is not None:
            self._transport.abort()


class TritonHttpClient:
    """`infer` calls to one Triton's HTTP endpoint (`host:port`) over persistent connections."""

    def __init__(self, url: str) -> None:
        host, _, port = url.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"Triton HTTP address {url!r} is not host:port")
        self._host, self._port, self._url = host.strip("[]"), int(port), url
        self._idle: deque[_Connection] = deque()
        self._busy: set[_Connection] = set()

    @property
    def url(self) -> str:
        """host:port of the Triton this client calls."""
        return self._url

    async def _connection(self, reuse: bool) -> tuple[_Connection, bool]:
        """A connection for one request, and whether it served an earlier one."""
        while reuse and self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection, True
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(_Connection, self._host, self._port)
        except OSError as exc:
            raise TritonHttpError(f"cannot connect to Triton at {self._url}: {exc}") from exc
        return connection, False

    async def infer(
        self,
        encoder: HttpInferEncoder,
        parts: Sequence[npt.NDArray[np.float32]],
        timeout_s: float,
        headers: Sequence[tuple[str, str]] = (),
    ) -> InferReply:
        """Sends one request and waits for its reply (at most `timeout_s`, after which the
        connection is closed).

        A kept connection that turns out closed before any reply (the server or a proxy
        dropped it while idle) is replaced and the request sent again, once: inference is
        idempotent.

        Raises:
            TritonHttpError: no connection, a broken or malformed reply, or an HTTP error.
            TimeoutError: no reply within `timeout_s`.
        """
        request = encoder.encode(parts, headers)
        async with asyncio.timeout(timeout_s):
            try:
                status, header_length, body, connection = await self._exchange(request, True)
            except TritonHttpError as exc:
                if not exc.unanswered:
                    raise
                status, header_length, body, connection = await self._exchange(request, False)
        if not connection.closed:
            if len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append(connection)
            else:
                connection.close()
        if status != 200:
            raise TritonHttpError(f"HTTP {status}: {_error_message(body)}", status)
        if header_length < 0:
            raise TritonHttpError("the reply has no Inference-Header-Content-Length")
        return encoder.decode(header_length, body, sum(part.shape[0] for part in parts))

    async def _exchange(
        self, request: list[bytes | memoryview], reuse: bool
    ) -> tuple[int, int, bytes, _Connection]:
        """Sends `request` on a connection (a kept one when `reuse` and there is one) and
        waits for the reply; the connection of a failed or abandoned exchange is closed.

        Raises:
            TritonHttpError: as `infer`; `unanswered` only for a kept connection.
        """
        connection, reused = await self._connection(reuse)
        self._busy.add(connection)
        try:
            status, header_length, body = await connection.send(request)
        except TritonHttpError as exc:
            connection.close()
            exc.unanswered = exc.unanswered and reused
            raise
        except BaseException:
            connection.close()  # a reply may still come: this connection cannot be reused
            raise
        finally:
            self._busy.discard(connection)
        return status, header_length, body, connection

    async def close(self) -> None:
        """Closes every connection (calls still waiting fail)."""
        for connection in [*self._idle, *self._busy]:
            connection.close()
        self._idle.clear()
        self._busy.clear()


def _error_message(body: bytes) -> str:
    """Triton's `{"error": "..."}` message, or the start of the body."""
    try:
        decoded: Any = json.loads(body)
        return str(decoded["error"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace") or "no message"
