"""Generator benchmark: raw in-process throughput vs served over gRPC with dynamic batching on and off.

In one run on one machine:
  (a) raw: the model in a process of its own, batched, with the server's thread and device settings (the
      ceiling), and the same with 2 torch threads (the ceiling of both cores, for reference);
  (b) served, batching on: 1, 8 and 64 concurrent closed-loop clients, one image per request;
  (c) served, batching off (max_batch_size 1): the same clients.
The load generator runs in its own process(es); its CPU use and the server's are measured from /proc.
The machine is shared, so the load drifts: (a), (b) and (c) are measured in alternating slices (a, b, c, a, b,
c, ...) by long-lived runner processes and summed, so every comparison sees the same conditions. Only calls
that return OK with the one image asked for count as completed images; any other call is an error (warm-up
included), and a ratio whose points had an error fails its target.

Targets (written to bench/results/generator.json), thresholds set under the ratios measured in four runs
on the 2-core shared CPU (b64/raw 0.93-0.96, b64/c64 2.63-2.96, b1/c1 1.01-1.07), with the margin one run's
noise needs but a lost batching gain does not fit in:
  b64 / a >= 0.85 (batched serving keeps 85% of the 1-thread raw ceiling),
  b64 / c64 >= 2.4 (10 on a GPU, where batching gains more; not measured here),
  b1 / c1 >= 0.93 (a lone client loses at most 7% to the batcher's queue),
  zero served errors.
On CUDA (`--device cuda`, run by bench/gpu.sh with fp16, CUDA graphs, raw batches up to 1024 and 1/64/256
clients) the thresholds are b64 / a >= 0.8, b64 / c64 >= 10 and b1 / c1 >= 0.9 (`--target-clients 64`).
`--dry-run` prints the plan (servers' flags, thresholds) without starting anything.
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
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import at_least, at_most, print_targets, proc_cpu_seconds, write_result  # noqa: E402
from interfacegan import codec  # noqa: E402

#: Thresholds (see the module help for the measurements they are set against); on CUDA the issue's: served at
#: least 0.8 of raw, batched at least 10x unbatched, a lone client at least 0.9x unbatched.
MIN_B_OVER_RAW, MIN_B_OVER_C, MIN_B1_OVER_C1 = 0.85, 2.4, 0.93
MIN_B_OVER_RAW_GPU, MIN_B_OVER_C_GPU, MIN_B1_OVER_C1_GPU = 0.8, 10.0, 0.9


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Runner:
    """A child process answering one JSON command per line on stdin with one JSON line on stdout."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen([sys.executable, __file__, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.ready = json.loads(self.proc.stdout.readline())

    def ask(self, **command) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"runner {self.proc.args[2:4]} died (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def _serve_commands(handle) -> int:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        print(json.dumps(handle(json.loads(line))), flush=True)
    return 0


