"""In-process throughput and peak memory per batch size of a random-weight generator, at several resolutions.

For each resolution a network of `--architecture` (default StyleGAN2) is built with random weights, written
as a checkpoint in its published layout and loaded through the model registry, as the generator service
loads a user's model (`--model name=stylegan2:PATH:RES`), with the service's backend settings (fp16 and CUDA
graphs on CUDA). Then for each batch size: warm-up calls, then `--seconds` of synthesis to uint8 host
pixels (what the service encodes): images/s and, on CUDA, the peak memory the batch took (allocated and
reserved by the caching allocator). A batch size that runs out of memory ends that resolution's sweep
(reported as such; not an error).

Writes bench/results/model-sweep.json, or with `--into FILE` adds the result as the "model_sweep" section of
an existing results file (bench/gpu.sh puts it into generator-gpu.json). Target: every resolution ran at
least its smallest batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import at_least, print_targets  # noqa: E402


def sizes(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: accepted comma-separated positive integers, e.g. 1,8,64")
    return values


def sweep_one(model, batch_sizes: list[int], seconds: float, torch) -> list[dict]:
    """Rows of one loaded model: images/s and peak memory per batch size, until one runs out of memory."""
    cuda = model.device.type == "cuda"
    rows = []
    for batch in batch_sizes:
        codes = model.sample(batch, seed=batch)
        try:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(model.device)
            for _ in range(2):  # kernels chosen, allocator warmed
                model.synthesize(codes, "z", output="uint8")
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds or done == 0:
                model.synthesize(codes, "z", output="uint8")  # includes the copy back to the host
                done += batch
            if cuda:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
        except torch.cuda.OutOfMemoryError:
            rows.append({"batch": batch, "out_of_memory": True})
            torch.cuda.empty_cache()
            break
        row = {"batch": batch, "images_per_s": round(done / elapsed, 1), "ms_per_batch": round(1000 * elapsed * batch
                                                                                                / done, 2)}
        if cuda:
            row["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated(model.device) / 2**20, 1)
            row["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved(model.device) / 2**20, 1)
        rows.append(row)
        print(f"  batch {batch:5d}: {row['images_per_s']:10.1f} img/s  {row['ms_per_batch']:9.2f} ms/batch"
              + (f"  peak {row['peak_allocated_mib']:.0f} MiB" if cuda else ""), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--architecture", default="stylegan2", help="registry architecture of the random-weight network")
    p.add_argument("--resolutions", type=sizes, default=[256, 1024], help="output sides, comma separated")
    p.add_argument("--batch-sizes", type=sizes, default=[1, 2, 4, 8, 16, 32, 64, 128, 256],
                   help="batch sizes of every resolution, comma separated")
    p.add_argument("--max-batch-1024", type=int, default=64,
                   help="largest batch size tried at 1024 px (and above) (0 = all of --batch-sizes)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--precision", default="auto", help="auto (float16 on CUDA), float32, float16")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="CUDA: capture every swept batch size as a CUDA graph, as --cuda-graphs does in the service")
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per batch size")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "model-sweep.json", help="results file")
    p.add_argument("--into", type=Path, default=None,
                   help="add the result as the 'model_sweep' section of this existing results file instead")
    args = p.parse_args(argv)

    import torch

    from models import Registry, build_net, save_checkpoint
    from services.generator import backends

    if args.threads:
        torch.set_num_threads(args.threads)
    device = backends.resolve_device(args.device)
    dtype = backends.resolve_dtype(args.precision, device)
    results, targets = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for resolution in args.resolutions:
            batch_sizes = [b for b in args.batch_sizes
                           if resolution < 1024 or not args.max_batch_1024 or b <= args.max_batch_1024]
            name = f"{args.architecture}-random-{resolution}"
            torch.manual_seed(resolution)
            path = save_checkpoint(build_net(args.architecture, resolution), Path(tmp) / f"{name}.pt")
            registry = Registry()
            registry.register_flag(f"{name}={args.architecture}:{path}:{resolution}")
            started = time.perf_counter()
            model = registry.load(name, device, dtype=dtype)
            graphs = tuple(batch_sizes) if args.cuda_graphs and device.type == "cuda" else ()
            backends.attach(model, "torch", max(1, args.threads), graphs)
            load_s = time.perf_counter() - started
            print(f"{name} on {device} ({model.precision}, CUDA graphs {list(graphs) or 'none'}), loaded in "
                  f"{load_s:.1f} s", flush=True)
            rows = sweep_one(model, batch_sizes, args.seconds, torch)
            ran = [r for r in rows if "images_per_s" in r]
            best = max(ran, key=lambda r: r["images_per_s"]) if ran else None
            results[str(resolution)] = {"model": name, "precision": model.precision, "cuda_graphs": list(graphs),
                                        "load_and_capture_seconds": round(load_s, 1), "rows": rows,
                                        "best_batch": best["batch"] if best else None,
                                        "best_images_per_s": best["images_per_s"] if best else None}
            targets[f"{resolution}px_ran"] = at_least(len(ran), 1)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    section = {"benchmark": "model_sweep", "architecture": args.architecture, "device": str(device),
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
               "seconds_per_point": args.seconds, "resolutions": results, "targets": targets}
    print_targets(targets)
    if args.into:
        whole = json.loads(args.into.read_text()) if args.into.exists() else {}
        whole["model_sweep"] = section
        for name, target in targets.items():  # the sweep's targets join the file's own
            whole.setdefault("targets", {})[f"model_sweep_{name}"] = target
        args.into.write_text(json.dumps(whole, indent=2) + "\n")
        print(f"added the model_sweep section to {args.into}")
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(section, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0 if all(t["met"] for t in targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
