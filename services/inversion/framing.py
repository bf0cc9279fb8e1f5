"""The generator's face framing: where its faces' 5 landmarks sit, the template photos are aligned to.

`python -m services.inversion.framing` re-derives the template of a model by detecting faces and their
5 landmarks (FaceFinder, the same path photos take) on generated samples and averaging the positions.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

#: Mean 5-point landmarks of dcgan-digiface-64 faces, as fractions of the image side, measured with
#: `python -m services.inversion.framing --samples 2000 --seed 0` (faces found on 1437 of 2000; per-face
#: std 0.017-0.030 of the side). Order: image-right eye outer, inner; image-left eye outer, inner; nose.
DCGAN_DIGIFACE_TEMPLATE = np.array([[0.71309, 0.46866], [0.59147, 0.47596], [0.29295, 0.47240], [0.41311, 0.47768],
                                    [0.49988, 0.71991]])

#: Models without a measured template use the default model's framing (their faces are assumed to be
#: framed like DigiFace crops); a user can measure theirs with this command.
TEMPLATES: dict[str, np.ndarray] = {"dcgan-digiface-64": DCGAN_DIGIFACE_TEMPLATE}


def template_for(model: str, resolution: int) -> np.ndarray:
    """(5, 2) landmark positions in pixel coordinates of a `resolution` crop for `model`."""
    unit = TEMPLATES.get(model, DCGAN_DIGIFACE_TEMPLATE)
    return unit * resolution - 0.5


def measure(model_name: str, samples: int, seed: int, models_dir: str | None = None) -> dict:
    """Detects faces on `samples` generated images; returns the mean landmarks as fractions of the side."""
    import torch

    from services.common import assets
    from services.inversion.faces import FaceFinder
    from models import load_model

    torch.set_num_threads(2)
    model = load_model(model_name, "cpu", models_dir=models_dir)
    finder = FaceFinder(assets.path_of("shape_predictor_5_face_landmarks.dat", models_dir))
    codes = model.sample(samples, seed=seed)
    points = []
    for start in range(0, samples, 256):
        for image in model.synthesize(codes[start:start + 256], "z", output="uint8").numpy():
            faces = finder.find(image)
            if faces:
                points.append(faces[0].landmarks)
    pts = (np.array(points) + 0.5) / model.resolution
    return {"model": model_name, "samples": samples, "found": len(points),
            "mean": pts.mean(0).round(5).tolist(), "std": pts.std(0).round(5).tolist()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="dcgan-digiface-64", help="registry model name")
    p.add_argument("--samples", type=int, default=2000, help="generated images to measure")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--models-dir", default=None, help="model cache folder")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.model, args.samples, args.seed, args.models_dir), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