# --- (a) raw runner ------------------------------------------------------------------------------------------
def raw_main(args: argparse.Namespace) -> int:
    import torch

    from services.generator import backends
    from models import load_model

    backends.configure_threads(args.threads, 1)
    device = backends.resolve_device(args.device)
    model = load_model(args.model, device, dtype=backends.resolve_dtype(args.precision, device))
    backends.attach(model, backends.resolve_backend(args.backend, device), args.threads,  # as the server does
                    tuple(int(s) for s in args.cuda_graphs.split(",") if s))
    codes = {}

    def handle(cmd: dict) -> dict:
        batch = cmd["batch"]
        if batch not in codes:
            codes[batch] = model.sample(batch, seed=batch)
            for _ in range(2):
                model.synthesize(codes[batch], "z", output="uint8")
        done, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < cmd["seconds"]:
            model.synthesize(codes[batch], "z", output="uint8")  # includes the copy back to the host
            done += batch
        if device.type == "cuda":
            torch.cuda.synchronize()
        return {"images": done, "seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}

    return _serve_commands(handle)


# --- (b), (c) load generator ---------------------------------------------------------------------------------
def load_main(args: argparse.Namespace) -> int:
    import grpc

    from interfacegan.v1 import generator_pb2, generator_pb2_grpc

    rng = np.random.default_rng(args.clients)
    codes = rng.standard_normal((256, args.dim)).astype(np.float32)
    requests = [generator_pb2.SynthesizeRequest(model={"name": args.model}, format=args.format_code,
                                                codes=codec.latents(codes[i:i + 1], 1))
                for i in range(len(codes))]
    addresses = args.addresses.split(",")
    pids = [int(p) for p in args.server_pids.split(",")]
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def connect() -> list:  # channels belong to the loop they are made on, kept across slices
        return [generator_pb2_grpc.GeneratorServiceStub(grpc.aio.insecure_channel(
            a, options=[("grpc.max_receive_message_length", 64 << 20)])) for a in addresses]

    stubs = loop.run_until_complete(connect())

    async def run(target: int, warmup: float, seconds: float) -> dict:
        stub, now = stubs[target], loop.time()
        start, end = now + warmup, now + warmup + seconds
        latencies: list[float] = []
        errors = 0

        async def client(i: int) -> None:
            nonlocal errors
            k = i
            while (t0 := loop.time()) < end:
                k += args.clients
                try:
                    count = 0
                    async for reply in stub.Synthesize(requests[k % len(requests)], timeout=60):
                        count += len(reply.images)
                    ok = count == 1  # one code asked, one image owed
                except grpc.RpcError:
                    ok = False
                t1 = loop.time()
                if not ok:
                    errors += 1  # warm-up included; a failed or wrong call is never a completed image
                elif start <= t1 <= end:  # finished inside the measured window (possibly started in warm-up)
                    latencies.append(t1 - t0)

        tasks = [asyncio.create_task(client(i)) for i in range(args.clients)]
        await asyncio.sleep(max(0.0, start - loop.time()))
        cpu0, server0, wall0 = _self_cpu(), proc_cpu_seconds(pids[target]), time.perf_counter()
        await asyncio.sleep(max(0.0, end - loop.time()))
        cpu1, server1, wall1 = _self_cpu(), proc_cpu_seconds(pids[target]), time.perf_counter()
        await asyncio.gather(*tasks)
        return {"completed": len(latencies), "seconds": wall1 - wall0, "latencies": latencies, "errors": errors,
                "client_cpu": cpu1 - cpu0, "server_cpu": server1 - server0}

    return _serve_commands(lambda cmd: loop.run_until_complete(run(cmd["target"], cmd["warmup"], cmd["seconds"])))


class Totals:
    """Sums the slices of one benchmark point."""

    def __init__(self):
        self.images = 0
        self.seconds = 0.0
        self.latencies: list[float] = []
        self.errors = 0
        self.client_cpu = 0.0
        self.server_cpu = 0.0

    def add_load(self, r: dict) -> None:
        self.images += r["completed"]
        self.seconds += r["seconds"]
        self.latencies += r["latencies"]
        self.errors += r["errors"]
        self.client_cpu += r["client_cpu"]
        self.server_cpu += r["server_cpu"]

    def add_raw(self, r: dict) -> None:
        self.images += r["images"]
        self.seconds += r["seconds"]
        self.server_cpu += r["cpu"]

    def row(self, case: str, clients: int | None = None) -> dict:
        ms = np.array(self.latencies) * 1000
        out = {"case": case, "images_per_s": round(self.images / self.seconds, 1)}
        if clients is not None:
            out.update({"clients": clients, "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
                        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
                        "errors": self.errors, "client_cpu_cores": round(self.client_cpu / self.seconds, 2)})
        out.update({"server_cpu_cores": round(self.server_cpu / self.seconds, 2),
                    "server_cpu_ms_per_image": round(1000 * self.server_cpu / max(1, self.images), 2)})
        return out


def start_server(args: argparse.Namespace, batching: bool, log_dir: Path | None, dry_run: bool = False):
    from services.cluster import ServiceProcess

    flags = ["--torch-threads", str(args.threads), "--device", args.device, "--precision", args.precision,
             "--backend", args.backend,
             "--max-batch-size", str(args.max_batch_size), "--log-level", "WARNING",
             "--max-queue-delay-microseconds", str(args.max_queue_delay_us), "--default-model", args.model,
             "--prefetch-batches", str(args.prefetch_batches),
             "--batching" if batching else "--no-batching"]
    if args.cuda_graphs:
        flags += ["--cuda-graphs", args.cuda_graphs]
    if dry_run:
        return flags
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
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "torchscript", "onnxruntime"),
                   help="server and (a) backend (auto: torchscript on CPU, torch on CUDA)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads of the server and of (a); 1 leaves the second core to gRPC and clients")
    p.add_argument("--raw-batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8, 16, 32, 64],
                   help="batch sizes of the (a) sweep")
    p.add_argument("--raw-threads-2", type=int, default=2,
                   help="torch threads of the second raw ceiling (both cores; the server's default is 1)")
    p.add_argument("--sweep-seconds", type=float, default=2.0, help="seconds per batch size of the (a) sweep")
    p.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 64],
                   help="concurrent clients of (b) and (c)")
    p.add_argument("--load-processes", type=int, default=1, help="load-generator processes (clients spread over them)")
    p.add_argument("--rounds", type=int, default=5, help="alternating slices per point")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measured slice")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per point (over all its slices)")
    p.add_argument("--format", choices=("raw", "png"), default="png", help="image format the clients ask for")
    p.add_argument("--max-batch-size", type=int, default=0, help="server max_batch_size (0 = the server's auto)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000, help="server max_queue_delay_microseconds")
    p.add_argument("--prefetch-batches", type=int, default=1, help="server prefetch_batches (0 = batches formed "
                                                                     "only when the worker is free)")
    p.add_argument("--cuda-graphs", default="", help="CUDA: batch sizes captured as CUDA graphs, by the server "
                                                     "and the raw runner alike, e.g. 1,2,4,8,16,32,64,128,256")
    p.add_argument("--target-clients", type=int, default=0,
                   help="the served point compared with raw and with unbatched (0 = the most --clients)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (servers' flags, targets) and exit")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "generator.json", help="result file")
    # runner modes (internal)
    p.add_argument("--raw-runner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--load-runner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--addresses", help=argparse.SUPPRESS)
    p.add_argument("--server-pids", help=argparse.SUPPRESS)
    p.add_argument("--runner-clients", dest="clients_n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--format-code", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--dim", type=int, default=100, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.raw_runner:
        return raw_main(args)
    if args.load_runner:
        args.clients = args.clients_n
        return load_main(args)
    if args.quick:
        args.clients, args.raw_batch_sizes = [1, 8], [1, 16]
        args.sweep_seconds, args.warmup, args.duration, args.rounds = 0.5, 0.3, 1.5, 1

    import torch

    from interfacegan.v1 import common_pb2
    from services.generator import backends
    from models import Registry, build_net

    format_code = common_pb2.IMAGE_FORMAT_RAW if args.format == "raw" else common_pb2.IMAGE_FORMAT_PNG
    device = str(backends.resolve_device(args.device))
    max_batch = args.max_batch_size or (256 if device.startswith("cuda") else 16)
    spec = Registry().get(args.model)
    with torch.device("meta"):
        dim = build_net(spec.architecture, spec.resolution, **spec.kwargs).latent_shapes["z"][0]
    common = ["--model", args.model, "--device", args.device, "--precision", args.precision, "--backend", args.backend,
              "--cuda-graphs", args.cuda_graphs]
    slice_s = args.duration / args.rounds
    gpu = device.startswith("cuda")
    top = args.target_clients or max(args.clients)
    if top not in args.clients:
        p.error(f"--target-clients {top} is not one of --clients {args.clients}")
    thresholds = {"b_over_raw": MIN_B_OVER_RAW_GPU if gpu else MIN_B_OVER_RAW,
                  "b_over_c": MIN_B_OVER_C_GPU if gpu else MIN_B_OVER_C,
                  "b1_over_c1": MIN_B1_OVER_C1_GPU if gpu else MIN_B1_OVER_C1}
    if args.dry_run:
        print(json.dumps({"device": device, "max_batch_size": max_batch, "raw_batch_sizes": args.raw_batch_sizes,
                          "clients": args.clients, "target_clients": top, "cuda_graphs": args.cuda_graphs,
                          "raw_runner": common, "server_flags": start_server(args, True, None, dry_run=True),
                          "thresholds": thresholds}, indent=2))
        return 0

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    raw = Runner(["--raw-runner", "--threads", str(args.threads), *common])
    raw2 = Runner(["--raw-runner", "--threads", str(args.raw_threads_2), *common])
    sweep = {}
    for batch in args.raw_batch_sizes:
        t = Totals()
        t.add_raw(raw.ask(batch=batch, seconds=args.sweep_seconds))
        sweep[batch] = t.row(f"a raw batch {batch}, sweep")
        say(f"  a sweep batch {batch:3d}: {sweep[batch]['images_per_s']} img/s")
    best = max((b for b in sweep if b <= max_batch), key=lambda b: sweep[b]["images_per_s"])

    served: dict[str, dict[int, Totals]] = {"b": {}, "c": {}}
    ceiling, ceiling2 = Totals(), Totals()
    with tempfile.TemporaryDirectory() as tmp:
        servers = [start_server(args, True, Path(tmp)), start_server(args, False, Path(tmp))]
        try:
            addresses = ",".join(s.address for s in servers)
            pids = ",".join(str(s.pid) for s in servers)
            for clients in args.clients:
                procs = max(1, min(args.load_processes, clients))
                shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
                loaders = [Runner(["--load-runner", "--addresses", addresses, "--server-pids", pids, "--runner-clients",
                                   str(n), "--format-code", str(format_code), "--dim", str(dim), "--model", args.model])
                           for n in shares]
                served["b"][clients], served["c"][clients] = Totals(), Totals()
                for _ in range(args.rounds):
                    if clients == top:  # the ceilings, measured between the slices they are compared with
                        ceiling.add_raw(raw.ask(batch=best, seconds=slice_s))
                        ceiling2.add_raw(raw2.ask(batch=best, seconds=slice_s))
                    for target, mode in enumerate("bc"):
                        for loader in loaders:  # several processes: started together, then collected
                            loader.proc.stdin.write(json.dumps({"target": target, "warmup": args.warmup,
                                                                "seconds": slice_s}) + "\n")
                            loader.proc.stdin.flush()
                        for loader in loaders:
                            result = json.loads(loader.proc.stdout.readline())
                            result["server_cpu"] /= len(loaders)  # every loader measured the same server
                            served[mode][clients].add_load(result)
                for loader in loaders:
                    loader.close()
                for mode in "bc":
                    row = served[mode][clients].row(mode, clients)
                    say(f"  {mode}{clients:<3d} {row['images_per_s']:8.1f} img/s  p50 {row['p50_ms']} ms  "
                        f"p99 {row['p99_ms']} ms  client cpu {row['client_cpu_cores']}  "
                        f"server cpu {row['server_cpu_cores']}")
        finally:
            for s in servers:
                s.stop()
            raw.close()
            raw2.close()

    low = min(args.clients)
    a = ceiling.row(f"a raw batch {best}, between b{top}/c{top} slices")
    a2 = ceiling2.row(f"a raw batch {best}, {args.raw_threads_2} threads, between b{top}/c{top} slices")
    b_top, c_top = served["b"][top].row("").get("images_per_s"), served["c"][top].row("").get("images_per_s")
    b1, c1 = served["b"][low].row("")["images_per_s"], served["c"][low].row("")["images_per_s"]
    errors = {f"{m}{n}": served[m][n].errors for m in "bc" for n in args.clients}
    targets = {
        f"b{top}_over_raw": at_least(ratio(b_top, a["images_per_s"]), thresholds["b_over_raw"]),
        f"b{top}_over_c{top}": at_least(ratio(b_top, c_top), thresholds["b_over_c"]),
        f"b{low}_over_c{low}": at_least(ratio(b1, c1), thresholds["b1_over_c1"]),
        "served_errors": at_most(sum(errors.values()), 0),
    }
    # A ratio built on failed calls means nothing: a point with an error fails its target.
    for name, keys in ((f"b{top}_over_raw", [f"b{top}"]), (f"b{top}_over_c{top}", [f"b{top}", f"c{top}"]),
                       (f"b{low}_over_c{low}", [f"b{low}", f"c{low}"])):
        targets[name]["met"] = targets[name]["met"] and not any(errors[k] for k in keys)

    # Load-independent view: server CPU time per image (on a busy shared machine a process's throughput
    # mostly reflects the CPU share it gets; the CPU it spends per image does not depend on that share).
    cpu_ms = {f"{m}{n}": served[m][n].row("")["server_cpu_ms_per_image"] for m in "bc" for n in args.clients}
    efficiency = {"raw_cpu_ms_per_image": a["server_cpu_ms_per_image"], "served_cpu_ms_per_image": cpu_ms,
                  f"c{top}_over_b{top}_cpu_per_image": ratio(cpu_ms[f"c{top}"], cpu_ms[f"b{top}"])}
    table = [sweep[b] for b in args.raw_batch_sizes] + [a, a2]
    for mode, label in (("b", "batching on"), ("c", "batching off")):
        for clients, totals in served[mode].items():
            table.append(totals.row(f"{mode} {label}, {clients} clients", clients))
    result = {
        "benchmark": "generator", "quick": args.quick, "model": args.model,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "device": device, "load_average": os.getloadavg()},
        "settings": {"torch_threads": args.threads, "interop_threads": 1, "backend": backends.resolve_backend(args.backend, torch.device(device)), "load_processes": args.load_processes,
                     "max_batch_size": max_batch, "max_queue_delay_us": args.max_queue_delay_us,
                     "prefetch_batches": args.prefetch_batches,
                     "format": args.format, "rounds": args.rounds, "warmup_s": args.warmup,
                     "duration_s": args.duration, "precision": args.precision, "raw_batch": best,
                     "raw_threads_2": args.raw_threads_2, "cuda_graphs": args.cuda_graphs,
                     "target_clients": top},
        "raw_ceiling_images_per_s": a["images_per_s"], "raw_ceiling_2_threads_images_per_s": a2["images_per_s"],
        f"b{top}_over_raw_2_threads": ratio(b_top, a2["images_per_s"]), "table": table, "targets": targets,
        "cpu_efficiency": efficiency,
    }
    print_table(result)
    write_result(args.out, result, say)
    return 0


