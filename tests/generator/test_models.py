"""Model zoo: published checkpoint layouts, forward shapes, strict loading, round trips, latent spaces."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from services.generator import backends
from models import (GeneratorModel, ModelSpec, Registry, WeightsError, build_net, load_model,
                                       read_checkpoint, save_checkpoint)
from models.layers import fused_upconv_kernel

#: Largest |onnxruntime - torch| difference accepted on [-1, 1] images (float32); ~1/40 of a uint8 level.
ONNX_TOLERANCE = 1e-4

torch.set_num_threads(1)

# --- the published layouts, written out independently of the implementation -------------------------------
WIDTHS_1024 = [512, 512, 512, 512, 512, 256, 128, 64, 32, 16]  # latent, then 4 px ... 1024 px


def pggan_layout(res: int) -> dict[str, tuple]:
    """Converted PGGAN (genforce/interfacegan): lod, layer{0..}, output{0..}."""
    w = WIDTHS_1024[: int(math.log2(res))]
    out = {"lod": ()}
    for b in range(1, len(w)):
        k = 4 if b == 1 else 3
        out[f"layer{2 * b - 2}.conv.weight"] = (w[b], w[b - 1], k, k)
        out[f"layer{2 * b - 2}.wscale.bias"] = (w[b],)
        out[f"layer{2 * b - 1}.conv.weight"] = (w[b], w[b], 3, 3)
        out[f"layer{2 * b - 1}.wscale.bias"] = (w[b],)
        out[f"output{b - 1}.conv.weight"] = (3, w[b], 1, 1)
        out[f"output{b - 1}.wscale.bias"] = (3,)
    return out


def stylegan_layout(res: int) -> dict[str, tuple]:
    """Converted StyleGAN (genforce/interfacegan), fused upsampling from 128 px on; no truncation.truncation."""
    out = {}
    for i in range(8):
        out[f"mapping.dense{i}.linear.weight"] = (512, 512)
        out[f"mapping.dense{i}.wscale.bias"] = (512,)
    out["truncation.w_avg"] = (512,)
    out["synthesis.lod"] = ()
    w = WIDTHS_1024[: int(math.log2(res))]
    out["synthesis.layer0.first_layer"] = (1, 512, 4, 4)
    for i in range(2 * len(w) - 2):
        b = i // 2 + 1
        r = 2 ** (b + 1)
        c, cin = w[b], (w[b - 1] if i % 2 == 0 else w[b])
        p = f"synthesis.layer{i}"
        if i > 0:
            if i % 2 == 0 and r >= 128:
                out[f"{p}.weight"] = (3, 3, cin, c)
            else:
                out[f"{p}.conv.weight"] = (c, cin, 3, 3)
        if i > 0 and i % 2 == 0:
            out[f"{p}.blur.kernel"] = (c, 1, 3, 3)
        out[f"{p}.epilogue.apply_noise.weight"] = (c,)
        out[f"{p}.epilogue.apply_noise.noise"] = (1, 1, r, r)
        out[f"{p}.epilogue.bias"] = (c,)
        out[f"{p}.epilogue.style_mod.dense.linear.weight"] = (2 * c, 512)
        out[f"{p}.epilogue.style_mod.dense.wscale.bias"] = (2 * c,)
    for k in range(len(w) - 1):
        out[f"synthesis.output{k}.conv.weight"] = (3, w[k + 1], 1, 1)
        out[f"synthesis.output{k}.bias"] = (3,)
    return out


def stylegan2_layout(res: int, cm: int = 2) -> dict[str, tuple]:
    """rosinality/stylegan2-pytorch g_ema (config-f channel table)."""
    ch = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}
    log = int(math.log2(res))
    out = {}
    for i in range(1, 9):
        out[f"style.{i}.weight"] = (512, 512)
        out[f"style.{i}.bias"] = (512,)
    out["input.input"] = (1, 512, 4, 4)

    def styled(p, cin, cout, k, up=False, act=True):
        out[f"{p}.conv.weight"] = (1, cout, cin, k, k)
        out[f"{p}.conv.modulation.weight"] = (cin, 512)
        out[f"{p}.conv.modulation.bias"] = (cin,)
        if up:
            out[f"{p}.conv.blur.kernel"] = (4, 4)
        if act:
            out[f"{p}.noise.weight"] = (1,)
            out[f"{p}.activate.bias"] = (cout,)

    styled("conv1", 512, 512, 3)
    styled("to_rgb1", 512, 3, 1, act=False)
    out["to_rgb1.bias"] = (1, 3, 1, 1)
    for n in range((log - 2) * 2 + 1):
        r = 2 ** ((n + 5) // 2)
        out[f"noises.noise_{n}"] = (1, 1, r, r)
    cin = 512
    for j, i in enumerate(range(3, log + 1)):
        cout = ch[2 ** i]
        styled(f"convs.{2 * j}", cin, cout, 3, up=True)
        styled(f"convs.{2 * j + 1}", cout, cout, 3)
        styled(f"to_rgbs.{j}", cout, 3, 1, act=False)
        out[f"to_rgbs.{j}.bias"] = (1, 3, 1, 1)
        out[f"to_rgbs.{j}.upsample.kernel"] = (4, 4)
        cin = cout
    return out


def layout_of(net) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("arch,expected", [("pggan", pggan_layout), ("stylegan", stylegan_layout),
                                           ("stylegan2", stylegan2_layout)])
@pytest.mark.parametrize("res", [32, 1024])
def test_state_dict_matches_published_layout(arch, expected, res):
    with torch.device("meta"):  # 1024 px layouts without allocating the weights
        net = build_net(arch, res)
    assert layout_of(net) == expected(res)


def test_published_1024_facts():
    with torch.device("meta"):
        sg, sg2, pg = build_net("stylegan", 1024), build_net("stylegan2", 1024), build_net("pggan", 1024)
    assert sg.latent_shapes == {"z": (512,), "w": (512,), "wp": (18, 512)}
    assert sg2.latent_shapes["wp"] == (18, 512)
    assert pg.latent_shapes == {"z": (512,)}
    assert "output8.conv.weight" in pg.state_dict() and "layer17.conv.weight" in pg.state_dict()
    assert "synthesis.layer16.weight" in sg.state_dict()  # fused upsampling at 1024 px
    assert "synthesis.layer8.conv.weight" in sg.state_dict()  # 64 px: nearest + conv


def test_dcgan_layout_is_the_real_checkpoint(models_dir):
    checkpoint = read_checkpoint(models_dir / "dcgan-digiface-64.pt")
    real = {k: tuple(v.shape) for k, v in checkpoint["netG_state_dict"].items()}
    assert layout_of(build_net("dcgan", 64)) == real
    assert sum(p.numel() for p in build_net("dcgan", 64).parameters()) == 3_576_704


def small(arch: str, res: int = 32, seed: int = 0, **options) -> GeneratorModel:
    torch.manual_seed(seed)
    net = build_net(arch, res, **options)
    net.after_load()
    return GeneratorModel(ModelSpec(f"{arch}-test", arch, res, f"random:{seed}"), net)


@pytest.mark.parametrize("arch", ["pggan", "stylegan", "stylegan2", "dcgan"])
def test_forward_shapes_every_space(arch):
    model = small(arch)
    for space, shape in model.latent_shapes.items():
        codes = model.sample(3, seed=1, space=space)
        assert codes.shape == (3, *shape) and codes.dtype == np.float32
        images = model.synthesize(codes, space)
        assert images.shape == (3, 3, 32, 32) and torch.isfinite(images).all()
        pixels = model.synthesize(codes, space, output="uint8")
        assert pixels.shape == (3, 32, 32, 3) and pixels.dtype == torch.uint8
    with pytest.raises(ValueError, match="shape"):
        model.synthesize(np.zeros((2, 7), np.float32), "z")


def test_save_load_round_trip_through_registry(tmp_path):
    for arch in ("pggan", "stylegan", "stylegan2"):
        model = small(arch, seed=4)
        path = save_checkpoint(model.net, tmp_path / f"{arch}.pt")
        registry = Registry()
        registry.register_flag(f"mine-{arch}={arch}:{path}:32")
        loaded = registry.load(f"mine-{arch}")
        assert layout_of(loaded.net) == layout_of(model.net)
        codes = model.sample(2, seed=9, space="z")
        assert torch.equal(loaded.synthesize(codes, "z"), model.synthesize(codes, "z")), arch
    ckpt = torch.load(tmp_path / "stylegan2.pt", weights_only=True)
    assert {"g_ema", "g", "d", "args"} <= set(ckpt)


def test_models_json_registration(tmp_path):
    model = small("stylegan2", seed=2)
    save_checkpoint(model.net, tmp_path / "sg2.pt")
    (tmp_path / "models.json").write_text(json.dumps([{"name": "faces", "architecture": "stylegan2",
                                                       "weights": "sg2.pt", "resolution": 32, "version": "3"}]))
    registry = Registry()
    [spec] = registry.register_json(tmp_path / "models.json")
    assert spec.version == "3" and spec.weights == str(tmp_path / "sg2.pt")
    assert registry.load("faces").latent_shapes["wp"] == (8, 512)
    with pytest.raises(ValueError, match="name=architecture:path:resolution"):
        registry.register_flag("broken")
    with pytest.raises(ValueError, match="unknown architecture"):
        registry.register_flag("x=biggan:/tmp/x.pt:64")


def test_loading_refuses_missing_and_unexpected_keys_by_name(tmp_path):
    model = small("stylegan", seed=1)
    state = dict(model.net.state_dict())
    del state["synthesis.layer3.epilogue.bias"]
    state["synthesis.layer99.conv.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    registry = Registry()
    registry.register_flag(f"bad=stylegan:{tmp_path / 'bad.pt'}:32")
    with pytest.raises(WeightsError) as err:
        registry.load("bad")
    assert "missing keys: synthesis.layer3.epilogue.bias" in str(err.value)
    assert "unexpected keys: synthesis.layer99.conv.weight" in str(err.value)
    state = dict(model.net.state_dict())
    state["mapping.dense0.linear.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "shape.pt")
    registry.register_flag(f"shape=stylegan:{tmp_path / 'shape.pt'}:32")
    with pytest.raises(WeightsError, match=r"mapping.dense0.linear.weight has shape \[3, 3\], expected \[512, 512\]"):
        registry.load("shape")
    # A wrong architecture for a file is refused the same way, not half-loaded.
    registry.register_flag(f"wrong=pggan:{tmp_path / 'shape.pt'}:32")
    with pytest.raises(WeightsError, match="missing keys: layer0.conv.weight"):
        registry.load("wrong")
    # The converters' derived per-layer psi constants are accepted.
    state = dict(model.net.state_dict())
    state["truncation.truncation"] = torch.ones(1, 8, 1)
    model.net.load_checkpoint(state)


def test_w_plus_codes_come_from_the_mapping_network():
    for arch in ("stylegan", "stylegan2"):
        model = small(arch, seed=3)
        z = model.sample(4, seed=5, space="z")
        wp = model.sample(4, seed=5, space="wp", truncation_psi=1.0)
        with torch.no_grad():
            w = model.net.map_z(model.net.normalize_z(torch.from_numpy(z)))
        assert np.allclose(wp, w.unsqueeze(1).repeat(1, wp.shape[1], 1).numpy(), atol=1e-5)
        assert np.allclose(model.sample(4, seed=5, space="w", truncation_psi=1.0), w.numpy(), atol=1e-5)
        # Default sampling applies the model's truncation; synthesis from Z does the same internally.
        wp_default = model.sample(4, seed=5, space="wp")
        assert torch.allclose(model.synthesize(wp_default, "wp"), model.synthesize(z, "z"), atol=1e-4)
        # W codes are not Gaussian noise: they are centred on w_avg, not on 0.
        assert not np.allclose(wp[:, 0].mean(0), 0, atol=0.05)


def test_w_codes_are_untruncated_and_render_like_their_seed_z_code():
    """genforce/interfacegan's semantics: W = the mapping output, truncation applied at synthesis."""
    for arch, res, options in (("stylegan", 64, {"max_channels": 32, "w_dim": 64}),
                               ("stylegan2", 32, {"style_dim": 64, "n_mlp": 2, "channel_multiplier": 1})):
        model = small(arch, res, seed=4, **options)
        z = model.sample(3, seed=8, space="z")
        w = model.sample(3, seed=8, space="w")
        wp = model.sample(3, seed=8, space="wp")
        with torch.no_grad():
            mapped = model.net.map_z(model.net.normalize_z(torch.from_numpy(z)))
        assert np.allclose(w, mapped.numpy(), atol=1e-5)  # no truncation in the code itself
        with torch.no_grad():
            from_z = model.synthesize(z, "z")
            assert torch.allclose(model.synthesize(w, "w"), from_z, atol=1e-4)
            assert torch.allclose(model.synthesize(wp, "wp"), from_z, atol=1e-4)
            # A request's own truncation reaches Z and W input alike.
            assert torch.allclose(model.synthesize(w, "w", truncation_psi=0.5, truncation_layers=3),
                                  model.synthesize(z, "z", truncation_psi=0.5, truncation_layers=3), atol=1e-4)
        with pytest.raises(ValueError, match="untruncated"):
            model.sample(1, seed=8, space="w", truncation_psi=0.5)
    # StyleGAN's reference setting: psi 0.7 toward w_avg on the first 8 of its 10 layers at 64 px, at synthesis.
    model = small("stylegan", 64, seed=4, max_channels=32, w_dim=64)
    assert (model.default_truncation_psi, model.default_truncation_layers) == (0.7, 8)
    w = torch.from_numpy(model.sample(2, seed=8, space="w"))
    x = model.synthesis_input(w, "w")
    avg = model.net.w_avg().view(1, -1)
    assert x.shape == (2, 10, 64)
    assert torch.allclose(x[:, :8], (avg + 0.7 * (w - avg)).unsqueeze(1).expand(-1, 8, -1), atol=1e-6)
    assert torch.equal(x[:, 8:], w.unsqueeze(1).expand(-1, 2, -1))


