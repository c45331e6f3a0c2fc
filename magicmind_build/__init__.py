"""Build inference engines from source models (needs PyTorch).

``models`` holds the PyTorch definitions, ``specs`` the per-model build specs, ``build`` the ONNX
export, ``bench`` the bare-engine benchmark, ``npm_weights`` the pinned pretrained weights and ``cli``
the command line (``python -m magicmind_build``). The runtime side (what runs inside Triton) is the
separate package ``engine_runtime``, which never imports this one.
"""
