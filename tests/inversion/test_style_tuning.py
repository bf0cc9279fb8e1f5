"""Pivotal tuning of style-based generators (small random-weight zoo models): the path a photo takes on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.common import variants
from services.inversion.quality import psnr
from services.inversion.tuning import TuningOptions, tune


@pytest.fixture(autouse=True)
def one_thread():
    """Tuning runs on one thread in the service's worker; two threads on a shared 2-core machine crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _wp(model, seed: int) -> torch.Tensor:
    """A W+ code as the inversion service hands it to tuning (the W code's truncation made explicit)."""
    w = torch.from_numpy(model.sample(1, seed=seed, space="w")).float()
    return model.net.synthesis_input(w, "w").detach()


@pytest.mark.parametrize("name", ["stylegan-tiny", "stylegan2-tiny"])
def test_tuning_makes_the_pivot_render_the_target_and_the_variant_reproduces_it(tiny_registry, name):
    torch.manual_seed(0)
    model = tiny_registry.load(name)
    net = model.net
    pivot = _wp(model, 5)
    with torch.no_grad():
        target = net.render(_wp(model, 6)).clamp(-1, 1)  # another image: tuning, not the code, must get there
    before = {k: v.clone() for k, v in net.state_dict().items()}
    tuned = tune(net, pivot, target, TuningOptions(steps=30, target_psnr=99, lr=1e-2))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # the base model is untouched
    assert tuned.steps == 30 and tuned.stopped == "max_steps"
    assert tuned.psnr[0] > tuned.first_psnr[0] + 3, (tuned.first_psnr, tuned.psnr)
    # Only what rendering a W+ code reaches is tuned: no mapping-network tensor travels in the variant.
    mapping = "mapping." if name == "stylegan-tiny" else "style."
    assert tuned.delta and not [k for k in tuned.delta if k.startswith(mapping)]
    assert set(tuned.delta) <= set(net.state_dict())
    assert all(v.abs().max() > 0 for v in tuned.delta.values())
    # The stored (float16) variant renders what tuning reported.
    blob = variants.encode(name, model.spec.version, {k: v.numpy() for k, v in tuned.delta.items()})
    _, delta = variants.decode(blob, 64 << 20)
    with torch.no_grad():
        again = variants.apply(net, delta).render(pivot)
    assert float(psnr(again.clamp(-1, 1), tuned.images.clamp(-1, 1))[0]) > 35


def test_locality_codes_lie_at_the_edit_distance_on_every_layer():
    from services.inversion.tuning import _near
    pivots = torch.randn(3, 4, 16)
    codes, owner = _near(pivots, 2, 3.0, torch.Generator().manual_seed(0))
    assert owner.tolist() == [0, 0, 1, 1, 2, 2]
    move = codes - pivots[owner]
    assert np.allclose(move.norm(dim=-1).numpy(), 3.0, atol=1e-5)
    assert torch.allclose(move, move[:, :1].expand_as(move))  # one W direction on every layer
    assert not torch.allclose(move[0], move[1])  # each code its own direction
