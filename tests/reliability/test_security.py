"""Security on real services: TLS and mTLS on every service (internal channels included), bearer-token auth with
health exempt, limits (message size, batch size, queue, concurrent jobs), and checkpoints that never run pickled code.
"""

from __future__ import annotations

import io
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from interfacegan import codec
from interfacegan.v1 import (boundary_pb2, boundary_pb2_grpc, common_pb2, editor_pb2, editor_pb2_grpc,
                             generator_pb2, generator_pb2_grpc, inversion_pb2, inversion_pb2_grpc, scorer_pb2,
                             scorer_pb2_grpc)
from services.cluster import SERVICES, HealthCredentials, ServiceProcess, check_health, status_from_state
from services.common import errors
from models import registry
from models.base import WeightsError

TOKEN = "s3cret-" + uuid.uuid4().hex
C = grpc.StatusCode
Z = common_pb2.LATENT_SPACE_Z

#: One input-free RPC per service, to show a call gets through (or is refused).
PROBES = {
    "generator": lambda ch: generator_pb2_grpc.GeneratorServiceStub(ch).ListModels(generator_pb2.ListModelsRequest(),
                                                                                   timeout=20),
    "scorer": lambda ch: scorer_pb2_grpc.ScorerServiceStub(ch).ListAttributes(scorer_pb2.ListAttributesRequest(),
                                                                              timeout=20),
    "boundary": lambda ch: boundary_pb2_grpc.BoundaryServiceStub(ch).ListBoundaries(
        boundary_pb2.ListBoundariesRequest(), timeout=20),
    "inversion": lambda ch: inversion_pb2_grpc.InversionServiceStub(ch).GetInfo(
        inversion_pb2.GetInversionInfoRequest(), timeout=20),
    "editor": lambda ch: editor_pb2_grpc.EditorServiceStub(ch).GetCatalog(editor_pb2.GetCatalogRequest(), timeout=60),
}
AUTH = (("authorization", f"Bearer {TOKEN}"),)


class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds metadata to every call (sync gRPC has no per-channel metadata)."""

    def __init__(self, metadata):
        self.metadata = tuple(metadata)

    def _details(self, base):
        details = _Details()
        details.method, details.timeout, details.credentials = base.method, base.timeout, base.credentials
        details.wait_for_ready, details.compression = base.wait_for_ready, base.compression
        details.metadata = tuple(base.metadata or ()) + self.metadata
        return details

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)


class _Details(grpc.ClientCallDetails):
    pass


def authed(channel, metadata=AUTH):
    return grpc.intercept_channel(channel, _Metadata(metadata))


def creds(pki, cert: bool = True, other=None):
    source = other or pki
    return grpc.ssl_channel_credentials(
        root_certificates=Path(pki["ca"]).read_bytes(),
        private_key=Path(source["client_key"]).read_bytes() if cert else None,
        certificate_chain=Path(source["client_cert"]).read_bytes() if cert else None)


def health(channel, timeout=5.0) -> str:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def service_credentials(pki) -> HealthCredentials:
    """What the services themselves use to call each other (and what `cluster status` checks health with)."""
    return HealthCredentials.from_env({"IFGAN_TLS_CA": pki["ca"], "IFGAN_TLS_CERT": pki["server_cert"],
                                       "IFGAN_TLS_KEY": pki["server_key"]})


# -- TLS and mTLS on every service ---------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["tls", "mtls"])
def secured(request, pki, redis_url, models_dir, tmp_path_factory):
    """All five services over TLS (token from a secret file) or mTLS (token from IFGAN_AUTH_TOKEN), wired together
    over TLS channels carrying the token and, under mTLS, the services' client certificate."""
    mode = request.param
    folder = tmp_path_factory.mktemp(f"secured-{mode}")
    args = ["--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"], "--tls-ca", pki["ca"],
            "--drain-seconds", "0"]
    env = {"IFGAN_MODELS_DIR": str(models_dir), "IFGAN_REDIS_URL": redis_url,
           "IFGAN_REDIS_PREFIX": f"sec{uuid.uuid4().hex[:8]}:", "IFGAN_DATA_DIR": str(folder / "data")}
    if mode == "mtls":
        args += ["--tls-client-ca", pki["ca"]]
        env["IFGAN_AUTH_TOKEN"] = TOKEN
    else:
        secret = folder / "token"
        secret.write_text(TOKEN + "\n")
        args += ["--auth-token-file", str(secret)]
    procs: dict[str, ServiceProcess] = {}
    try:
        for name in SERVICES:
            procs[name] = ServiceProcess.start(name, args, env=env, log_dir=folder / "logs")
            env[f"IFGAN_{name.upper()}_ADDRESS"] = procs[name].address
        for proc in procs.values():
            proc.wait_serving(240, credentials=service_credentials(pki))
        yield mode, procs
    finally:
        for proc in procs.values():  # all at once: each takes seconds to shut down
            if proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            proc.stop()


