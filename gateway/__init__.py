"""A model-serving gateway: ONNX versions over the Open Inference Protocol, traffic splitting, drift, metrics."""

__version__ = "0.1.0"
