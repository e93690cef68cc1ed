"""The reflection pool resolves method names, which upb's descriptor pool does not."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pool
from recsys.v1 import admin_pb2
from recsys.v1 import recommendation_pb2 as pb

from gateway.reflection import MethodAwarePool


@pytest.mark.parametrize(
    ("symbol", "file_name"),
    [
        ("recsys.v1.RecommendationService.Recommend", "recsys/v1/recommendation.proto"),
        ("recsys.v1.RecommendationService.RecordEvents", "recsys/v1/recommendation.proto"),
        ("recsys.v1.ExperimentAdminService.SetWeights", "recsys/v1/admin.proto"),
        ("recsys.v1.RecommendationService", "recsys/v1/recommendation.proto"),
        ("recsys.v1.UserEvent.timestamp", "recsys/v1/recommendation.proto"),
        ("recsys.v1.DEVICE_APP", "recsys/v1/recommendation.proto"),
        ("google.protobuf.Timestamp", "google/protobuf/timestamp.proto"),
    ],
)
def test_symbols_resolve_to_their_file(symbol: str, file_name: str) -> None:
    assert pb.DESCRIPTOR and admin_pb2.DESCRIPTOR  # both files are in the default pool
    assert MethodAwarePool().FindFileContainingSymbol(symbol).name == file_name


@pytest.mark.parametrize(
    "symbol",
    ["recsys.v1.RecommendationService.Nope", "recsys.v1.Nope.Recommend", "Recommend", ""],
)
def test_unknown_symbols_raise_key_error(symbol: str) -> None:
    with pytest.raises(KeyError):
        MethodAwarePool().FindFileContainingSymbol(symbol)


def test_other_lookups_are_the_pool_s() -> None:
    pool = MethodAwarePool(descriptor_pool.Default())
    assert pool.FindFileByName("google/protobuf/timestamp.proto").name == (
        "google/protobuf/timestamp.proto"
    )
    request = pool.FindMessageTypeByName("recsys.v1.RecommendRequest")
    assert request is pb.RecommendRequest.DESCRIPTOR
    assert pool.FindAllExtensions(request) == []