@pytest.mark.parametrize("service", SERVICES)
def test_tls_call_works_and_plaintext_is_refused(secured, pki, service):
    mode, procs = secured
    address = procs[service].address
    # mTLS: our client certificate; TLS: no client certificate needed.
    with grpc.secure_channel(address, creds(pki, cert=mode == "mtls")) as channel:
        PROBES[service](authed(channel))
        assert health(channel) == "SERVING"  # health needs no token
        with pytest.raises(grpc.RpcError) as err:
            PROBES[service](channel)  # no token
        assert err.value.code() == C.UNAUTHENTICATED and "Bearer" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            PROBES[service](authed(channel, (("authorization", "Bearer wrong"),)))
        assert err.value.code() == C.UNAUTHENTICATED
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            PROBES[service](authed(channel))
        assert err.value.code() == C.UNAVAILABLE


def test_cluster_status_checks_a_tls_cluster_over_tls(secured, pki, tmp_path):
    mode, procs = secured
    credentials = service_credentials(pki)
    for proc in procs.values():
        assert check_health(proc.address, credentials=credentials) == "SERVING"
        assert check_health(proc.address) == "UNREACHABLE"  # plaintext cannot speak to a TLS port
    import json
    state = {"redis": None, "tls": {"ca": pki["ca"], "cert": pki["server_cert"], "key": pki["server_key"],
                                    "server_name": ""},
             "services": {n: {"pid": p.pid, "port": p.port, "log": str(p.log_path)} for n, p in procs.items()}}
    (tmp_path / "cluster.json").write_text(json.dumps(state))
    lines: list[str] = []
    assert status_from_state(tmp_path, log=lines.append), lines
    assert all("SERVING" in line for line in lines) and len(lines) == len(SERVICES)


@pytest.mark.parametrize("service", SERVICES)
def test_mtls_refuses_callers_without_a_trusted_client_certificate(secured, pki, rogue_pki, service):
    mode, procs = secured
    address = procs[service].address
    attempts = {"no client certificate": creds(pki, cert=False),
                "certificate of another CA": creds(pki, other=rogue_pki)}
    for what, credentials in attempts.items():
        with grpc.secure_channel(address, credentials) as channel:
            if mode == "tls":  # TLS only: any caller may connect; the token still guards the RPCs
                PROBES[service](authed(channel))
                continue
            with pytest.raises(grpc.RpcError) as err:
                PROBES[service](authed(channel))
            assert err.value.code() == C.UNAVAILABLE, what
            with pytest.raises(grpc.RpcError):
                health(channel)  # under mTLS not even health answers an unknown caller
    assert procs[service].proc.poll() is None