def test_truncation_pulls_the_first_layers_only():
    model = small("stylegan", seed=2)
    wp_free = model.sample(2, seed=1, space="wp", truncation_psi=1.0)
    wp = model.sample(2, seed=1, space="wp", truncation_psi=0.5, truncation_layers=3)
    avg = model.net.w_avg().numpy()
    assert np.allclose(wp[:, :3], avg + 0.5 * (wp_free[:, :3] - avg), atol=1e-5)
    assert np.allclose(wp[:, 3:], wp_free[:, 3:])


def test_stored_noise_makes_output_deterministic():
    model = small("stylegan2", seed=6)
    codes = model.sample(2, seed=2, space="wp")
    first = model.synthesize(codes, "wp")
    assert torch.equal(first, model.synthesize(codes, "wp"))
    model.net.noises.noise_3.normal_()
    assert not torch.allclose(first, model.synthesize(codes, "wp"))


def test_fused_upsampling_equals_upsample_then_flipped_conv():
    x, w = torch.randn(2, 4, 5, 5), torch.randn(3, 3, 4, 6)
    fused = F.conv_transpose2d(x, fused_upconv_kernel(w), stride=2, padding=1)
    plain = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w.flip(0, 1).permute(3, 2, 0, 1), padding=1)
    assert torch.allclose(fused, plain, atol=1e-4)
    model = small("stylegan", res=128, max_channels=16)  # narrow, so a 128 px fused model stays tiny
    assert "synthesis.layer10.weight" in model.net.state_dict()
    assert model.synthesize(model.sample(1, 0, "z"), "z").shape == (1, 3, 128, 128)


