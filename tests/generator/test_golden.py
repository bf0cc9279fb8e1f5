"""PGGAN, StyleGAN and StyleGAN2 against golden outputs of the reference implementations.

tests/generator/golden/ holds, per case, what genforce/interfacegan's converted-weights generators and
rosinality/stylegan2-pytorch's `g_ema` produced at 16 px from numpy-seeded random weights (see its README):
the weights recipe (cases.json: every key of the reference state dict in order, with its shape and the normal
it was drawn from, PCG64(weights_seed)), the constant buffers, the codes and the expected images. This test
draws the same weights, writes them in the reference's checkpoint container, loads that file through the
registry and compares our images with the reference's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models import ModelSpec, Registry

GOLDEN = Path(__file__).parent / "golden"
CASES = json.loads((GOLDEN / "cases.json").read_text())

#: Largest |ours - reference| allowed on the float images, relative to the reference images' peak |value|.
#: Both sides run float32; the implementations order their sums differently (e.g. StyleGAN2 modulates the
#: input instead of the weights), which moves images by ~1e-6 of their range. Any wrong constant, padding,
#: scale or layer order moves them by 1e-2 or more.
FLOAT_TOLERANCE = 1e-4
#: 8-bit pixels may differ by one step where a value sits on a rounding boundary.
PIXEL_TOLERANCE = 1

torch.set_num_threads(1)


def reference_checkpoint(case: dict, data: np.lib.npyio.NpzFile) -> dict:
    """The case's state dict: random keys drawn in order from PCG64(weights_seed), constants as stored."""
    rng = np.random.Generator(np.random.PCG64(case["weights_seed"]))
    state = {}
    for entry in case["keys"]:
        if entry.get("constant"):
            value = data[f"const/{entry['key']}"]
        else:
            value = entry["mean"] + entry["std"] * rng.standard_normal(tuple(entry["shape"]))
        state[entry["key"]] = torch.from_numpy(np.asarray(value, np.float32).reshape(entry["shape"]))
    return state


def load_ours(name: str, case: dict, data, tmp_path: Path):
    """Writes the checkpoint the way the reference stores it and loads it through the registry."""
    state = reference_checkpoint(case, data)
    if case["architecture"] == "stylegan2":
        o = case["options"]
        path = tmp_path / f"{name}.pt"
        torch.save({"g": state, "d": {}, "g_ema": state, "latent_avg": torch.from_numpy(data["latent_avg"]),
                    "args": argparse.Namespace(size=case["resolution"], latent=o["style_dim"], n_mlp=o["n_mlp"],
                                               channel_multiplier=o["channel_multiplier"])}, path)
    else:
        path = tmp_path / f"{name}.pth"
        torch.save(state, path)
    registry = Registry()
    registry.register(ModelSpec(name, case["architecture"], case["resolution"], str(path),
                                options=tuple(sorted(case["options"].items()))))
    return registry.load(name)


def assert_close(ours: torch.Tensor, expected: np.ndarray, what: str) -> None:
    ours = ours.detach().cpu().numpy()
    assert ours.shape == expected.shape, f"{what}: shape {ours.shape}, reference {expected.shape}"
    error = float(np.abs(ours - expected).max()) / float(np.abs(expected).max())
    assert error <= FLOAT_TOLERANCE, f"{what}: max |ours - reference| is {error:.2e} of the peak (allowed " \
                                     f"{FLOAT_TOLERANCE:.0e})"


def assert_pixels(ours: torch.Tensor, expected: np.ndarray, what: str) -> None:
    diff = np.abs(ours.numpy().astype(int) - expected.astype(int))
    assert diff.max() <= PIXEL_TOLERANCE, f"{what}: {int((diff > PIXEL_TOLERANCE).sum())} pixels differ by up to " \
                                          f"{diff.max()}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_the_reference_implementation(name, tmp_path):
    case = CASES[name]
    data = np.load(GOLDEN / f"{name}.npz")
    model = load_ours(name, case, data, tmp_path)
    with torch.no_grad():
        assert_close(model.synthesize(data["codes_z"], "z"), data["image_z"], f"{name} from Z")
        assert_pixels(model.synthesize(data["codes_z"], "z", output="uint8"), data["pixels_z"], f"{name} Z pixels")
        if "w_z" in data:  # the mapping network alone (z normalised as each reference does)
            z = torch.from_numpy(data["codes_z"])
            assert_close(model.net.map_z(model.net.normalize_z(z)), data["w_z"], f"{name} mapping")
        if "codes_wp" in data:
            assert_close(model.synthesize(data["codes_wp"], "wp"), data["image_wp"], f"{name} from W+")
            assert_pixels(model.synthesize(data["codes_wp"], "wp", output="uint8"), data["pixels_wp"],
                          f"{name} W+ pixels")
        if "image_z_truncated" in data:  # the checkpoint's latent_avg as the truncation centre
            psi = case["truncation_psi"]
            assert_close(model.synthesize(data["codes_z"], "z", truncation_psi=psi), data["image_z_truncated"],
                         f"{name} from Z, psi {psi}")


def test_the_golden_weights_are_not_degenerate():
    """Images that saturate or vanish would let a wrong layer pass; every case keeps detail in its pixels."""
    for name in CASES:
        data = np.load(GOLDEN / f"{name}.npz")
        for key in (k for k in data.files if k.startswith("pixels")):
            pixels = data[key].astype(float)
            assert pixels.std() > 30 and ((pixels > 0) & (pixels < 255)).mean() > 0.5, (name, key)
