"""Service settings from command-line flags and IFGAN_* environment variables."""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from pathlib import Path


def setting(default, help: str, **kwargs):  # noqa: A002 - mirrors argparse
    """Declares one setting: a dataclass field with its help text."""
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def default_models_dir() -> str:
    return os.environ.get("IFGAN_MODELS_DIR", str(Path.home() / ".cache" / "interfacegan" / "models"))


@dataclasses.dataclass
class ServerSettings:
    """Settings every server has. Flags win over environment, environment over defaults."""

    host: str = setting("127.0.0.1", "address to bind; 0.0.0.0 in containers")
    port: int = setting(0, "gRPC port; 0 picks a free port (it is logged and written to --port-file)")
    port_file: str = setting("", "write the bound port to this file once listening")
    metrics_port: int = setting(-1, "Prometheus /metrics port; -1 disables, 0 picks a free port")
    health_port: int = setting(-1, "port of a second, plaintext gRPC server answering only grpc.health.v1 outside "
                                    "the concurrent-RPC limit (liveness probes); -1 disables, 0 picks a free port")
    max_message_mb: int = setting(16, "largest gRPC message accepted or sent, MiB")
    max_concurrent_rpcs: int = setting(256, "RPCs handled at once; more are refused with RESOURCE_EXHAUSTED")
    max_connection_age_seconds: float = setting(60.0, "close client connections after this age (clients reconnect "
                                                       "and re-resolve DNS, so new replicas get traffic); 0 = never")
    grace_seconds: float = setting(10.0, "on SIGTERM/SIGINT: seconds in-flight calls get to finish")
    drain_seconds: float = setting(1.0, "on SIGTERM/SIGINT: seconds health says NOT_SERVING while calls are "
                                        "still accepted, so load balancers move away before the port closes")
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = setting("json", "json (one object per line) or text")
    models_dir: str = dataclasses.field(default_factory=default_models_dir, metadata={"help": "model cache folder"})
    auth_token: str = setting("", "bearer token required from callers and sent to the services this one calls; "
                                  "empty disables auth (env IFGAN_AUTH_TOKEN)", secret=True)
    auth_token_file: str = setting("", "file holding the bearer token (e.g. a mounted Kubernetes secret); read at "
                                       "start, it wins over --auth-token")
    tls_cert: str = setting("", "PEM certificate chain; with --tls-key enables TLS (and is the client certificate "
                                "presented to called services when --tls-ca is set)")
    tls_key: str = setting("", "PEM private key for --tls-cert")
    tls_client_ca: str = setting("", "PEM CA bundle; when set, clients must present a certificate (mTLS)")
    tls_ca: str = setting("", "PEM CA bundle verifying the services this one calls; when set, outgoing channels use "
                              "TLS (mTLS with --tls-cert/--tls-key)")
    tls_server_name: str = setting("", "name expected in called services' certificates instead of their host")

    service_name: typing.ClassVar[str] = "server"

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(
            prog=f"python -m services.{cls.service_name}",
            description=(cls.__doc__ or "").strip(),
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            env = env_name(f.name)
            kind = hints[f.name]
            default = _field_default(f)
            help_text = f"{f.metadata.get('help', '')} [env {env}]"
            if f.metadata.get("secret"):
                default_shown = "(hidden)"
                help_text = f"{help_text} (default: {default_shown})"
            if kind is bool:
                p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
            else:
                p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind,
                               default=argparse.SUPPRESS if f.metadata.get("secret") else default, help=help_text)
        return p

    @classmethod
    def load(cls, argv: list[str] | None = None, **overrides):
        """Builds settings: defaults, then IFGAN_* environment variables, then flags, then overrides."""
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            value = _field_default(f)
            raw = os.environ.get(env_name(f.name))
            if raw is not None:
                value = _parse(hints[f.name], raw, env_name(f.name))
            values[f.name] = value
        if argv is not None:
            args = cls.parser().parse_args(argv)
            for f in dataclasses.fields(cls):
                if f.name in vars(args):
                    given = getattr(args, f.name)
                    # argparse reports the (env-unaware) default when a flag is absent; keep the env value then.
                    if given != _field_default(f) or f.name in _explicit_flags(argv, f.name):
                        values[f.name] = given
        values.update(overrides)
        settings = cls(**values)
        settings.read_secret_files()
        settings.validate()
        return settings

    def read_secret_files(self) -> None:
        """Replaces the token by the content of --auth-token-file, when given (a secret never sits in argv)."""
        if self.auth_token_file:
            try:
                token = Path(self.auth_token_file).read_text().strip()
            except OSError as e:
                raise ValueError(f"auth_token_file {self.auth_token_file}: cannot read it ({e})") from None
            if not token:
                raise ValueError(f"auth_token_file {self.auth_token_file} is empty; it must hold the bearer token")
            self.auth_token = token

    def validate(self) -> None:
        if not 1 <= self.max_message_mb <= 1024:
            raise ValueError(f"max_message_mb must be within 1..1024, got {self.max_message_mb}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key must be given together")

    def public_dict(self) -> dict:
        """Settings as a dict with secrets masked, for logs."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = ("***" if v else "") if f.metadata.get("secret") else v
        return out

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024


def env_name(field_name: str) -> str:
    return "IFGAN_" + field_name.upper()


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    raise ValueError(f"setting {f.name} has no default")


def _explicit_flags(argv: list[str], name: str) -> set[str]:
    flag = "--" + name.replace("_", "-")
    return {name} if any(a == flag or a.startswith(flag + "=") or a == "--no-" + flag[2:] for a in argv) else set()


def _parse(kind, raw: str, env: str):
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise ValueError(f"environment variable {env}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from None
