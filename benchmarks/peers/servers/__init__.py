"""One server per peer framework, each serving the same ONNX model through `engine.Engine`."""
