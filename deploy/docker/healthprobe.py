#!/usr/bin/env python3
"""gRPC health probe for container healthchecks: exit 0 when the local server reports SERVING.

Usage: healthprobe.py [--address HOST:PORT] [--service NAME] [--timeout SECONDS]
The address defaults to 127.0.0.1 and the port the server wrote to $IFGAN_PORT_FILE, else $IFGAN_PORT. With IFGAN_TLS_CERT set the probe speaks TLS, trusting
that certificate (or --ca); under mTLS give it a client certificate with --cert/--key.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _read(path: str) -> bytes | None:
    return open(path, "rb").read() if path else None


def probe(address: str, service: str = "", timeout: float = 3.0, ca: str = "", cert: str = "",
          key: str = "", server_name: str = "") -> str:
    """Returns the health status name of `service` at `address`, or the gRPC error code name."""
    if ca:
        creds = grpc.ssl_channel_credentials(root_certificates=_read(ca), private_key=_read(key),
                                             certificate_chain=_read(cert))
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        channel = grpc.insecure_channel(address)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                          timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as e:
        return e.code().name
    finally:
        channel.close()


def default_address() -> str:
    """127.0.0.1 and the port the server actually bound (its port file), else $IFGAN_PORT."""
    port = os.environ.get("IFGAN_PORT", "")
    port_file = os.environ.get("IFGAN_PORT_FILE", "")
    if port_file:
        try:
            port = open(port_file).read().strip() or port
        except OSError:
            pass  # not listening yet: fall back to the configured port
    return f"127.0.0.1:{port or 50051}"


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default=default_address(), help="server to ask")
    p.add_argument("--service", default="", help="service name to check; empty: the whole server")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds before the probe gives up")
    p.add_argument("--ca", default=env("IFGAN_TLS_CERT", ""), help="PEM roots to trust; enables TLS")
    p.add_argument("--cert", default="", help="client certificate (mTLS)")
    p.add_argument("--key", default="", help="client private key (mTLS)")
    p.add_argument("--server-name", default="", help="TLS name to expect when it is not the address host")
    args = p.parse_args(argv)
    status = probe(args.address, args.service, args.timeout, args.ca, args.cert, args.key, args.server_name)
    print(f"{args.address} {args.service or '(server)'}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
