"""Studio benchmark: how long a slider move takes through the page's own API, on a seed and on a photo.

A person dragging a slider sends one POST /api/edit per position (the page keeps one in flight and skips the
positions it passed meanwhile); each is timed here from request to decoded JSON reply, the way the page sees it.
Scenarios, one client, one move after another, on an idle cluster: one slider dragged on a seed; the same with
another slider set (its code is cached, so still one edit a move); holding another attribute (a conditional
boundary, cached after the first move); a 7-image grid; yaw (a scored attribute: the shipped boundary) holding
automatically (the editor measures the others along each move) and in degrees (each move a target search); the
first drag again while a boundary training job
samples and scores on the same cluster (the job's calls ride the bulk lane, the drag's the interactive one; they
share the machine's cores); a photo's first upload (inversion, once per photo) and a drag on that photo. Each row
gives the median, 90th percentile and mean wall milliseconds and, from the reply's `editor_ms`, how much of a
move the editor's Edit call is (the rest is HTTP, JSON and PNG transfer).

Boundaries: two unit normals imported for the default model (a move costs the same whatever the normal).
Writes bench/results/studio.json with the table and `targets`: the median slider move on a seed under 150 ms.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from interfacegan.v1 import boundary_pb2, boundary_pb2_grpc, common_pb2, studio_pb2, studio_pb2_grpc  # noqa: E402
from services.cluster import Cluster  # noqa: E402
from services.common import assets  # noqa: E402
from bench.harness import at_most, load_average, print_targets, write_result  # noqa: E402

MODEL = "dcgan-digiface-64"
TARGET_MS = 150.0
A, B = "bench-a", "bench-b"


def post(url: str, body, content_type: str = "application/json") -> tuple[dict, float]:
    """One call as the page makes it; returns the reply and its wall milliseconds."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        reply = json.loads(response.read())
    return reply, (time.perf_counter() - started) * 1000


def import_boundaries(editor: str) -> None:
    rng = np.random.default_rng(2026)
    with grpc.insecure_channel(editor) as channel:
        stub = boundary_pb2_grpc.BoundaryServiceStub(channel)  # the editor relays BoundaryService
        for name in (A, B):
            normal = rng.standard_normal((1, 100))
            buf = io.BytesIO()
            np.save(buf, normal / np.linalg.norm(normal))
            stub.ImportBoundary(boundary_pb2.ImportBoundaryRequest(
                model=MODEL, attribute=name, space=common_pb2.LATENT_SPACE_Z, npy=buf.getvalue()), timeout=60)


def drag(url: str, source: dict, moves: int, others: dict, hold: list[str], *, slider: str = A, span: float = 3.0,
         **options) -> list[dict]:
    """`moves` positions of a slider from -span to +span (a drag), each timed."""
    rows = []
    for d in np.linspace(-span, span, moves):
        reply, ms = post(url + "api/edit", {"source": source, "values": {slider: round(float(d), 3), **others},
                                            "active": slider, "hold": hold, **options})
        rows.append({"ms": ms, "editor_ms": reply["editor_ms"]})
    return rows


def drag_during_training(url: str, editor: str, source: dict, moves: int) -> list[dict]:
    """The same drag while a boundary training job samples and scores faces on the same cluster, then cancelled."""
    job: list[str] = []

    def train():
        with grpc.insecure_channel(editor) as channel:
            stub = boundary_pb2_grpc.BoundaryServiceStub(channel)
            try:
                for update in stub.TrainBoundaries(boundary_pb2.TrainBoundariesRequest(
                        request_id=uuid.uuid4().hex, attributes=["yaw"], num_samples=50_000, chosen_ratio=0.02,
                        seed=int(time.time())), timeout=900):
                    job[:1] = [update.job_id]
            except grpc.RpcError:
                pass  # cancelled below

    worker = threading.Thread(target=train, daemon=True)
    worker.start()
    time.sleep(5)  # the job is sampling
    try:
        return drag(url, source, moves, {B: 0.0}, [])
    finally:
        if job:
            with grpc.insecure_channel(editor) as channel:
                boundary_pb2_grpc.BoundaryServiceStub(channel).CancelJob(
                    boundary_pb2.CancelJobRequest(job_id=job[0]), timeout=60)
        worker.join(120)


