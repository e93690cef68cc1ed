"""Offline pipeline: data to served models (training, ONNX export, Triton model repository)."""
