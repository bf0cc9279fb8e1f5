"""Outgoing gRPC channels between services: limits, keepalive, TLS/mTLS, bearer token, load balancing, retries.

One helper for every service that calls another (editor -> generator/scorer/boundary/inversion,
boundary -> generator/scorer)::

    channel = channels.open_channel(settings.generator_address, settings)   # grpc.aio.Channel
    stub = generator_pb2_grpc.GeneratorServiceStub(channel)

- `address` is `host:port`, a comma-separated list of `ip:port` replicas (balanced round robin), or a
  gRPC target URI such as `dns:///generator:50052` (every address the name resolves to, round robin).
- Message limits follow `settings.max_message_mb`; keepalive matches the servers' policy (runtime.py).
- TLS when `settings.tls_ca` is set (it verifies the called services); `tls_cert`/`tls_key` are then
  presented as the client certificate, which services started with `--tls-client-ca` require (mTLS).
- The bearer token (`settings.auth_token`) is added to every call that carries no `authorization`.
- Idempotent methods (IDEMPOTENT) are retried by gRPC itself on UNAVAILABLE, on another replica when
  there are several; a stream is retried only until its first response arrived (gRPC's rule), so
  callers of streams still retry what failed midway.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Sequence

import grpc

from .settings import ServerSettings

#: Methods safe to repeat: reads, and computations that store nothing (same request, same answer).
IDEMPOTENT: dict[str, tuple[str, ...]] = {
    "interfacegan.v1.GeneratorService": ("ListModels", "GetModelInfo", "SampleLatents", "Synthesize"),
    "interfacegan.v1.ScorerService": ("ListAttributes", "GetInfo", "Score"),
    "interfacegan.v1.BoundaryService": ("WatchJob", "ListBoundaries", "GetBoundary", "EditLatents",
                                        "InterpolateLatents", "ExportBoundary"),
    "interfacegan.v1.InversionService": ("GetInfo", "Invert", "Blend"),
    "interfacegan.v1.EditorService": ("Edit", "GetCatalog"),
    "grpc.health.v1.Health": ("Check",),
}

#: gRPC's retry policy for the idempotent methods (https://github.com/grpc/proposal/blob/master/A6-client-retries.md).
RETRY_POLICY = {"maxAttempts": 4, "initialBackoff": "0.05s", "maxBackoff": "1s", "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"]}


def target_of(address: str) -> str:
    """A gRPC target for `address`: one host:port, several ip:port replicas, or a target URI as is."""
    address = address.strip()
    if "://" in address or address.startswith(("ipv4:", "ipv6:", "unix:", "dns:")):
        return address
    parts = [p.strip() for p in address.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty address; give host:port, ip:port,ip:port,... or a target such as dns:///name:port")
    if len(parts) == 1:
        return parts[0]
    hosts = [p.rsplit(":", 1)[0].strip("[]") for p in parts]
    try:
        versions = {ipaddress.ip_address(h).version for h in hosts}
    except ValueError:
        raise ValueError(f"address list {address!r}: several replicas must be IP literals (ip:port,ip:port); for "
                         f"host names use one DNS name that resolves to every replica, e.g. dns:///generator:50052")
    if len(versions) != 1:
        raise ValueError(f"address list {address!r} mixes IPv4 and IPv6 replicas")
    return f"ipv{versions.pop()}:{','.join(parts)}"


def service_config(retry: bool = True) -> str:
    """Round-robin balancing over every resolved address, plus retries of the idempotent methods."""
    config: dict = {"loadBalancingConfig": [{"round_robin": {}}]}
    if retry:
        config["methodConfig"] = [{
            "name": [{"service": s, "method": m} for s, methods in IDEMPOTENT.items() for m in methods],
            "retryPolicy": RETRY_POLICY}]
    return json.dumps(config)


def channel_options(max_message_bytes: int, *, retry: bool = True, server_name: str = "") -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Agreed with the servers' keepalive policy (runtime.server_options): at most one ping per 20 s.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.service_config", service_config(retry)),
        ("grpc.enable_retries", 1 if retry else 0),
        # A replica that went away is retried soon, not after gRPC's default backoff of up to 2 minutes.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


def client_credentials(ca: str, cert: str = "", key: str = "") -> grpc.ChannelCredentials:
    """TLS credentials from PEM files: `ca` verifies the server; `cert`/`key`, when given, are our certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes() if cert and key else None,
        certificate_chain=Path(cert).read_bytes() if cert and key else None)


class BearerToken(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor,
                  grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to calls that carry no authorization of their own."""

    def __init__(self, token: str):
        self.value = f"Bearer {token}"

    def _details(self, details):
        metadata = grpc.aio.Metadata(*tuple(details.metadata or ()))
        if "authorization" not in metadata:
            metadata.add("authorization", self.value)
        return details._replace(metadata=metadata)

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


def open_channel(address: str, settings: ServerSettings | None = None, *, token: str | None = None,
                 tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
                 server_name: str | None = None, max_message_bytes: int | None = None, retry: bool = True,
                 options: Sequence[tuple[str, object]] = ()) -> grpc.aio.Channel:
    """An aio channel to another service, configured from the caller's settings.

    Args:
        address: host:port, ip:port,ip:port,... (round robin) or a gRPC target URI.
        settings: the calling service's settings (token, TLS files, message limit); keywords override them.
        retry: let gRPC retry the IDEMPOTENT methods on UNAVAILABLE.
        options: extra channel options, appended last (they win).
    """
    s = settings
    token = token if token is not None else (s.auth_token if s else "")
    tls_ca = tls_ca if tls_ca is not None else (s.tls_ca if s else "")
    tls_cert = tls_cert if tls_cert is not None else (s.tls_cert if s else "")
    tls_key = tls_key if tls_key is not None else (s.tls_key if s else "")
    server_name = server_name if server_name is not None else (s.tls_server_name if s else "")
    size = max_message_bytes or (s.max_message_bytes if s else 16 << 20)
    target = target_of(address)
    if tls_ca and not server_name and target.startswith(("ipv4:", "ipv6:")):
        # A replica list has no single authority to verify: expect the first host in every certificate
        # (replicas sharing a certificate); --tls-server-name names a common name otherwise.
        server_name = target.split(":", 1)[1].split(",")[0].rsplit(":", 1)[0].strip("[]")
    opts = [*channel_options(size, retry=retry, server_name=server_name if tls_ca else ""), *options]
    interceptors = [BearerToken(token)] if token else None
    if tls_ca:
        return grpc.aio.secure_channel(target, client_credentials(tls_ca, tls_cert, tls_key), options=opts,
                                       interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=opts, interceptors=interceptors)