def test_real_dcgan_sampling_is_seeded_with_the_prefix_property(models_dir):
    model = load_model("dcgan-digiface-64", "cpu")
    a, b = model.sample(5, seed=11), model.sample(9, seed=11)
    assert np.array_equal(a, b[:5]) and not np.array_equal(a, model.sample(5, seed=12))
    images = model.synthesize(a, "z")
    assert images.shape == (5, 3, 64, 64) and images.min() >= -1 and images.max() <= 1
    assert images.std() > 0.2  # real faces, not a constant: the weights did load
    with pytest.raises(ValueError, match="not supported"):
        model.sample(2, seed=1, space="w")
    # Differentiable: an encoder can be trained through the generator.
    z = torch.from_numpy(a).requires_grad_(True)
    model.synthesize(z, "z").mean().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("arch", ["dcgan", "stylegan2"])
def test_onnxruntime_backend_equals_torch(arch, models_dir):
    model = load_model() if arch == "dcgan" else small(arch, seed=1)
    codes = model.sample(3, seed=4, space="z")
    with torch.no_grad():
        reference = model.synthesize(codes, "z")
    provider = backends.attach_onnx(model, threads=1)
    assert model.backend == "onnxruntime" and provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    x = model.synthesis_input(torch.from_numpy(codes), "z")
    onnx_images = model._synthesis_fn(x)
    assert (onnx_images - reference).abs().max().item() <= ONNX_TOLERANCE * max(1.0, reference.abs().max())
    uint8 = model.synthesize(codes, "z", output="uint8").int()
    from models import to_uint8
    assert (uint8 - to_uint8(reference).int()).abs().max() <= 1


