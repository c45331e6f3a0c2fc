"""Build inference engines from source models and run them.

``engine`` (the runtime side, used by the Triton models) needs only NumPy and ONNX Runtime;
``models``, ``export`` and ``cli`` (the build side) need PyTorch.
"""
