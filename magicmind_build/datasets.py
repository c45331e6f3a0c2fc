"""Calibration and evaluation sets, generated deterministically from data that packages ship.

No dataset is reachable from these machines, so the images are crops and flips of the photos that
scikit-image ships and of the sample photos in Debian's ``darknet`` package (``apt-get download``
of a pinned version, sha256-checked; only its ``data/*.jpg`` are extracted, nothing is installed).
The QA sets are generated from templates (question, context, the answer the template put there).

Calibration and evaluation never share a source photo (or, for QA, an entity name), so a quantized
model is never evaluated on the images it was calibrated on. Every set has a sha256
(:func:`set_sha256`) recorded in the manifests of the engines calibrated or evaluated with it.

``python -m magicmind_build.datasets --out DIR`` writes the four sets into ``DIR`` (default: the
build cache, ``$MAGICMIND_BUILD_CACHE`` or ``~/.cache/magicmind_build/datasets``) and prints their hashes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable

import numpy as np
from PIL import Image

LOGGER = logging.getLogger(__name__)

DARKNET_DEB_VERSION = "0.0.0+git20180914.61c9d02e-2+b4"
DARKNET_DEB_SHA256 = "9ca14d36112d242a782bfed4104fa5adcd2ae8bc599ab610f42eb609ee125a01"

# Source photos: evaluation and calibration are disjoint by photo.
EVAL_PHOTOS = (
    "skimage:astronaut",
    "skimage:chelsea",
    "skimage:stereo_motorcycle",
    "darknet:dog",
    "darknet:horses",
    "darknet:kite",
    "darknet:person",
)
CALIBRATION_PHOTOS = (
    "skimage:coffee",
    "skimage:rocket",
    "skimage:camera",
    "darknet:eagle",
    "darknet:giraffe",
    "darknet:scream",
)
EVAL_IMAGES_PER_PHOTO = 30  # 7 x 30 = 210 evaluation images
CALIBRATION_IMAGES_PER_PHOTO = 11  # 6 x 11 = 66 calibration images
MAX_SIDE = 640
EVAL_QA = 200
CALIBRATION_QA = 64
SETS = ("calibration_images", "eval_images", "calibration_qa.jsonl", "eval_qa.jsonl")


def cache_dir() -> pathlib.Path:
    root = os.environ.get("MAGICMIND_BUILD_CACHE") or pathlib.Path.home() / ".cache" / "magicmind_build"
    return pathlib.Path(root)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def darknet_photos(cache: pathlib.Path | None = None) -> pathlib.Path:
    """The folder holding darknet's sample photos (``dog.jpg``, ...), fetched once into the cache."""
    out = (cache or cache_dir()) / "apt" / f"darknet-{DARKNET_DEB_VERSION}" / "data"
    if (out / "dog.jpg").is_file():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(
                ["apt-get", "download", f"darknet={DARKNET_DEB_VERSION}"],
                cwd=tmp,
                check=True,
                capture_output=True,
                timeout=300,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise RuntimeError(
                f"cannot fetch Debian's darknet {DARKNET_DEB_VERSION} with `apt-get download` (a Debian host "
                f"with its apt lists is needed once): {exc}"
            ) from exc
        deb = next(pathlib.Path(tmp).glob("darknet_*.deb"))
        digest = _sha256(deb.read_bytes())
        if digest != DARKNET_DEB_SHA256:
            raise RuntimeError(f"{deb.name}: sha256 {digest}, expected {DARKNET_DEB_SHA256}")
        tar_bytes = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    staging = out.with_name("data.tmp")
    staging.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar.getmembers():
            path = pathlib.PurePosixPath(member.name)
            if member.isfile() and path.parent.name == "data" and path.suffix == ".jpg":
                extracted = tar.extractfile(member)
                assert extracted is not None
                (staging / path.name).write_bytes(extracted.read())
    staging.replace(out)
    return out


def load_photo(name: str) -> np.ndarray:
    """One source photo as uint8 RGB [H, W, 3]: ``skimage:<name>`` or ``darknet:<name>``."""
    kind, _, photo = name.partition(":")
    if kind == "skimage":
        from skimage import data

        array = getattr(data, photo)()
        array = array[0] if isinstance(array, tuple) else array  # stereo_motorcycle: (left, right, disparity)
        image = Image.fromarray(np.asarray(array))
    elif kind == "darknet":
        image = Image.open(darknet_photos() / f"{photo}.jpg")
    else:
        raise ValueError(f"unknown photo source {name!r}")
    return np.asarray(image.convert("RGB"))


def augment(photo: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A random crop (35-100% of the area, aspect 3:4 to 4:3), flipped half the time, longer side <= 640."""
    height, width = photo.shape[:2]
    area = height * width * rng.uniform(0.35, 1.0)
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    crop_w = int(min(width, round(np.sqrt(area * aspect))))
    crop_h = int(min(height, round(np.sqrt(area / aspect))))
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    image = Image.fromarray(photo[top : top + crop_h, left : left + crop_w])
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = MAX_SIDE / max(image.size)
    if scale < 1:
        image = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR
        )
    return image


def write_images(out: pathlib.Path, photos: tuple[str, ...], per_photo: int, seed: int) -> pathlib.Path:
    """``per_photo`` augmented JPEGs of each photo, named ``<index>_<photo>.jpg`` so that sorted order
    cycles through the photos (the first N of a sorted listing cover every photo)."""
    staging = out.with_name(out.name + ".tmp")
    staging.mkdir(parents=True, exist_ok=True)
    for p, name in enumerate(photos):
        photo = load_photo(name)
        rng = np.random.default_rng([seed, p])
        for i in range(per_photo):
            image = augment(photo, rng)
            image.save(staging / f"{i:03d}_{name.replace(':', '_')}.jpg", quality=92)
    staging.replace(out)
    return out


_FIRST = ("Ada", "Alan", "Grace", "Marie", "Niels", "Emmy", "Rosalind", "Carl", "Lise", "Enrico", "Sofia", "Paul")
_LAST = ("Lovelace", "Turing", "Hopper", "Curie", "Bohr", "Noether", "Franklin", "Gauss", "Meitner", "Fermi")
_CAL_FIRST = ("Hedy", "Kurt", "Barbara", "Werner", "Dorothy", "Max", "Chien", "Srinivasa")
_CAL_LAST = ("Lamarr", "Goedel", "McClintock", "Heisenberg", "Hodgkin", "Planck", "Wu", "Ramanujan")
_CITIES = ("London", "Paris", "Vienna", "Rome", "Oslo", "Lisbon", "Prague", "Madrid", "Dublin", "Warsaw", "Athens")
_THINGS = ("bridge", "telescope", "engine", "library", "observatory", "railway", "museum", "harbour", "clock tower")
_FILLER = (
    "The weather that year was unusually cold.",
    "Many letters from that period survive in archives.",
    "Local newspapers reported on it for weeks.",
    "Historians still debate several details of the story.",
    "A small exhibition later told the story to visitors.",
)


def qa_pairs(count: int, seed: int, first: tuple[str, ...], last: tuple[str, ...]) -> list[dict[str, str]]:
    """``count`` question/context pairs with the answer the template placed in the context."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        name = f"{rng.choice(first)} {rng.choice(last)}"
        city, other = rng.choice(_CITIES, size=2, replace=False)
        year = str(int(rng.integers(1700, 2000)))
        thing = str(rng.choice(_THINGS))
        filler = " ".join(rng.choice(_FILLER, size=2, replace=False))
        context = (
            f"{name} was born in {city} in {year}. {filler} Years later, {name} designed the {thing} "
            f"that still stands in {other}."
        )
        question, answer = [
            (f"Where was {name} born?", str(city)),
            (f"In which year was {name} born?", year),
            (f"Who designed the {thing}?", name),
            (f"Where does the {thing} stand?", str(other)),
        ][int(rng.integers(0, 4))]
        pairs.append({"question": question, "context": context, "answer": answer})
    return pairs


def write_qa(out: pathlib.Path, pairs: list[dict[str, str]]) -> pathlib.Path:
    out.write_text("".join(json.dumps(p, sort_keys=True) + "\n" for p in pairs))
    return out


def image_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """The images of a calibration/evaluation folder, sorted by name."""
    suffixes = {".jpg", ".jpeg", ".png", ".webp"}
    return sorted(p for p in pathlib.Path(folder).iterdir() if p.suffix.lower() in suffixes)


def set_sha256(path: pathlib.Path, count: int | None = None) -> str:
    """Digest of a set as used: a JSONL file's first ``count`` lines, or a folder's first ``count`` images
    (sorted by name; each contributes its name and its bytes)."""
    path = pathlib.Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for file in image_files(path)[:count]:
            digest.update(f"{file.name}\0{_sha256(file.read_bytes())}\n".encode())
    else:
        for line in path.read_text().splitlines()[:count]:
            digest.update(line.encode() + b"\n")
    return digest.hexdigest()


def ensure_sets(root: pathlib.Path | None = None) -> dict[str, pathlib.Path]:
    """Generate the four sets into ``root`` (once; existing ones are kept) and return their paths."""
    root = pathlib.Path(root) if root is not None else cache_dir() / "datasets"
    root.mkdir(parents=True, exist_ok=True)
    makers: dict[str, Callable[[pathlib.Path], pathlib.Path]] = {
        "calibration_images": lambda p: write_images(p, CALIBRATION_PHOTOS, CALIBRATION_IMAGES_PER_PHOTO, seed=1),
        "eval_images": lambda p: write_images(p, EVAL_PHOTOS, EVAL_IMAGES_PER_PHOTO, seed=2),
        "calibration_qa.jsonl": lambda p: write_qa(p, qa_pairs(CALIBRATION_QA, 1, _CAL_FIRST, _CAL_LAST)),
        "eval_qa.jsonl": lambda p: write_qa(p, qa_pairs(EVAL_QA, 2, _FIRST, _LAST)),
    }
    paths = {}
    for name, make in makers.items():
        path = root / name
        if not path.exists():
            LOGGER.info("generating %s", path)
            make(path)
        paths[name] = path
    return paths


def default_calibration(task: str) -> pathlib.Path:
    """The generated calibration set for a task: images for vision models, a JSONL for QA."""
    sets = ensure_sets()
    return sets["calibration_qa.jsonl"] if task == "qa" else sets["calibration_images"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magicmind_build.datasets", description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="where to write the sets")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, path in ensure_sets(args.out).items():
        count = len(image_files(path)) if path.is_dir() else len(path.read_text().splitlines())
        LOGGER.info("%-22s %4d items  sha256 %s  %s", name, count, set_sha256(path), path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