def print_table(result: dict) -> None:
    s = result["settings"]
    print(f"\ngenerator benchmark  model {result['model']}  device {result['machine']['device']}  "
          f"backend {s['backend']}  torch threads "
          f"{s['torch_threads']}  max_batch_size {s['max_batch_size']}  prefetch {s.get('prefetch_batches', 0)}  "
          f"format {s['format']}  "
          f"load avg {result['machine']['load_average'][0]:.1f}")
    print("cpu columns: cores busy; cpu ms/img = server (or raw) CPU time per image, less sensitive to other load")
    print(f"{'case':50s} {'img/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'client cpu':>10s} {'server cpu':>10s} "
          f"{'cpu ms/img':>10s}")
    for row in result["table"]:
        print(f"{row['case']:50s} {row['images_per_s']:8.1f} {_fmt(row.get('p50_ms')):>8s} "
              f"{_fmt(row.get('p99_ms')):>8s} {_fmt(row.get('client_cpu_cores')):>10s} "
              f"{_fmt(row.get('server_cpu_cores')):>10s} {_fmt(row.get('server_cpu_ms_per_image')):>10s}")
    e = result["cpu_efficiency"]
    print("cpu per image (ms): raw", e["raw_cpu_ms_per_image"], " served", e["served_cpu_ms_per_image"])
    top = max(int(k.split("_")[0][1:]) for k in result["targets"] if k.endswith("_over_raw"))
    print(f"b{top} over the {s['raw_threads_2']}-thread raw ceiling (not a target: the server runs "
          f"{s['torch_threads']} torch thread): {result[f'b{top}_over_raw_2_threads']}")
    print("targets:")
    print_targets(result["targets"])


def _fmt(value) -> str:
    return "" if value is None else f"{value}"


if __name__ == "__main__":
    sys.exit(main())
