"""Local cluster: a real redis-server and every service on loopback, started, watched and stopped together.

Usage: python -m services.cluster up [--detach] | down | status
"""

from __future__ import annotations

import os

# Children are started with fork+exec (preexec_fn); gRPC's fork handlers can crash a child forked while the
# parent has live gRPC threads. Must be set before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import ctypes
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import upstream

#: Start order: dependencies first.
SERVICES = ("generator", "scorer", "boundary", "inversion", "editor")
#: Web pages over the services, started after them; each serves its page on an HTTP port of its own.
FRONTENDS = ("studio",)
DEFAULT_PORTS = {"editor": 50051, "generator": 50052, "scorer": 50053, "boundary": 50054, "inversion": 50055,
                 "studio": 50056}
DEFAULT_METRICS_PORTS = {name: 9100 + i for i, name in enumerate(("editor", *SERVICES[:-1], *FRONTENDS), start=1)}
DEFAULT_HTTP_PORTS = {"studio": 8080}
DEFAULT_REDIS_PORT = 6380


def run_dir() -> Path:
    return Path(os.environ.get("IFGAN_RUN_DIR", ".run")).resolve()


def _die_with_parent() -> None:
    """Child-side: receive SIGTERM when the launching process dies, so nothing is orphaned."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 30, width: int = 300) -> str:
    """The last `lines` lines of a log, each cut at `width` characters (a service's first line lists every
    setting)."""
    try:
        return "\n".join(line[:width] for line in path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class ServiceProcess:
    """One service running as a subprocess, listening on 127.0.0.1:port."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    port: int = 0
    metrics_port: int = -1

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(cls, name: str, args: list[str] | tuple = (), *, env: dict[str, str] | None = None,
              log_dir: Path | None = None, port: int = 0, metrics_port: int = -1,
              tie_to_parent: bool = True) -> "ServiceProcess":
        log_dir = Path(log_dir or run_dir() / "logs")
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        port_file = log_dir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        command = [sys.executable, "-m", f"services.{name}", "--port", str(port), "--port-file", str(port_file),
                   "--metrics-port", str(metrics_port), *args]
        full_env = {**os.environ, **(env or {})}
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                    start_new_session=True, preexec_fn=_die_with_parent if tie_to_parent else None)
        service = cls(name, proc, log_path, metrics_port=metrics_port)
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode} before listening; log {log_path}:\n"
                                   f"{log_tail(log_path)}")
            if time.monotonic() > deadline:
                service.stop()
                raise TimeoutError(f"{name} did not bind a port within 60 s; log {log_path}")
            time.sleep(0.05)
        service.port = int(port_file.read_text())
        return service

    def health(self, timeout: float = 2.0, credentials: "HealthCredentials | None" = None) -> str:
        return check_health(self.address, timeout, credentials=credentials)

    def wait_serving(self, timeout: float = 180.0, credentials: "HealthCredentials | None" = None) -> None:
        """Waits until health says SERVING; fails early if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}; log {self.log_path}:\n"
                                   f"{log_tail(self.log_path)}")
            if self.health(credentials=credentials) == "SERVING":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not SERVING after {timeout:.0f} s; log {self.log_path}:\n"
                                   f"{log_tail(self.log_path)}")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Stops the process (SIGTERM: graceful), SIGKILL after `timeout`; returns its exit code."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@dataclass(frozen=True)
class HealthCredentials:
    """TLS files to reach a TLS service's health endpoint: the CA to trust, and for mTLS a client certificate.

    Kept as paths (never key material) so that cluster.json can name them for `status`."""

    ca: str
    cert: str = ""
    key: str = ""
    server_name: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "HealthCredentials | None":
        """The services' own TLS settings (IFGAN_TLS_CA, IFGAN_TLS_CERT/KEY, IFGAN_TLS_SERVER_NAME), or None.

        A cluster started with TLS is checked with the credentials its services use to call each other."""
        env = os.environ if env is None else env
        if not env.get("IFGAN_TLS_CA"):
            return None
        return cls(env["IFGAN_TLS_CA"], env.get("IFGAN_TLS_CERT", ""), env.get("IFGAN_TLS_KEY", ""),
                   env.get("IFGAN_TLS_SERVER_NAME", ""))

    def channel(self, address: str) -> grpc.Channel:
        """A channel built the way services build theirs to each other (services/common/upstream.py)."""
        config = upstream.client_config(retry=None, tls_ca=self.ca, tls_cert=self.cert, tls_key=self.key,
                                        server_name=self.server_name)
        return upstream.sync_channel(address, config)


def check_health(address: str, timeout: float = 2.0, service: str = "", *,
                 credentials: HealthCredentials | None = None) -> str:
    """Returns the grpc.health.v1 status name of `address`, or UNREACHABLE (over TLS when given credentials)."""
    try:
        with (credentials.channel(address) if credentials else upstream.sync_channel(address)) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as e:
        return "UNREACHABLE" if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) \
            else e.code().name


#: The local Redis's memory limit (the deploy manifests' value).
REDIS_MAXMEMORY = "640mb"


@dataclass
class RedisProcess:
    """A real redis-server with AOF persistence, bound to loopback."""

    proc: subprocess.Popen
    port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, port: int, data_dir: Path, *, tie_to_parent: bool = True) -> "RedisProcess":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; run `make setup` (apt-get install -y redis-server)")
        data_dir.mkdir(parents=True, exist_ok=True)
        log = open(data_dir / "redis.log", "ab")
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir), "--appendonly", "yes",
             "--appendfsync", "always", "--save", "", "--daemonize", "no", "--protected-mode", "yes",
             # As the deploy manifests: bounded, and only keys with an expiry (request and job records) are
             # evicted; boundaries have none, so at the limit writes fail loudly instead of boundaries vanishing.
             "--maxmemory", REDIS_MAXMEMORY, "--maxmemory-policy", "volatile-lru"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent if tie_to_parent else None)
        log.close()
        server = cls(proc, port, data_dir)
        deadline = time.monotonic() + 20
        while not server.ping():
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"redis-server did not start on port {port}; see {data_dir / 'redis.log'}:\n"
                                   f"{log_tail(data_dir / 'redis.log')}")
            time.sleep(0.05)
        return server

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # redis flushes the AOF on SIGTERM
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Cluster:
    """Redis plus every service, wired together through IFGAN_*_ADDRESS environment variables."""

    directory: Path
    redis: RedisProcess | None = None
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    credentials: HealthCredentials | None = None  # TLS cluster: how its health endpoints are reached

    @classmethod
    def up(cls, directory: Path, *, fixed_ports: bool = True, env: dict[str, str] | None = None,
           extra_args: dict[str, list[str]] | None = None, tie_to_parent: bool = True,
           timeout: float = 300.0, log=print) -> "Cluster":
        cluster = cls(directory)
        try:
            redis_port = DEFAULT_REDIS_PORT if fixed_ports else free_port()
            cluster.redis = RedisProcess.start(redis_port, directory / "redis", tie_to_parent=tie_to_parent)
            log(f"redis        {cluster.redis.url}  (AOF in {directory / 'redis'})")
            wiring = {"IFGAN_REDIS_URL": cluster.redis.url, "IFGAN_DATA_DIR": str(directory / "data"), **(env or {})}
            cluster.credentials = HealthCredentials.from_env({**os.environ, **wiring})
            for name in (*SERVICES, *FRONTENDS):
                # A page port: the default one with fixed ports, a free one otherwise (GetStudioInfo tells it).
                page = ["--http-port", str(DEFAULT_HTTP_PORTS[name] if fixed_ports else 0)] \
                    if name in DEFAULT_HTTP_PORTS else []
                proc = ServiceProcess.start(
                    name, [*page, *(extra_args or {}).get(name, [])], env=wiring, log_dir=directory / "logs",
                    port=DEFAULT_PORTS[name] if fixed_ports else 0,
                    metrics_port=DEFAULT_METRICS_PORTS[name] if fixed_ports else -1, tie_to_parent=tie_to_parent)
                cluster.services[name] = proc
                wiring[f"IFGAN_{name.upper()}_ADDRESS"] = proc.address
            cluster.save()
            for name, proc in cluster.services.items():
                proc.wait_serving(timeout, credentials=cluster.credentials)
                log(f"{name:12s} {proc.address}  SERVING  (log {proc.log_path})")
        except BaseException:
            cluster.down()
            raise
        return cluster

    def save(self) -> None:
        state = {"redis": {"pid": self.redis.proc.pid, "port": self.redis.port} if self.redis else None,
                 "services": {n: {"pid": p.pid, "port": p.port, "log": str(p.log_path)}
                              for n, p in self.services.items()}}
        if self.credentials:
            state["tls"] = asdict(self.credentials)
        (self.directory / "cluster.json").write_text(json.dumps(state, indent=2))

    def down(self, log=lambda *_: None) -> None:
        # Gateway first, dependencies last, so nothing calls a service that is already gone.
        for name in reversed(list(self.services)):
            code = self.services[name].stop()
            log(f"{name:12s} stopped (exit code {code})")
        if self.redis:
            self.redis.stop()
            log("redis        stopped")
        (self.directory / "cluster.json").unlink(missing_ok=True)


def _stop_pid(pid: int, timeout: float = 30.0) -> bool:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return True


def down_from_state(directory: Path, log=print) -> None:
    state_file = directory / "cluster.json"
    if not state_file.exists():
        log(f"no cluster running (no {state_file})")
        return
    state = json.loads(state_file.read_text())
    for name in reversed(list(state["services"])):
        stopped = _stop_pid(state["services"][name]["pid"])
        log(f"{name:12s} {'stopped' if stopped else 'was not running'}")
    if state.get("redis"):
        _stop_pid(state["redis"]["pid"])
        log("redis        stopped")
    state_file.unlink()


def status_from_state(directory: Path, log=print) -> bool:
    state_file = directory / "cluster.json"
    if not state_file.exists():
        log(f"no cluster running (no {state_file})")
        return False
    state = json.loads(state_file.read_text())
    healthy = True
    credentials = HealthCredentials(**state["tls"]) if state.get("tls") else None
    for name, info in state["services"].items():
        status = check_health(f"127.0.0.1:{info['port']}", credentials=credentials)
        healthy &= status == "SERVING"
        log(f"{name:12s} 127.0.0.1:{info['port']:<6d} {status:12s} log {info['log']}")
    return healthy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ifgan-cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("up", "down", "status"))
    p.add_argument("--detach", action="store_true", help="up: return once every service is SERVING")
    p.add_argument("--free-ports", action="store_true", help="up: pick free ports instead of 50051-50055/6380")
    p.add_argument("--dir", type=Path, default=None, help="run folder for logs, Redis data and state "
                                                           "(default: $IFGAN_RUN_DIR or ./.run)")
    args = p.parse_args(argv)
    directory = (args.dir or run_dir()).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if args.command == "down":
        down_from_state(directory)
        return 0
    if args.command == "status":
        return 0 if status_from_state(directory) else 1
    if (directory / "cluster.json").exists() and status_from_state(directory, log=lambda *_: None):
        print(f"a cluster is already running from {directory}; `python -m services.cluster down` first")
        return 1
    stop: list[int] = []
    if not args.detach:
        # Ctrl-C or SIGTERM at any moment, even while starting, ends in the same orderly `down`.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.append(1))
    started = time.perf_counter()
    cluster = Cluster.up(directory, fixed_ports=not args.free_ports, tie_to_parent=not args.detach)
    print(f"cluster up in {time.perf_counter() - started:.1f} s; logs in {directory / 'logs'}")
    if not args.free_ports:
        print(f"studio page  http://127.0.0.1:{DEFAULT_HTTP_PORTS['studio']}/ (with an auth token: "
              f"open it once as /?token=TOKEN)")
    if args.detach:
        print("stop it with: python -m services.cluster down")
        return 0
    print("Ctrl-C stops every service", flush=True)
    while not stop and all(p.proc.poll() is None for p in cluster.services.values()):
        time.sleep(0.2)
    dead = [n for n, p in cluster.services.items() if p.proc.poll() is not None]
    if dead:
        print(f"service(s) exited: {', '.join(dead)}; stopping the cluster")
    cluster.down(log=print)
    return 1 if dead else 0


if __name__ == "__main__":
    sys.exit(main())
