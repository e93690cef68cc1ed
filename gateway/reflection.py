"""Server reflection that answers every symbol ghz and grpcurl look up.

grpcio-reflection asks the protobuf descriptor pool for the file that declares a symbol, and the
pool of the upb protobuf runtime does not know method names (grpc/grpc#34743): ghz resolves
`--call recsys.v1.RecommendationService/Recommend` by asking for
`recsys.v1.RecommendationService.Recommend` and got NOT_FOUND ("Symbol not found"), as did
`grpcurl describe` of a method. The pool below answers those from the service that declares the
method. Each answer carries the file and everything it imports (the well-known types such as
google/protobuf/timestamp.proto included), so a tool needs no .proto files of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

SERVICE_NAME: str = reflection.SERVICE_NAME
"""The reflection service's own name (list it among the served services)."""
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
"""The stable reflection service's name, served with the same servicer."""


class MethodAwarePool:
    """The part of a descriptor pool that the reflection servicer uses, with methods resolvable
    by their full name (`package.Service.Method`) like every other symbol. The method names are
    DescriptorPool's, which the servicer calls."""

    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = pool if pool is not None else descriptor_pool.Default()

    def FindFileContainingSymbol(self, full_name: str) -> FileDescriptor:
        """The file declaring `full_name` (message, field, enum, enum value, service, method).

        Raises:
            KeyError: no such symbol (the servicer answers NOT_FOUND).
        """
        try:
            found: FileDescriptor = self._pool.FindFileContainingSymbol(full_name)
            return found
        except KeyError:
            service_name, _, method = full_name.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                raise KeyError(full_name) from None
            if method not in service.methods_by_name:
                raise KeyError(full_name) from None
            declaring: FileDescriptor = service.file
            return declaring

    def FindFileByName(self, file_name: str) -> FileDescriptor:
        found: FileDescriptor = self._pool.FindFileByName(file_name)
        return found

    def FindMessageTypeByName(self, full_name: str) -> Descriptor:
        found: Descriptor = self._pool.FindMessageTypeByName(full_name)
        return found

    def FindExtensionByNumber(self, message: Descriptor, number: int) -> FieldDescriptor:
        found: FieldDescriptor = self._pool.FindExtensionByNumber(message, number)
        return found

    def FindAllExtensions(self, message: Descriptor) -> list[FieldDescriptor]:
        found: list[FieldDescriptor] = self._pool.FindAllExtensions(message)
        return found


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Adds server reflection to `server`, listing `service_names`: the v1alpha service, which
    grpcurl and ghz speak, and the same servicer as `grpc.reflection.v1.ServerReflection` for
    clients that ask only for the stable version (grpcio-reflection ships v1alpha alone).

    The two versions' messages are the same fields under another package name, so the v1alpha
    messages parse and answer v1 calls. The v1 name is served but not listed: its descriptor is
    not in the pool, and a tool that describes every listed service would stop at it.
    """
    pool: Any = MethodAwarePool()  # duck-typed: the servicer only calls the methods above
    servicer = reflection.aio.ReflectionServicer(tuple(service_names), pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    stable: grpc.RpcMethodHandler[Any, Any] = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": stable}),)
    )
