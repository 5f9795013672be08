"""Benchmarks: KubeSentiment's ONNX variants against a FastAPI + transformers baseline."""
