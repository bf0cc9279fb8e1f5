"""Outgoing gRPC channels between services: limits, keepalive, TLS/mTLS, bearer token, load balancing, retries.

One helper for every service that calls another (editor -> generator/scorer/boundary/inversion,
boundary -> generator/scorer). It maps the caller's settings onto the SDK's `ChannelConfig`
(clients/python/interfacegan/channel.py: the one place for keepalive, message limits, round robin and the
retry policy of idempotent methods), so servers and clients agree on every option::

    channel = channels.open_channel(settings.generator_address, settings)   # grpc.aio.Channel
    config = channels.client_config(settings, retry=False)                  # for interfacegan.channel.aio_channel

- `address` is `host:port`, a comma-separated list of `ip:port` replicas (balanced round robin), or a
  gRPC target URI such as `dns:///generator:50052` (every address the name resolves to, round robin).
- TLS when `settings.tls_ca` is set (it verifies the called services); `tls_cert`/`tls_key` are then
  presented as the client certificate, which services started with `--tls-client-ca` require (mTLS).
- The bearer token (`settings.auth_token`) is added to every call that carries no `authorization`.
- Idempotent methods are retried by gRPC on UNAVAILABLE (on another replica when there are several) until
  their first response arrived; callers of streams still redo what failed midway.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Sequence

import grpc

from interfacegan import channel as sdk

from .settings import ServerSettings

#: A replica that went away is tried again soon, not after gRPC's default reconnect backoff (up to 2 minutes).
RECONNECT_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2_000))


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


def client_config(settings: ServerSettings | None = None, *, retry: bool = True,
                  max_message_bytes: int | None = None, server_name: str | None = None,
                  tls_ca: str | None = None, tls_cert: str | None = None,
                  tls_key: str | None = None) -> sdk.ChannelConfig:
    """The SDK channel configuration a service uses to call another, from its settings (keywords override)."""
    s = settings
    ca = tls_ca if tls_ca is not None else (s.tls_ca if s else "")
    cert = tls_cert if tls_cert is not None else (s.tls_cert if s else "")
    key = tls_key if tls_key is not None else (s.tls_key if s else "")
    name = server_name if server_name is not None else (s.tls_server_name if s else "")
    with_cert = bool(ca and cert and key)
    return sdk.ChannelConfig(
        tls=bool(ca), root_certificates=ca or None, client_certificate=cert if with_cert else None,
        client_key=key if with_cert else None, server_name=(name or None) if ca else None,
        max_message_bytes=max_message_bytes or (s.max_message_bytes if s else sdk.DEFAULT_MAX_MESSAGE_BYTES),
        retry=sdk.RetryPolicy() if retry else None, extra_options=RECONNECT_OPTIONS)


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
                 retry: bool = True, options: Sequence[tuple[str, object]] = (), **config) -> grpc.aio.Channel:
    """An aio channel to another service, configured from the caller's settings.

    Args:
        address: host:port, ip:port,ip:port,... (round robin) or a gRPC target URI.
        settings: the calling service's settings (token, TLS files, message limit).
        token: bearer token instead of settings.auth_token ("" sends none: the caller adds its own metadata).
        retry: let gRPC retry the idempotent methods on UNAVAILABLE.
        options: extra channel options, appended last (they win).
        config: overrides of client_config (max_message_bytes, server_name, tls_ca, tls_cert, tls_key).
    """
    target = target_of(address)
    cfg = client_config(settings, retry=retry, **config)
    if cfg.tls and not cfg.server_name and target.startswith(("ipv4:", "ipv6:")):
        # A replica list has no single authority to verify: expect the first host in every certificate
        # (replicas sharing a certificate); --tls-server-name names a common name otherwise.
        first = target.split(":", 1)[1].split(",")[0].rsplit(":", 1)[0].strip("[]")
        cfg = dataclasses.replace(cfg, server_name=first)
    token = token if token is not None else (settings.auth_token if settings else "")
    interceptors = [BearerToken(token)] if token else None
    opts = [*sdk.channel_options(cfg), *options]
    creds = sdk.credentials(cfg)
    if creds is None:
        return grpc.aio.insecure_channel(target, options=opts, interceptors=interceptors)
    return grpc.aio.secure_channel(target, creds, options=opts, interceptors=interceptors)
