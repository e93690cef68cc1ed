"""Stubs generated from `recommendation.proto` by `make protos`; do not edit them by hand.

from recsys.v1 import recommendation_pb2 as pb, recommendation_pb2_grpc as pb_grpc
"""
