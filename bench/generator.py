"""Generator benchmark: raw in-process throughput vs served over gRPC with dynamic batching on and off.

In one run on one machine:
  (a) raw: the model in this process, batched, with the server's thread and device settings (the ceiling);
  (b) served, batching on: 1, 8 and 64 concurrent closed-loop clients, one image per request;
  (c) served, batching off (max_batch_size 1): the same clients.
The load generator runs in its own process(es); its CPU use (and the server's) is measured from /proc.
(b) and (c) run on two servers started side by side and are measured alternately (b1, c1, b8, c8, ...), so
noise from other work on the machine hits both alike. Writes bench/results/generator.json with the table and
`targets`: b64 >= 0.8 a, b64 >= 2.5 c64, b1 >= 0.9 c1 (10 c64 on a GPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --- load generator (runs in its own process) -------------------------------------------------------------
async def _load(address: str, clients: int, warmup: float, duration: float, fmt: int, dim: int, model: str,
                server_pid: int) -> dict:
    import grpc

    from interfacegan.v1 import generator_pb2, generator_pb2_grpc
    from services.common import tensors

    rng = np.random.default_rng(clients)
    codes = rng.standard_normal((256, dim)).astype(np.float32)
    requests = [generator_pb2.SynthesizeRequest(model={"name": model}, codes=tensors.latents_from_numpy(1, codes[i:i + 1]),
                                                format=fmt) for i in range(len(codes))]
    options = [("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        loop = asyncio.get_running_loop()
        start = loop.time() + warmup
        end = start + duration
        latencies: list[float] = []
        errors = 0

        async def client(i: int) -> None:
            nonlocal errors
            k = i
            while True:
                t0 = loop.time()
                if t0 >= end:
                    return
                try:
                    async for _ in stub.Synthesize(requests[k % len(requests)], timeout=30):
                        pass
                except grpc.RpcError:
                    errors += 1
                t1 = loop.time()
                if start <= t1 <= end and t0 >= start:
                    latencies.append(t1 - t0)
                k += clients

        tasks = [asyncio.create_task(client(i)) for i in range(clients)]
        await asyncio.sleep(max(0.0, start - loop.time()))
        cpu0, server0, wall0 = _self_cpu(), proc_cpu_seconds(server_pid), time.perf_counter()
        await asyncio.sleep(max(0.0, end - loop.time()))
        cpu1, server1, wall1 = _self_cpu(), proc_cpu_seconds(server_pid), time.perf_counter()
        await asyncio.gather(*tasks)
    wall = wall1 - wall0
    return {"completed": len(latencies), "seconds": wall, "latencies": latencies, "errors": errors,
            "client_cpu": (cpu1 - cpu0) / wall, "server_cpu": (server1 - server0) / wall}


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker_main(args: argparse.Namespace) -> int:
    result = asyncio.run(_load(args.address, args.worker_clients, args.warmup, args.duration, args.format_code,
                               args.dim, args.model, args.server_pid))
    json.dump(result, sys.stdout)
    return 0


def load(address: str, clients: int, procs: int, args: argparse.Namespace, server_pid: int, dim: int) -> dict:
    """Runs `clients` closed-loop clients spread over `procs` load-generator processes; merges their results."""
    procs = max(1, min(procs, clients))
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    children = [subprocess.Popen(
        [sys.executable, __file__, "--worker", "--address", address, "--worker-clients", str(n),
         "--warmup", str(args.warmup), "--duration", str(args.duration), "--format-code", str(args.format_code),
         "--dim", str(dim), "--model", args.model, "--server-pid", str(server_pid)],
        stdout=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"}) for n in shares]
    results = [json.loads(c.communicate(timeout=args.warmup + args.duration + 120)[0]) for c in children]
    latencies = np.array([x for r in results for x in r["latencies"]]) * 1000
    seconds = max(r["seconds"] for r in results)
    return {"clients": clients, "images_per_s": round(sum(r["completed"] for r in results) / seconds, 1),
            "p50_ms": round(float(np.percentile(latencies, 50)), 2) if len(latencies) else None,
            "p99_ms": round(float(np.percentile(latencies, 99)), 2) if len(latencies) else None,
            "errors": sum(r["errors"] for r in results),
            "client_cpu_cores": round(sum(r["client_cpu"] for r in results), 2),
            "server_cpu_cores": round(results[0]["server_cpu"], 2), "load_processes": procs}


# --- raw in-process throughput ------------------------------------------------------------------------------
def raw_throughput(args: argparse.Namespace, threads: int) -> list[dict]:
    import torch

    from services.generator import backends
    from services.generator.models import load_model

    backends.configure_threads(threads, 1)
    device = backends.resolve_device(args.device)
    model = load_model(args.model, device, dtype=backends.resolve_dtype(args.precision, device))
    rows = []
    for batch in args.raw_batch_sizes:
        codes = model.sample(batch, seed=batch)
        for _ in range(2):
            model.synthesize(codes, "z", output="uint8")
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.raw_seconds:
            model.synthesize(codes, "z", output="uint8")
            done += batch
        if device.type == "cuda":
            torch.cuda.synchronize()
        rows.append({"threads": threads, "batch": batch,
                     "images_per_s": round(done / (time.perf_counter() - start), 1)})
    return rows


def start_server(args: argparse.Namespace, batching: bool, log_dir: Path):
    from services.cluster import ServiceProcess

    flags = ["--torch-threads", str(args.threads), "--device", args.device, "--precision", args.precision,
             "--max-batch-size", str(args.max_batch_size), "--log-level", "WARNING",
             "--max-queue-delay-microseconds", str(args.max_queue_delay_us), "--default-model", args.model,
             "--batching" if batching else "--no-batching"]
    proc = ServiceProcess.start("generator", flags, log_dir=log_dir / ("batched" if batching else "unbatched"))
    proc.wait_serving()
    return proc


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short runs, 1 and 8 clients (for the test); rough numbers")
    p.add_argument("--model", default="dcgan-digiface-64", help="registry model to benchmark")
    p.add_argument("--device", default="auto", help="server and raw device: auto, cpu, cuda")
    p.add_argument("--precision", default="auto", help="auto (fp16 on CUDA), float32, float16")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads of the server and of (a); 1 leaves the second core to gRPC and clients")
    p.add_argument("--raw-threads-also", type=int, default=2, help="extra (a) row at this thread count, for context")
    p.add_argument("--raw-batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8, 16, 32, 64],
                   help="batch sizes of (a)")
    p.add_argument("--raw-seconds", type=float, default=3.0, help="seconds per raw batch size")
    p.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 64],
                   help="concurrent clients of (b) and (c)")
    p.add_argument("--load-processes", type=int, default=1, help="load-generator processes (clients spread over them)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per served point")
    p.add_argument("--format", choices=("raw", "png"), default="png", help="image format the clients ask for")
    p.add_argument("--max-batch-size", type=int, default=0, help="server max_batch_size (0 = the server's auto)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000, help="server max_queue_delay_microseconds")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "generator.json", help="result file")
    # worker mode (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--address", help=argparse.SUPPRESS)
    p.add_argument("--worker-clients", type=int, help=argparse.SUPPRESS)
    p.add_argument("--format-code", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--dim", type=int, default=100, help=argparse.SUPPRESS)
    p.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.quick:
        args.clients, args.raw_batch_sizes = [1, 8], [1, 16]
        args.raw_seconds, args.warmup, args.duration, args.raw_threads_also = 0.5, 0.5, 1.5, 0
    from interfacegan.v1 import common_pb2

    args.format_code = common_pb2.IMAGE_FORMAT_RAW if args.format == "raw" else common_pb2.IMAGE_FORMAT_PNG

    import tempfile

    import torch

    from services.generator import backends
    from services.generator.models import Registry, build_net

    device = str(backends.resolve_device(args.device))
    raw = raw_throughput(args, args.threads)
    max_batch = args.max_batch_size or (256 if device.startswith("cuda") else 16)
    ceiling = max(r["images_per_s"] for r in raw if r["batch"] <= max_batch)
    spec = Registry().get(args.model)
    with torch.device("meta"):
        dim = build_net(spec.architecture, spec.resolution, **spec.kwargs).latent_shapes["z"][0]

    served: dict[str, dict[int, dict]] = {"b": {}, "c": {}}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {"b": start_server(args, True, Path(tmp)), "c": start_server(args, False, Path(tmp))}
        try:
            for clients in args.clients:
                for mode in ("b", "c"):
                    proc = servers[mode]
                    served[mode][clients] = load(proc.address, clients, args.load_processes, args, proc.pid, dim)
                    row = served[mode][clients]
                    print(f"  {mode}{clients:<3d} {row['images_per_s']:8.1f} img/s  p50 {row['p50_ms']} ms  "
                          f"p99 {row['p99_ms']} ms  client cpu {row['client_cpu_cores']}  "
                          f"server cpu {row['server_cpu_cores']}", file=sys.stderr, flush=True)
        finally:
            for proc in servers.values():
                proc.stop()
    extra = raw_extra(args) if args.raw_threads_also and args.raw_threads_also != args.threads else []

    top = max(args.clients)
    b_top, c_top = served["b"][top]["images_per_s"], served["c"][top]["images_per_s"]
    b1, c1 = served["b"][min(args.clients)]["images_per_s"], served["c"][min(args.clients)]["images_per_s"]
    gpu = device.startswith("cuda")
    targets = {
        f"b{top}_over_raw": {"value": ratio(b_top, ceiling), "target": 0.8},
        f"b{top}_over_c{top}": {"value": ratio(b_top, c_top), "target": 10.0 if gpu else 2.5},
        f"b{min(args.clients)}_over_c{min(args.clients)}": {"value": ratio(b1, c1), "target": 0.9},
    }
    for t in targets.values():
        t["met"] = bool(t["value"] >= t["target"])

    table = [{"case": f"a raw batch {r['batch']} ({r['threads']} thr)", "images_per_s": r["images_per_s"]}
             for r in raw + extra]
    for mode, label in (("b", "batching on"), ("c", "batching off")):
        for clients, row in served[mode].items():
            table.append({"case": f"{mode} {label}, {clients} clients", **row})
    result = {
        "benchmark": "generator", "quick": args.quick, "model": args.model,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "device": device},
        "settings": {"torch_threads": args.threads, "interop_threads": 1, "load_processes": args.load_processes,
                     "max_batch_size": max_batch, "max_queue_delay_us": args.max_queue_delay_us,
                     "format": args.format, "warmup_s": args.warmup, "duration_s": args.duration,
                     "precision": args.precision},
        "raw_ceiling_images_per_s": ceiling, "table": table, "targets": targets,
    }
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def raw_extra(args: argparse.Namespace) -> list[dict]:
    """(a) at another thread count, in a fresh process (torch threads are per process)."""
    code = ("import json,sys; sys.path.insert(0, %r); import argparse; from bench.generator import raw_throughput; "
            "a = argparse.Namespace(**json.loads(sys.argv[1])); print(json.dumps(raw_throughput(a, a.t)))") % str(ROOT)
    params = {"device": args.device, "precision": args.precision, "model": args.model,
              "raw_batch_sizes": args.raw_batch_sizes, "raw_seconds": args.raw_seconds, "t": args.raw_threads_also}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(params)], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_table(result: dict) -> None:
    print(f"\ngenerator benchmark  model {result['model']}  device {result['machine']['device']}  "
          f"torch threads {result['settings']['torch_threads']}  format {result['settings']['format']}")
    print(f"{'case':42s} {'img/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'client cpu':>10s} {'server cpu':>10s}")
    for row in result["table"]:
        print(f"{row['case']:42s} {row['images_per_s']:9.1f} {_fmt(row.get('p50_ms')):>8s} {_fmt(row.get('p99_ms')):>8s} "
              f"{_fmt(row.get('client_cpu_cores')):>10s} {_fmt(row.get('server_cpu_cores')):>10s}")
    print("targets:")
    for name, t in result["targets"].items():
        print(f"  {name:24s} {t['value']:7.3f}  >= {t['target']:<5}  {'met' if t['met'] else 'NOT MET'}")


def _fmt(value) -> str:
    return "" if value is None else f"{value}"


if __name__ == "__main__":
    sys.exit(main())