def test_internal_channels_carry_tls_and_the_token(secured, pki):
    """The boundary service calls the generator and the scorer (the re-scoring study); the editor calls all."""
    mode, procs = secured
    with grpc.secure_channel(procs["boundary"].address, creds(pki)) as channel:
        stub = boundary_pb2_grpc.BoundaryServiceStub(authed(channel))
        rng = np.random.default_rng(3)
        refs = []
        for attribute in ("sec-a", "sec-b"):
            buf = io.BytesIO()
            np.save(buf, rng.standard_normal((1, 100)))
            refs.append(stub.ImportBoundary(boundary_pb2.ImportBoundaryRequest(
                model="dcgan-digiface-64", attribute=attribute, space=Z, npy=buf.getvalue()), timeout=30).info.ref)
        replies = list(stub.AnalyzeBoundaries(boundary_pb2.AnalyzeBoundariesRequest(
            boundaries=refs, rescore_samples=4, rescore_attributes=["gender"], seed=1), timeout=180))
        assert replies[-1].scored_attributes == ["gender"] and replies[-1].rescore.shape == [2, 1]
    with grpc.secure_channel(procs["editor"].address, creds(pki)) as channel:
        catalog = editor_pb2_grpc.EditorServiceStub(authed(channel)).GetCatalog(
            editor_pb2.GetCatalogRequest(), timeout=60)
        assert catalog.models and catalog.attributes
        assert {"sec-a", "sec-b"} <= {b.ref.attribute for b in catalog.boundaries}


# -- limits ---------------------------------------------------------------------------------------------------

