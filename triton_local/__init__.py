"""Run the real ``tritonserver`` binary shipped in the ``nvidia-pytriton`` wheel.

The wheel is used only as a carrier for the binary and the Python backend;
the models served are plain Triton Python-backend models from ``triton_repo/``.
"""

from triton_local.server import StubProcess, TritonServer, TritonServerConfig, TritonServerError

__all__ = ["StubProcess", "TritonServer", "TritonServerConfig", "TritonServerError"]
