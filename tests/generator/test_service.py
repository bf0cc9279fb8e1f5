"""The generator service over loopback: real server processes, the real DCGAN weights, user-supplied models."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request

import grpc
import numpy as np
import pytest
import torch

from interfacegan import codec
from interfacegan.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from services.cluster import free_port
from services.common.errors import status_details
from models import Registry, build_net, load_model, save_checkpoint

Z, W, WP = common_pb2.LATENT_SPACE_Z, common_pb2.LATENT_SPACE_W, common_pb2.LATENT_SPACE_WP
RAW, PNG, JPEG = common_pb2.IMAGE_FORMAT_RAW, common_pb2.IMAGE_FORMAT_PNG, common_pb2.IMAGE_FORMAT_JPEG


@pytest.fixture(scope="module")
def server(launch_service):
    metrics_port = free_port()
    proc = launch_service("generator", "--metrics-port", str(metrics_port), "--log-format", "text")
    proc.metrics_port = metrics_port
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield generator_pb2_grpc.GeneratorServiceStub(channel)


@pytest.fixture(scope="module")
def reference():
    torch.set_num_threads(1)
    return load_model("dcgan-digiface-64", "cpu")


def synthesize(stub, codes: np.ndarray, space=Z, fmt=RAW, model="", **kw) -> list:
    request = generator_pb2.SynthesizeRequest(model={"name": model}, codes=codec.latents(codes, space),
                                              format=fmt, **kw)
    replies = list(stub.Synthesize(request, timeout=120))
    offsets = [r.offset for r in replies]
    sizes = [len(r.images) for r in replies]
    assert offsets == [sum(sizes[:i]) for i in range(len(sizes))], "slices must be contiguous and in order"
    return [img for r in replies for img in r.images]


def error_of(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        result = call(*args, **kwargs)
        if hasattr(result, "__iter__") and not hasattr(result, "DESCRIPTOR"):
            list(result)
    return err.value


def test_list_models_and_model_info(stub):
    [info] = stub.ListModels(generator_pb2.ListModelsRequest(), timeout=10).models
    assert info.name == "dcgan-digiface-64" and info.architecture == "dcgan" and info.loaded
    assert info.resolution == 64 and info.device == "cpu" and info.backend == "torchscript"
    assert [(s.space, list(s.shape)) for s in info.latent_spaces] == [(Z, [100])]
    assert info.max_batch_size == 16 and info.max_request_codes == 4096 and info.precision == "float32"
    assert stub.GetModelInfo(generator_pb2.GetModelInfoRequest(), timeout=10) == info
    err = error_of(stub.GetModelInfo, generator_pb2.GetModelInfoRequest(model={"name": "stylegan-ffhq"}), timeout=10)
    assert err.code() == grpc.StatusCode.NOT_FOUND and "dcgan-digiface-64" in err.details()
    err = error_of(stub.GetModelInfo, generator_pb2.GetModelInfoRequest(model={"name": "", "version": "9"}),
                   timeout=10)
    assert err.code() == grpc.StatusCode.NOT_FOUND and "version" in err.details()


def test_sample_latents_is_seeded_reproducible_with_prefix(stub, reference):
    def sample(count, seed):
        reply = stub.SampleLatents(generator_pb2.SampleLatentsRequest(space=Z, count=count, seed=seed), timeout=10)
        assert reply.codes.space == Z
        return codec.array(reply.codes.codes)

    a, b = sample(4, 7), sample(10, 7)
    assert a.shape == (4, 100) and np.array_equal(a, b[:4]) and np.array_equal(a, sample(4, 7))
    assert not np.array_equal(a, sample(4, 8))
    assert np.array_equal(a, reference.sample(4, seed=7))
    for request, field in [(generator_pb2.SampleLatentsRequest(space=Z, count=0), "count"),
                           (generator_pb2.SampleLatentsRequest(space=Z, count=5000), "count"),
                           (generator_pb2.SampleLatentsRequest(space=W, count=2), "space"),
                           (generator_pb2.SampleLatentsRequest(count=2), "space")]:
        err = error_of(stub.SampleLatents, request, timeout=10)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert status_details(err)["fields"] == [field]
    err = error_of(stub.SampleLatents, generator_pb2.SampleLatentsRequest(space=W, count=2), timeout=10)
    assert "accepted: Z [100]" in err.details()


def test_synthesize_formats_match_the_in_process_model(stub, reference):
    codes = reference.sample(6, seed=3)
    raw = [codec.image_array(i) for i in synthesize(stub, codes, fmt=RAW)]
    expected = reference.synthesize(codes, "z", output="uint8").numpy()
    assert np.abs(np.stack(raw).astype(int) - expected).max() <= 1  # batch composition may round differently
    png = synthesize(stub, codes, fmt=PNG)
    assert all(i.encoded.startswith(b"\x89PNG") for i in png)
    assert all(np.array_equal(codec.image_array(p), r) for p, r in zip(png, raw))  # PNG is lossless
    jpeg = synthesize(stub, codes, fmt=JPEG)
    assert all(i.encoded.startswith(b"\xff\xd8") for i in jpeg)
    assert np.abs(codec.image_array(jpeg[0]).astype(int) - raw[0]).mean() < 6
    default = synthesize(stub, codes[:1], fmt=common_pb2.IMAGE_FORMAT_UNSPECIFIED)
    assert default[0].encoded.startswith(b"\x89PNG")


def test_bad_synthesize_requests_get_precise_errors(stub):
    good = codec.latents(np.zeros((2, 100), np.float32), Z)
    nan = np.zeros((2, 100), np.float32)
    nan[1, 5] = np.nan
    cases = [
        (generator_pb2.SynthesizeRequest(model={"name": "nope"}, codes=good), grpc.StatusCode.NOT_FOUND, None,
         "known: dcgan-digiface-64"),
        (generator_pb2.SynthesizeRequest(codes=codec.latents(np.zeros((2, 99), np.float32), Z)),
         grpc.StatusCode.INVALID_ARGUMENT, "codes.codes.shape", "have shape [N, 100]"),
        (generator_pb2.SynthesizeRequest(codes=codec.latents(nan, Z)),
         grpc.StatusCode.INVALID_ARGUMENT, "codes.codes.data", "NaN"),
        (generator_pb2.SynthesizeRequest(codes=codec.latents(np.zeros((4097, 100), np.float32), Z)),
         grpc.StatusCode.INVALID_ARGUMENT, "codes.codes.shape", "limit of 4096"),
        (generator_pb2.SynthesizeRequest(codes=codec.latents(np.zeros((2, 8, 100), np.float32), WP)),
         grpc.StatusCode.INVALID_ARGUMENT, "codes.space", "accepted: Z [100]"),
        (generator_pb2.SynthesizeRequest(codes=good, format=17), grpc.StatusCode.INVALID_ARGUMENT, "format",
         "accepted: PNG, JPEG, RAW"),
        (generator_pb2.SynthesizeRequest(codes=good, truncation_psi=1.5), grpc.StatusCode.INVALID_ARGUMENT,
         "truncation_psi", "(0, 1]"),
        (generator_pb2.SynthesizeRequest(), grpc.StatusCode.INVALID_ARGUMENT, "codes.codes", "Tensor of shape"),
    ]
    for request, code, field, says in cases:
        err = error_of(stub.Synthesize, request, timeout=10)
        assert err.code() == code, (err.code(), err.details())
        if field:
            assert status_details(err)["fields"] == [field], err.details()
        assert says in err.details(), err.details()


def test_two_thousand_codes_stream_back_in_order(stub, reference):
    codes = reference.sample(2000, seed=21)
    replies = list(stub.Synthesize(generator_pb2.SynthesizeRequest(codes=codec.latents(codes, Z),
                                                                   format=RAW), timeout=300))
    assert len(replies) > 1  # streamed: one reply per batch (or less), not one huge message
    assert [r.offset for r in replies] == sorted({r.offset for r in replies})
    flat = [i for r in replies for i in r.images]
    assert len(flat) == 2000
    for k in (0, 999, 1999):
        one = reference.synthesize(codes[k:k + 1], "z", output="uint8").numpy()[0]
        assert np.abs(codec.image_array(flat[k]).astype(int) - one).max() <= 1


def _metric(server, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    pattern = rf'^{re.escape(name)}\{{[^}}]*queue="dcgan-digiface-64"[^}}]*\}} ([0-9.e+]+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def test_concurrent_clients_share_batches(server, reference):
    codes = reference.sample(48, seed=5)
    count0, sum0 = _metric(server, "ifgan_batch_size_count"), _metric(server, "ifgan_batch_size_sum")

    async def main():
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)

            async def one(i):
                request = generator_pb2.SynthesizeRequest(codes=codec.latents(codes[i:i + 1], Z),
                                                          format=RAW)
                return [r async for r in stub.Synthesize(request, timeout=60)]
            return await asyncio.gather(*[one(i) for i in range(48)])

    replies = asyncio.run(main())
    for i, reply in enumerate(replies):  # every client got its own image back
        one = reference.synthesize(codes[i:i + 1], "z", output="uint8").numpy()[0]
        assert np.abs(codec.image_array(reply[0].images[0]).astype(int) - one).max() <= 1
    batches = _metric(server, "ifgan_batch_size_count") - count0
    items = _metric(server, "ifgan_batch_size_sum") - sum0
    assert items == 48 and batches < 48, (batches, items)  # several requests ran together


def test_expired_deadline_is_reported(stub, reference):
    request = generator_pb2.SynthesizeRequest(codes=codec.latents(reference.sample(4000, seed=1), Z),
                                              format=RAW)
    err = error_of(stub.Synthesize, request, timeout=0.3)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(synthesize(stub, reference.sample(1, seed=2))) == 1  # and the server moves on


# --- user-supplied models, ONNX Runtime backend -------------------------------------------------------------
@pytest.fixture(scope="module")
def user_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user-models")
    torch.manual_seed(3)
    net = build_net("stylegan2", 32)
    net.after_load()
    save_checkpoint(net, folder / "sg2.pt")
    broken = dict(net.state_dict())
    del broken["conv1.activate.bias"]
    torch.save({"g_ema": broken, "args": {}}, folder / "broken.pt")
    (folder / "models.json").write_text(json.dumps([{"name": "broken-sg2", "architecture": "stylegan2",
                                                     "weights": "broken.pt", "resolution": 32}]))
    registry = Registry()
    registry.register_flag(f"sg2=stylegan2:{folder / 'sg2.pt'}:32")
    return folder, registry.load("sg2")


def test_user_models_and_the_onnxruntime_backend(launch_service, user_models, reference):
    folder, sg2 = user_models
    proc = launch_service("generator", "--model", f"sg2=stylegan2:{folder / 'sg2.pt'}:32",
                          "--models-json", str(folder / "models.json"), "--backend", "onnxruntime")
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)
            infos = {m.name: m for m in stub.ListModels(generator_pb2.ListModelsRequest(), timeout=10).models}
            assert set(infos) == {"dcgan-digiface-64", "sg2", "broken-sg2"}
            assert infos["dcgan-digiface-64"].backend == "onnxruntime" and infos["dcgan-digiface-64"].loaded
            assert not infos["sg2"].loaded  # user models load on first use
            assert [(s.space, list(s.shape)) for s in infos["sg2"].latent_spaces] == [(Z, [512]), (W, [512]),
                                                                                       (WP, [8, 512])]
            # ONNX Runtime output equals torch within one uint8 level.
            codes = reference.sample(3, seed=4)
            onnx = np.stack([codec.image_array(i) for i in synthesize(stub, codes)])
            assert np.abs(onnx.astype(int) - reference.synthesize(codes, "z", output="uint8").numpy()).max() <= 1
            # W+ codes from the server's mapping network synthesize like the in-process model.
            reply = stub.SampleLatents(generator_pb2.SampleLatentsRequest(model={"name": "sg2"}, space=WP, count=2,
                                                                          seed=9), timeout=60)
            wp = codec.array(reply.codes.codes)
            assert wp.shape == (2, 8, 512) and np.allclose(wp, sg2.sample(2, seed=9, space="wp"), atol=1e-4)
            served = np.stack([codec.image_array(i) for i in synthesize(stub, wp, space=WP, model="sg2")])
            assert np.abs(served.astype(int) - sg2.synthesize(wp, "wp", output="uint8").numpy()).max() <= 1
            info = stub.GetModelInfo(generator_pb2.GetModelInfoRequest(model={"name": "sg2"}), timeout=10)
            assert info.loaded and info.architecture == "stylegan2" and info.default_truncation_layers == 8
            # A checkpoint with a missing key is refused, the key named, and the server keeps serving.
            err = error_of(stub.Synthesize, generator_pb2.SynthesizeRequest(
                model={"name": "broken-sg2"}, codes=codec.latents(np.zeros((1, 512), np.float32), Z)),
                timeout=60)
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "missing keys: conv1.activate.bias" in err.details()
            info = stub.GetModelInfo(generator_pb2.GetModelInfoRequest(model={"name": "broken-sg2"}), timeout=10)
            assert not info.loaded and "conv1.activate.bias" in info.load_error
            err = error_of(stub.SampleLatents, generator_pb2.SampleLatentsRequest(
                model={"name": "sg2"}, space=WP, count=2, truncation_layers=9), timeout=10)
            assert status_details(err)["fields"] == ["truncation_layers"]
    finally:
        proc.stop()


def test_served_w_codes_have_the_reference_semantics(launch_service, tmp_path):
    """A W code is the untruncated mapping output, truncated by Synthesize (genforce/interfacegan), so the W
    and the W+ code of a seed render the image of that seed's Z code; ModelInfo says where truncation applies."""
    (tmp_path / "models.json").write_text(json.dumps([{
        "name": "sg", "architecture": "stylegan", "resolution": 64, "weights": "random:5",
        "options": {"max_channels": 32, "w_dim": 64}}]))
    proc = launch_service("generator", "--models-json", str(tmp_path / "models.json"), "--preload", "sg")
    with grpc.insecure_channel(proc.address) as channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        infos = {m.name: m for m in stub.ListModels(generator_pb2.ListModelsRequest(), timeout=10).models}
        assert [(s.space, s.truncated_at_synthesis) for s in infos["sg"].latent_spaces] == [
            (Z, True), (W, True), (WP, False)]
        assert [s.truncated_at_synthesis for s in infos["dcgan-digiface-64"].latent_spaces] == [False]
        assert (round(infos["sg"].default_truncation_psi, 6), infos["sg"].default_truncation_layers) == (0.7, 8)

        def sample(space):
            reply = stub.SampleLatents(generator_pb2.SampleLatentsRequest(model={"name": "sg"}, space=space,
                                                                          count=3, seed=12), timeout=30)
            return codec.array(reply.codes.codes)

        def render(codes, space, **kw):
            return np.stack([codec.image_array(i) for i in synthesize(stub, codes, space=space, model="sg", **kw)])

        z, w, wp = sample(Z), sample(W), sample(WP)
        reference = Registry()
        reference.register_json(str(tmp_path / "models.json"))
        model = reference.load("sg")
        with torch.no_grad():
            mapped = model.net.map_z(model.net.normalize_z(torch.from_numpy(z))).numpy()
        assert np.allclose(w, mapped, atol=1e-4)  # the code holds no truncation
        from_z = render(z, Z).astype(int)
        assert np.abs(render(w, W).astype(int) - from_z).max() <= 1
        assert np.abs(render(wp, WP).astype(int) - from_z).max() <= 1
        # Synthesize truncates W codes: without truncation (psi 1) the same code renders another image.
        assert np.abs(render(w, W, truncation_psi=1.0).astype(int) - from_z).mean() > 1
        err = error_of(stub.SampleLatents, generator_pb2.SampleLatentsRequest(
            model={"name": "sg"}, space=W, count=2, truncation_psi=0.5), timeout=10)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and status_details(err)["fields"] == ["truncation_psi"]
        assert "give truncation_psi/truncation_layers to Synthesize" in err.details()
