"""What reduced-scale JPEG decoding changes: top-1 of the pretrained EfficientNet-Lite0, full vs reduced decode.

``gateway.processing.images.classify_input`` decodes a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's
DCT-domain scaling) when the resize to 256 shrinks it 2x or more. This script builds the pretrained
efficientnet_lite0 engine (ONNX Runtime, no Triton), encodes a handful of scikit-image photos as
JPEG q90 at their own size and at 2x and 4x (so that the reduced decode is used), and prints, per
image, top-1 with a full decode (``decode_image`` + ``resize_center_crop``, the previous path) and
with ``classify_input``, and the mean absolute difference of the two 224x224 inputs::

    .venv/bin/python benchmarks/reduced_decode.py --out benchmarks/results/reduced_decode.md
"""

from __future__ import annotations

import argparse
import io
import pathlib
import sys
import tempfile

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.labels import imagenet  # noqa: E402
from gateway.processing.classification import softmax  # noqa: E402
from gateway.processing.images import classify_input, decode_image, resize_center_crop  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "hubble_deep_field")
MAX_PIXELS = 40_000_000


def _jpeg(photo: np.ndarray, factor: int) -> bytes:
    image = Image.fromarray(photo)
    if factor != 1:
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, help="write the markdown table here too")
    args = parser.parse_args(argv)
    from skimage import data

    from engine_runtime.engine import OnnxRuntimeEngine
    from magicmind_build.build import build_engine
    from magicmind_build.specs import SPECS

    names = imagenet()
    lines = [
        "| photo | JPEG size | decoded at | top-1 full decode (p) | top-1 reduced decode (p) | same "
        "| mean abs input diff |",
        "|---|---|---|---|---|---|---|",
    ]
    same = total = 0
    with tempfile.TemporaryDirectory() as tmp:
        build_engine(SPECS["efficientnet_lite0"], pathlib.Path(tmp), size="tiny")  # the pretrained graph
        engine = OnnxRuntimeEngine(pathlib.Path(tmp) / "model.onnx")
        for name in PHOTOS:
            photo = getattr(data, name)()
            if photo.ndim == 2:
                photo = np.stack([photo] * 3, axis=-1)
            for factor in (1, 2, 4):
                jpeg = _jpeg(photo[..., :3], factor)
                full = resize_center_crop(decode_image(jpeg, MAX_PIXELS), 256, 224)
                reduced = classify_input(jpeg, MAX_PIXELS, 0.0, 256, 224)
                p_full = softmax(engine.run({"images": full[None]})["logits"][0])
                p_reduced = softmax(engine.run({"images": reduced[None]})["logits"][0])
                top_full, top_reduced = int(p_full.argmax()), int(p_reduced.argmax())
                height, width = photo.shape[0] * factor, photo.shape[1] * factor
                scale = 256 / min(width, height)
                denominator = next((d for d in (8, 4, 2) if scale <= 1 / d), 1)
                diff = float(np.abs(full.astype(int) - reduced).mean())
                same += top_full == top_reduced
                total += 1
                lines.append(
                    f"| {name} | {width}x{height} | 1/{denominator} | {names[top_full]} ({p_full[top_full]:.2f}) "
                    f"| {names[top_reduced]} ({p_reduced[top_reduced]:.2f}) "
                    f"| {'yes' if top_full == top_reduced else '**no**'} | {diff:.2f} |"
                )
    table = "\n".join(lines) + f"\n\nSame top-1 for {same} of {total} images.\n"
    if args.out:
        args.out.write_text(table)
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
