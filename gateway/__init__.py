"""The gRPC gateway: validates requests, runs the recommendation pipeline, records events."""
