"""The runtime package stands alone: importing it pulls in neither the builder nor PyTorch."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT


def test_engine_runtime_imports_neither_builder_nor_torch() -> None:
    code = (
        "import sys, types\n"
        # triton_model needs the Python backend's utilities module; an empty stand-in is enough to import it.
        "sys.modules['triton_python_backend_utils'] = types.ModuleType('triton_python_backend_utils')\n"
        "import engine_runtime.batching, engine_runtime.engine, engine_runtime.manifest, engine_runtime.triton_model\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'magicmind_build', 'gateway'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_gateway_reads_manifests_without_numpy_engines() -> None:
    code = (
        "import sys\n"
        "import gateway.catalog\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'magicmind_build', 'onnxruntime'}"
        " or m == 'engine_runtime.engine')\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
