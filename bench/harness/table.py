"""The README's benchmark table, generated from bench/results/*.json.

python -m bench.harness.table            # print the Markdown table
python -m bench.harness.table --write    # replace the table between the markers in README.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
#: The benchmarks of the table (others are listed under it by name).
ORDER = ("generator", "scorer", "boundary", "inversion", "reliability")

#: What each target compares, in words (a target missing here is shown by its name).
WHAT = {
    "b64_over_raw": "served images/s with dynamic batching, 64 clients, ÷ the model alone in a process at its best "
                    "batch with the server's 1 torch thread (alternating slices of one run)",
    "b64_over_c64": "served images/s, 64 clients: batching on ÷ batching off",
    "b1_over_c1": "served images/s, 1 client: batching on ÷ off (what the batcher costs when idle)",
    "served_errors": "failed or wrong calls while serving (a ratio with errors fails)",
    "served_over_in_process_b64_gender": "served ÷ in-process images/s at batch 64: gender",
    "served_over_in_process_b64_age": "served ÷ in-process images/s at batch 64: age",
    "served_over_in_process_b64_mesh": "served ÷ in-process images/s at batch 64: face mesh (yaw, smile, ...)",
    "served_over_in_process_b64_all": "served ÷ in-process images/s at batch 64: all attributes",
    "svm_cosine_vs_svc": "cosine of our SVM normal to the reference's SVC(kernel='linear') on the same samples "
                         "(least over attributes)",
    "svm_20k_converged": "attributes whose SVM on 20K chosen samples converged (server's solver)",
    "svm_seconds_20k": "SVM fit on 20K chosen samples, seconds (slowest attribute)",
    "gender_validation_accuracy": "validation accuracy of the gender boundary",
    "age_validation_accuracy": "validation accuracy of the age boundary",
    "yaw_validation_accuracy": "validation accuracy of the yaw boundary",
    "smile_validation_accuracy": "validation accuracy of the smile boundary",
    "boundary_peak_rss_mb": "peak memory of the boundary server during the job, MiB",
    "speedup_per_sample_vs_baseline": "samples/s of ours ÷ a reference-style pipeline (batches of 4, sequential): "
                                      "same processes, same client timer, same round size",
    "mean_psnr_many_db": "mean PSNR of held-out generated images inverted by the served Invert (many callers)",
    "min_photo_psnr_db": "lowest PSNR of the real photos (face aligned), served Invert",
    "wall_seconds_per_image_many": "wall seconds per image, many concurrent Invert calls at the server's defaults",
    "server_cpu_seconds_per_image_many": "server CPU seconds per image, same calls",
    "p50_seconds_one_request": "median latency of one Invert call at a time, seconds",
    "server_cpu_seconds_per_image_one_request": "server CPU seconds per image, one Invert call at a time",
    "errors": "failed or wrong Invert calls",
    "warmup_errors": "errors in the warm-up (every reply checked)",
    "load_errors": "errors at 80% of the measured capacity (every reply checked)",
    "load_achieved_over_offered_min": "calls made and answered OK ÷ calls due, open loop at 80% of capacity "
                                      "(least over RPCs)",
    "memory_growth_max_pct": "resident memory growth over the loaded minutes, % (largest service)",
    "all_serving_after": "services SERVING at the end (the cluster and the capacity-limited replicas)",
}


def rows(results: Path) -> list[str]:
    out = ["| benchmark | figure (what it compares) | measured | target | met |", "|---|---|---|---|---|"]
    for name in ORDER:
        path = results / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        targets = dict(data.get("targets", {}))
        overload = {k: targets.pop(k) for k in list(targets) if k.startswith("overload_")}
        first = True
        for key, t in targets.items():
            label = f"`bench/{name}.py`" if first else ""
            first = False
            out.append(f"| {label} | {WHAT.get(key, key)} | {_fmt(t['value'])} | {t.get('compare', '>=')} "
                       f"{_fmt(t['target'])} | {'yes' if t['met'] else '**no**'} |")
        for what, value in info(name, data):
            out.append(f"| | {what} | {value} | (not a target) | |")
        if overload:
            services = sorted({k.split("_")[1] for k in overload})
            met = sum(t["met"] for t in overload.values())
            out.append(f"| | overload of every service ({', '.join(services)}): refused only with "
                       f"RESOURCE_EXHAUSTED with a retry hint, some calls served, no other "
                       f"error | {met} of {len(overload)} checks | all | {'yes' if met == len(overload) else '**no**'} |")
    others = sorted(p.stem for p in results.glob("*.json") if p.stem not in ORDER)
    if others:
        out.append("")
        out.append("Other benchmarks' figures and targets are in their own result files: "
                   + ", ".join(f"`bench/results/{n}.json`" for n in others) + ".")
    return out


def info(name: str, data: dict) -> list[tuple[str, str]]:
    """Figures beside the targets that the README quotes."""
    if name == "generator":
        top = max(int(k.split("_")[0][1:]) for k in data["targets"] if k.endswith("_over_raw"))
        key = f"b{top}_over_raw_2_threads"
        if key in data:
            return [(f"served b{top} ÷ the raw ceiling with 2 torch threads (both cores; the server runs 1)",
                     _fmt(data[key])),
                     ("raw ceiling, images/s: 1 thread / 2 threads",
                      f"{data['raw_ceiling_images_per_s']} / {data['raw_ceiling_2_threads_images_per_s']}")]
    if name == "boundary":
        ours = data["ours"]
        return [(f"boundaries from N={ours['num_samples']:,} samples: samples/s through generate + score "
                 f"(the job's timer)", f"{ours['samples_per_second']:.1f}")]
    if name == "inversion":
        return [(f"real photo {p['photo']}, PSNR of the aligned crop", f"{p.get('mean_psnr', p.get('psnr'))} dB")
                for p in data.get("photos", [])]
    return []


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="folder of result files")
    p.add_argument("--write", action="store_true", help=f"replace the table between {START} and {END} in README.md")
    args = p.parse_args(argv)
    table = "\n".join(rows(args.results))
    if not args.write:
        print(table)
        return 0
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