class Evil:
    """Unpickling this creates a marker file: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def evil_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("evil")
    marker = folder / "pwned"
    path = folder / "evil.pt"
    net = registry.build_net("dcgan", 64)
    state = net.checkpoint()
    state = {k: (Evil(marker) if i == 0 else v) for i, (k, v) in enumerate(state.items())} \
        if isinstance(state, dict) else {"payload": Evil(marker)}
    torch.save(state, path)
    # Control: the payload is real (a plain pickle load runs it) ...
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_checkpoint_loader_refuses_a_malicious_pickle(evil_checkpoint):
    path, marker = evil_checkpoint
    net = registry.build_net("dcgan", 64)
    with pytest.raises(WeightsError, match="weights_only"):
        registry.load_weights(net, str(path))
    assert not marker.exists()


@pytest.fixture(scope="module")
def limited_generator(launch_service, evil_checkpoint):
    path, _ = evil_checkpoint
    return launch_service("generator", "--max-message-mb", "1", "--max-request-codes", "64", "--max-queue-size", "2",
                          "--max-batch-size", "4", "--model", f"evil=dcgan:{path}:64")


def test_served_malicious_checkpoint_is_refused_and_the_server_keeps_serving(limited_generator, evil_checkpoint):
    _, marker = evil_checkpoint
    with grpc.insecure_channel(limited_generator.address) as channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        request = generator_pb2.SynthesizeRequest(model=common_pb2.ModelRef(name="evil"),
                                                  codes=codec.latents(np.zeros((1, 100), np.float32), Z))
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Synthesize(request, timeout=60))
        assert err.value.code() == C.FAILED_PRECONDITION and "weights_only" in err.value.details()
        info = stub.GetModelInfo(generator_pb2.GetModelInfoRequest(model=common_pb2.ModelRef(name="evil")), timeout=10)
        assert not info.loaded and "weights_only" in info.load_error
        assert not marker.exists()
        assert health(channel) == "SERVING"
        assert list(stub.Synthesize(generator_pb2.SynthesizeRequest(codes=request.codes), timeout=60))


def test_message_and_batch_limits(limited_generator):
    with grpc.insecure_channel(limited_generator.address, options=[("grpc.max_send_message_length", 8 << 20)]) as ch:
        stub = generator_pb2_grpc.GeneratorServiceStub(ch)
        big = codec.latents(np.zeros((3000, 100), np.float32), Z)  # 1.2 MB > 1 MiB
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Synthesize(generator_pb2.SynthesizeRequest(codes=big), timeout=30))
        assert err.value.code() == C.RESOURCE_EXHAUSTED
        many = codec.latents(np.zeros((65, 100), np.float32), Z)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Synthesize(generator_pb2.SynthesizeRequest(codes=many), timeout=30))
        assert err.value.code() == C.INVALID_ARGUMENT and "limit of 64" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.SampleLatents(generator_pb2.SampleLatentsRequest(space=Z, count=65), timeout=30)
        assert err.value.code() == C.INVALID_ARGUMENT and "1 .. 64" in err.value.details()
        assert health(ch) == "SERVING"


def test_full_queue_answers_resource_exhausted_with_retry_information(limited_generator):
    """16 clients at once against a queue of 2: the overflow is refused at once with a retry hint, the rest served."""
    codes = codec.latents(np.random.default_rng(0).standard_normal((64, 100)).astype(np.float32), Z)
    outcomes, lock = [], threading.Lock()
    with grpc.insecure_channel(limited_generator.address) as channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)

        def one(_):
            started = time.monotonic()
            try:
                n = sum(len(r.images) for r in stub.Synthesize(generator_pb2.SynthesizeRequest(
                    codes=codes, format=common_pb2.IMAGE_FORMAT_RAW), timeout=120))
                result = ("OK", n, time.monotonic() - started, None)
            except grpc.RpcError as e:
                result = (e.code().name, 0, time.monotonic() - started, errors.status_details(e).get("retry_after"))
            with lock:
                outcomes.append(result)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(16)))
        assert health(channel) == "SERVING"
    codes_seen = {o[0] for o in outcomes}
    assert codes_seen <= {"OK", "RESOURCE_EXHAUSTED"}, outcomes
    assert "RESOURCE_EXHAUSTED" in codes_seen and "OK" in codes_seen
    assert all(o[1] == 64 for o in outcomes if o[0] == "OK")
    refused = [o for o in outcomes if o[0] == "RESOURCE_EXHAUSTED"]
    assert all(o[3] is not None and o[3] > 0 for o in refused), refused  # RetryInfo
    assert max(o[2] for o in refused) < 5.0  # refused at once, not after queueing


def test_concurrent_training_jobs_are_limited(launch_service, cluster, redis_url, tmp_path):
    """--max-jobs 1: a second job waits QUEUED until the first ends (here: is cancelled); with --max-queued-jobs 1
    a third is refused at once with RESOURCE_EXHAUSTED and a retry hint."""
    boundary = launch_service("boundary", "--redis-url", redis_url, "--redis-prefix", f"jobs{uuid.uuid4().hex[:6]}:",
                              "--data-dir", str(tmp_path / "data"), "--max-jobs", "1", "--max-queued-jobs", "1",
                              env={"IFGAN_GENERATOR_ADDRESS": cluster.services["generator"].address,
                                   "IFGAN_SCORER_ADDRESS": cluster.services["scorer"].address})
    with grpc.insecure_channel(boundary.address) as channel:
        stub = boundary_pb2_grpc.BoundaryServiceStub(channel)
        first = stub.TrainBoundaries(boundary_pb2.TrainBoundariesRequest(attributes=["gender"], num_samples=200_000,
                                                                         seed=1), timeout=120)
        first_id = next(first).job_id
        second = stub.TrainBoundaries(boundary_pb2.TrainBoundariesRequest(attributes=["gender"], num_samples=200_000,
                                                                          seed=2), timeout=120)
        update = next(second)
        assert update.state == boundary_pb2.JOB_STATE_QUEUED
        for running in stub.WatchJob(boundary_pb2.WatchJobRequest(job_id=first_id), timeout=30):
            if running.state != boundary_pb2.JOB_STATE_QUEUED:
                break
        assert running.state == boundary_pb2.JOB_STATE_RUNNING
        assert next(stub.WatchJob(boundary_pb2.WatchJobRequest(job_id=update.job_id), timeout=30)).state == \
            boundary_pb2.JOB_STATE_QUEUED
        with pytest.raises(grpc.RpcError) as err:
            list(stub.TrainBoundaries(boundary_pb2.TrainBoundariesRequest(attributes=["gender"], num_samples=200_000,
                                                                          seed=3), timeout=60))
        assert err.value.code() == C.RESOURCE_EXHAUSTED and "at most 1 may wait" in err.value.details()
        assert errors.status_details(err.value).get("retry_after", 0) > 0
        for job_id in (update.job_id, first_id):
            final = stub.CancelJob(boundary_pb2.CancelJobRequest(job_id=job_id), timeout=60)
            assert final.state == boundary_pb2.JOB_STATE_CANCELLED
        first.cancel()
        second.cancel()
