"""gRPC channels for the InterFaceGAN API: keepalive, message limits, round robin, retries, TLS and tokens.

The keepalive settings here are agreed with the servers (services/common/runtime.py `server_options`):
servers accept a ping every 10 s at most, clients send one after 20 s without traffic, so a long quiet
stream (a training job) stays open through proxies and NATs without the server answering GOAWAY.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import grpc

PACKAGE = "interfacegan.v1"

#: Methods that are safe to call twice: retried on UNAVAILABLE by the channel (before any response arrived).
#: ImportBoundary (adds a version) and TrainBoundaries (a request without request_id starts a second job)
#: are deliberately absent.
IDEMPOTENT_METHODS: dict[str, tuple[str, ...]] = {
    "EditorService": ("Edit", "GetCatalog"),
    "GeneratorService": ("ListModels", "GetModelInfo", "SampleLatents", "Synthesize"),
    "ScorerService": ("ListAttributes", "GetInfo", "Score"),
    "BoundaryService": ("WatchJob", "CancelJob", "ListBoundaries", "GetBoundary", "ConditionBoundary",
                        "EditLatents", "InterpolateLatents", "ExportBoundary", "AnalyzeBoundaries"),
    "InversionService": ("GetInfo", "Invert", "Blend"),
}

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's built-in retry policy for the idempotent methods.

    Attributes:
        max_attempts: Tries per call, 2 .. 5 (gRPC caps it at 5).
        initial_backoff: Seconds before the first retry; later ones grow by `multiplier` up to `max_backoff`.
        status_codes: Statuses retried. RESOURCE_EXHAUSTED is worth adding where the caller can wait: the servers
            send `grpc-retry-pushback-ms` with every refusal, and gRPC then waits exactly that long.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 3.0
    multiplier: float = 2.0
    status_codes: tuple[str, ...] = ("UNAVAILABLE",)


@dataclass(frozen=True)
class ChannelConfig:
    """How to reach a server.

    Attributes:
        tls: Use TLS (system roots unless `root_certificates` is given).
        root_certificates: PEM bytes or a file path of the CA to trust.
        client_certificate / client_key: PEM bytes or paths, for servers that require mTLS.
        server_name: Override the name checked in the server's certificate (tests, IP addresses).
        max_message_bytes: Largest message sent or received (servers default to 16 MiB).
        retry: Retry policy of idempotent methods; None disables retries.
        round_robin: Spread calls over every address a DNS name resolves to (`dns:///name:port`).
        keepalive_seconds: Ping after this many seconds without traffic (at least 10: the servers' limit).
        extra_options: More (name, value) channel options.
    """

    tls: bool = False
    root_certificates: bytes | str | Path | None = None
    client_certificate: bytes | str | Path | None = None
    client_key: bytes | str | Path | None = None
    server_name: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    retry: RetryPolicy | None = field(default_factory=RetryPolicy)
    round_robin: bool = True
    keepalive_seconds: float = 20.0
    extra_options: tuple[tuple[str, object], ...] = ()


def service_config(config: ChannelConfig) -> dict:
    """The JSON service config: round robin load balancing and the retry policy of idempotent methods."""
    out: dict = {}
    if config.round_robin:
        out["loadBalancingConfig"] = [{"round_robin": {}}]
    if config.retry is not None:
        r = config.retry
        names = [{"service": f"{PACKAGE}.{service}", "method": m}
                 for service, methods in IDEMPOTENT_METHODS.items() for m in methods]
        out["methodConfig"] = [{
            "name": names,
            "retryPolicy": {
                "maxAttempts": max(2, min(5, r.max_attempts)),
                "initialBackoff": f"{r.initial_backoff:.3f}s",
                "maxBackoff": f"{r.max_backoff:.3f}s",
                "backoffMultiplier": r.multiplier,
                "retryableStatusCodes": list(r.status_codes),
            },
        }]
    return out


def channel_options(config: ChannelConfig = ChannelConfig()) -> list[tuple[str, object]]:
    """Channel options: message limits, keepalive agreed with the servers, service config."""
    if config.keepalive_seconds < 10:
        raise ValueError("keepalive_seconds must be at least 10: servers refuse more frequent pings "
                         "(grpc.http2.min_ping_interval_without_data_ms = 10000)")
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", int(config.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 1 if config.retry is not None else 0),
        ("grpc.service_config", json.dumps(service_config(config))),
    ]
    if config.retry is not None:
        # gRPC keeps a request for a retry only up to this size (256 KiB by default): a larger one (a photo) is
        # committed at once and not retried, so the connection renewal every max_connection_age seconds
        # (a GOAWAY racing the next call) reached the caller as UNAVAILABLE.
        options.append(("grpc.per_rpc_retry_buffer_size", config.max_message_bytes))
    if config.server_name:
        options.append(("grpc.ssl_target_name_override", config.server_name))
    options.extend(config.extra_options)
    return options


def _pem(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).expanduser().read_bytes()


def credentials(config: ChannelConfig) -> grpc.ChannelCredentials | None:
    """TLS channel credentials, or None for a plaintext channel."""
    if not (config.tls or config.root_certificates or config.client_certificate):
        return None
    if bool(config.client_certificate) != bool(config.client_key):
        raise ValueError("client_certificate and client_key must be given together")
    return grpc.ssl_channel_credentials(root_certificates=_pem(config.root_certificates),
                                        private_key=_pem(config.client_key),
                                        certificate_chain=_pem(config.client_certificate))


def split_addresses(addresses: str | Sequence[str]) -> list[str]:
    """'a:1, b:2' or ['a:1', 'b:2'] -> ['a:1', 'b:2'] (empty parts dropped).

    A gRPC target URI that itself lists addresses ('ipv4:10.0.0.1:50052,10.0.0.2:50052') stays one target:
    its channel balances over them with the round robin policy.
    """
    if isinstance(addresses, str) and addresses.strip().startswith(("ipv4:", "ipv6:")):
        return [addresses.strip()]
    parts: Iterable[str] = addresses.split(",") if isinstance(addresses, str) else addresses
    out = [p.strip() for p in parts if p and p.strip()]
    if not out:
        raise ValueError(f"no address in {addresses!r}; give host:port, dns:///name:port, or a comma-separated list")
    return out


def target(address: str) -> str:
    """A gRPC target for one address. A DNS name with several A records is balanced by the round robin policy."""
    return address.strip()


def secure_channel(address: str, config: ChannelConfig = ChannelConfig()) -> grpc.Channel:
    """A synchronous channel to one address (host:port or any gRPC target, e.g. dns:///svc:50051)."""
    creds = credentials(config)
    options = channel_options(config)
    if creds is None:
        return grpc.insecure_channel(target(address), options=options)
    return grpc.secure_channel(target(address), creds, options=options)


def aio_channel(address: str, config: ChannelConfig = ChannelConfig()) -> grpc.aio.Channel:
    """An asyncio channel to one address (host:port or any gRPC target)."""
    creds = credentials(config)
    options = channel_options(config)
    if creds is None:
        return grpc.aio.insecure_channel(target(address), options=options)
    return grpc.aio.secure_channel(target(address), creds, options=options)


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The bearer-token metadata the servers check (`authorization: Bearer <token>`)."""
    return (("authorization", f"Bearer {token}"),) if token else ()