def summary(name: str, rows: list[dict]) -> dict:
    ms = [r["ms"] for r in rows]
    editor = [r["editor_ms"] for r in rows if r.get("editor_ms") is not None]
    return {"scenario": name, "calls": len(ms), "median_ms": round(statistics.median(ms), 1),
            "p90_ms": round(float(np.percentile(ms, 90)), 1), "mean_ms": round(statistics.fmean(ms), 1),
            "editor_median_ms": round(statistics.median(editor), 1) if editor else None}


def run(url: str, editor: str, moves: int, photo: bool) -> list[dict]:
    import_boundaries(editor)
    seed = {"seed": 7}
    post(url + "api/source", {"seed": 7})
    drag(url, seed, 3, {}, [])  # warm-up: connections, the boundary caches
    table = [summary("drag one slider, seed", drag(url, seed, moves, {B: 0.0}, [])),
             summary("drag with another slider set, seed", drag(url, seed, moves, {B: 1.5}, [])),
             summary(f"drag holding {B}, seed", drag(url, seed, moves, {B: 0.0}, [B]))]
    grids = []
    for _ in range(max(2, moves // 10)):
        reply, ms = post(url + "api/grid", {"source": seed, "values": {B: 0.0}, "attribute": A, "start": -3,
                                            "end": 3, "steps": 7})
        grids.append({"ms": ms, "editor_ms": None})
    table.append(summary("grid of 7 images, seed", grids))
    if photo:
        sliders = {s["attribute"]: s for s in json.loads(urllib.request.urlopen(url + "api/catalog").read())["sliders"]}
        if (sliders.get("yaw") or {}).get("unit_range"):  # a scored attribute's boundary (the shipped yaw)
            table.append(summary("drag yaw holding automatically, seed",
                                 drag(url, seed, moves, {}, [], slider="yaw", hold_auto=True)))
            table.append(summary("drag yaw in degrees (target search), seed",
                                 drag(url, seed, moves, {}, [], slider="yaw", span=20.0, units=True)))
        table.append(summary("drag one slider, seed, during a training job",
                             drag_during_training(url, editor, seed, min(moves, 20))))
        data = assets.path_of("grace_hopper.jpg").read_bytes()
        reply, ms = post(url + "api/photo", data, "image/jpeg")
        table.append({**summary("photo upload (inversion, once per photo)", [{"ms": ms, "editor_ms": None}]),
                      "psnr_db": round(reply["psnr"], 2)})
        table.append(summary("drag one slider, photo", drag(url, {"photo": reply["photo"]}, moves, {B: 0.0}, [])))
    return table


def studio_url(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        info = studio_pb2_grpc.StudioServiceStub(channel).GetStudioInfo(studio_pb2.GetStudioInfoRequest(), timeout=30)
    return info.url


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few moves, no training job, no photo (the test's smoke run)")
    p.add_argument("--moves", type=int, default=60, help="slider positions per drag")
    p.add_argument("--attach", type=Path, default=None, help="run folder of a running cluster (its cluster.json) "
                                                              "instead of starting one")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "studio.json")
    args = p.parse_args()
    moves = 8 if args.quick else args.moves
    cluster = None
    try:
        if args.attach:
            state = json.loads((args.attach / "cluster.json").read_text())["services"]
            editor, studio = (f"127.0.0.1:{state[n]['port']}" for n in ("editor", "studio"))
        else:
            print("starting the cluster ...", flush=True)
            cluster = Cluster.up(Path(tempfile.mkdtemp(prefix="bench-studio-")), fixed_ports=False,
                                 env={"IFGAN_MODELS_DIR": str(assets.models_dir())}, log=lambda *_: None)
            editor, studio = cluster.services["editor"].address, cluster.services["studio"].address
        url = studio_url(studio)
        load_before = load_average()
        table = run(url, editor, moves, photo=not args.quick)
    finally:
        if cluster is not None:
            cluster.down()
    print(f"{'scenario':46s} {'calls':>5s} {'median':>8s} {'p90':>8s} {'mean':>8s} {'editor':>8s}  (ms)")
    for row in table:
        editor_ms = f"{row['editor_median_ms']:8.1f}" if row["editor_median_ms"] is not None else f"{'':8s}"
        print(f"{row['scenario']:46s} {row['calls']:5d} {row['median_ms']:8.1f} {row['p90_ms']:8.1f} "
              f"{row['mean_ms']:8.1f} {editor_ms}")
    targets = {"slider_move_median_ms_seed": at_most(table[0]["median_ms"], TARGET_MS)}
    print_targets(targets)
    result = {"benchmark": "studio", "quick": args.quick, "moves_per_drag": moves, "table": table,
              "targets": targets, "load_average_before": load_before, "load_average_after": load_average(),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