@pytest.mark.parametrize("arch", ["dcgan", "pggan", "stylegan", "stylegan2"])
def test_torchscript_backend_equals_eager_at_any_batch_size(arch, models_dir):
    model = load_model() if arch == "dcgan" else small(arch, seed=2)
    space = "z" if arch in ("dcgan", "pggan") else "wp"
    codes = model.sample(7, seed=5, space=space)  # a batch size the trace never saw
    eager = model.synthesize(codes, space, output="uint8").int()
    assert backends.attach_torchscript(model) and model.backend == "torchscript"
    traced = model.synthesize(codes, space, output="uint8").int()
    assert traced.shape == eager.shape
    assert (traced - eager).abs().max().item() <= backends.TORCHSCRIPT_TOLERANCE
    assert model.synthesize(codes[:1], space, output="uint8").shape[0] == 1


def test_torchscript_backend_falls_back_to_eager_when_the_trace_differs(models_dir):
    model = load_model()

    class Noisy(torch.nn.Module):  # fresh noise per call: no trace can reproduce eager output
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.main(x.reshape(x.shape[0], -1, 1, 1)) + torch.rand(1) * 4

    noisy = Noisy(model.net)
    model.net.render = noisy.forward
    assert not backends.attach_torchscript(model)
    assert model.backend == "torch" and model._uint8_fn is None
