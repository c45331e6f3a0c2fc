"""The engine runtime: what runs inside Triton and in the bare-engine benchmarks.

NumPy and ONNX Runtime (or Cambricon MagicMind on an MLU) only; no PyTorch, no builder code.

- ``manifest``: the ``manifest.json`` written next to each engine (standard library only, so the
  gateway can read it without NumPy or an engine).
- ``engine``: ``load_engine`` and the engine classes (ONNX Runtime, MagicMind, null).
- ``batching``: concatenating Triton requests into one engine batch and splitting the outputs.
- ``triton_model``: ``EngineModel``, the base of every ``triton_repo/*/1/model.py``.

``magicmind_build`` (the builder, needs PyTorch) depends on this package; this package never
imports ``magicmind_build``.
"""
