"""Calibrated-edits benchmark: edits asked in the attribute's unit, on sampled faces, through the real cluster.

On N faces (fixed seeds) it asks the editor for age +10 y, age -10 y, smile to 0.8, yaw to +20 deg, yaw to -20 deg
and gender to 0.9 (each a target edit: the editor searches the distance with the scorer in the loop), then
gender to 0.9 with hold=auto. Per edit: hit rate within tolerance (as measured by the scorer on the returned
image), mean rounds and generator + scorer calls, images measured, seconds per edit, and why misses stopped. A
noise check re-scores the hits of every 4th face at their distance +- 0.05: the fraction of hits whose neighbours are
still within twice the tolerance says how much of a hit the scorer's noise explains. A reach scan renders every
4th face along each boundary at 33 distances from -16 to +16 (twice the default distance limit) and says on how
many faces any distance gets within tolerance of each goal at all: what this model and scorer allow, whatever the
search does. For hold=auto, over every face whose drift passed the threshold (held, or given up by the editor): the
drift along the edit's own direction and on the returned image
(age during a gender edit is the one with a target), the same drift re-measured at the returned distance +- 0.05,
and whether the unedited face's own reading of a held attribute is stable (its neighbours at +- 0.05 along the
edit within the threshold): a face whose reading is a spike of the scorer cannot be held at it. The public-domain
portraits (scikit-image's astronaut, matplotlib's grace_hopper) get the same edits as a section of their own.

Writes bench/results/calibration.json (table and targets). `--quick` runs a few faces (a test runs it against
the session's cluster).
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import at_least, at_most, load_average, print_targets, write_result  # noqa: E402
from interfacegan import Client  # noqa: E402
from interfacegan.edits import EditSpec  # noqa: E402
from interfacegan.v1 import editor_pb2  # noqa: E402
from services.cluster import Cluster  # noqa: E402
from services.common import assets  # noqa: E402

#: (edit, hit-rate target): the issue's targets, 80% where the scorer is clean (pose, mouth), 60% otherwise.
EDITS = [("age:+10y", 0.6), ("age:-10y", 0.6), ("smile:to=0.8", 0.8), ("yaw:to=20", 0.8), ("yaw:to=-20", 0.8),
         ("gender:to=0.9", 0.6)]
HOLD_EDIT = "gender:to=0.9:hold=auto"
MAX_MEAN_ROUNDS = 4.0
MIN_DRIFT_CUT = 0.8
NOISE_STEP = 0.05
NOISE_EVERY = 4  # the noise check runs on every 4th face (seed % 4 == 0): it costs a call of its own
FIRST_SEED = 1000
SCAN = (-16.0, 16.0, 33)  # the reach scan: twice the default distance limit, unit steps
SCAN_EVERY = 4
LIMIT = 8.0  # the editor's default distance limit (interfacegan.defaults.TARGET_MAX_DISTANCE)
PHOTOS = ("astronaut.png", "grace_hopper.jpg")


def one(client: Client, seed: int, text: str, deadline: float) -> dict | None:
    """One target edit of one face, and the noise check around its distance (None once past the deadline)."""
    if time.monotonic() > deadline:
        return None
    started = time.perf_counter()
    result = client.edit(seed=seed, edits=[text])
    seconds = time.perf_counter() - started
    frame = result.edit(0)[0]
    t, receipt = frame.target, frame.receipt
    row = {"seed": seed, "edit": text, "seconds": seconds, "met": t.met, "stop": t.stop, "rounds": t.rounds,
           "evaluations": t.evaluations, "before": t.before, "after": t.after, "goal": t.goal,
           "tolerance": t.tolerance, "distance": t.distance, "unit": t.unit,
           "boundary": f"{receipt.boundary.attribute} v{receipt.boundary.version}",
           "holds": [{"attribute": h.attribute, "drift": h.drift, "held_drift": h.held_drift, "held": h.held,
                      "needed": abs(h.drift) > h.threshold,
                      "within": abs(h.held_drift) <= h.threshold} for h in frame.holds]}
    if frame.holds:
        row.update(hold_checks(client, seed, frame))
    if t.met and not frame.holds and seed % NOISE_EVERY == 0:
        d = t.distance
        spec = EditSpec(receipt.boundary.attribute, d - NOISE_STEP, d + NOISE_STEP, 2,
                        version=receipt.boundary.version)
        near = client.edit(seed=seed, edits=[spec], rescore=True).edit(0)
        values = [f.scores.get(t.attribute) for f in near]
        row["noise_stable"] = all(v is not None and abs(v - t.goal) <= 2 * t.tolerance for v in values)
    return row


def _scores(frames) -> list[dict]:
    """Valid scores of SDK frames or raw EditResponses."""
    return [{s.attribute: s.value for s in getattr(f, "message", f).scores if s.valid} for f in frames]


def hold_checks(client: Client, seed: int, frame) -> dict:
    """For every held attribute: the unedited face's reading against its neighbours (+- NOISE_STEP along the
    edit's own boundary), and the held drift re-measured beside the returned image (its replay at +- NOISE_STEP)."""
    now = {s.attribute: s.value for s in frame.message.scores if s.valid}
    held = [h for h in frame.holds if h.held and h.attribute in now]
    if not held:
        return {}
    base = {h.attribute: now[h.attribute] - h.held_drift for h in held}
    raw = frame.receipt.parents[0] if frame.receipt.parents else frame.receipt.boundary
    around = _scores(client.edit(seed=seed, edits=[EditSpec(raw.attribute, -NOISE_STEP, NOISE_STEP, 2,
                                                            version=raw.version)], rescore=True).edit(0))
    replay = editor_pb2.EditRequest()
    replay.CopyFrom(frame.receipt.replay)
    replay.rescore = True
    d = frame.receipt.distance
    replay.edits[0].start, replay.edits[0].end, replay.edits[0].steps = d - NOISE_STEP, d + NOISE_STEP, 2
    beside = _scores(client.editor.Edit(replay, timeout=client.timeout))
    out = {}
    for h in held:
        a = h.attribute
        out[a] = {"base_stable": all(a in r and abs(r[a] - base[a]) <= h.threshold for r in around),
                  "held_drift_beside": [r[a] - base[a] if a in r else None for r in beside]}
    return {"hold_checks": out}


def scan(client: Client, seed: int, deadline: float) -> dict | None:
    """The attribute of each edited boundary at every SCAN distance along it (None where no face was found)."""
    if time.monotonic() > deadline:
        return None
    names = sorted({EditSpec.parse(text).attribute for text, _ in EDITS})
    result = client.edit(seed=seed, edits=[EditSpec(n, *SCAN) for n in names], rescore=True)
    return {"seed": seed, "scan": {n: [f.scores.get(n) for f in result.edit(k)] for k, n in enumerate(names)}}


def reach(scans: list[dict], text: str, tolerance: float) -> dict:
    """On how many scanned faces some distance within the limit (and within twice it) gets within tolerance of the
    goal, on the side a change asks for; and the values reached at all (the highest and lowest)."""
    spec = EditSpec.parse(text)
    distances = [SCAN[0] + k * (SCAN[1] - SCAN[0]) / (SCAN[2] - 1) for k in range(SCAN[2])]
    within, within2, faces, extremes = 0, 0, 0, []
    for s in scans:
        values = s["scan"][spec.attribute]
        before = values[distances.index(0.0)]
        if before is None:
            continue
        faces += 1
        goal = before + spec.delta if spec.delta is not None else spec.to
        side = math.copysign(1.0, spec.delta) if spec.delta else 0.0
        near = [abs(d) for d, v in zip(distances, values) if v is not None and abs(v - goal) <= tolerance
                and (not side or d * side >= 0)]
        within += any(d <= LIMIT for d in near)
        within2 += bool(near)
        seen = [v for d, v in zip(distances, values) if v is not None and abs(d) <= LIMIT]
        extremes.append((min(seen), max(seen)))
    return {"scanned_faces": faces, "reachable_within_limit": within / max(1, faces),
            "reachable_within_twice_limit": within2 / max(1, faces),
            "median_highest_within_limit": statistics.median(h for _, h in extremes) if extremes else None,
            "highest_within_limit": max((h for _, h in extremes), default=None),
            "median_lowest_within_limit": statistics.median(lo for lo, _ in extremes) if extremes else None}


def photo_edit(client: Client, name: str, text: str, deadline: float) -> dict | None:
    """One target edit of a public-domain portrait (inverted and tuned by the cluster)."""
    if time.monotonic() > deadline:
        return None
    started = time.perf_counter()
    frame = client.edit(photo=assets.path_of(name).read_bytes(), edits=[text]).edit(0)[0]
    t = frame.target
    return {"photo": name, "edit": text, "seconds": time.perf_counter() - started, "met": t.met, "stop": t.stop,
            "before": t.before, "after": t.after, "goal": t.goal, "distance": t.distance, "rounds": t.rounds,
            "identity_distance": frame.message.identity_distance, "variant": bool(frame.receipt.variant),
            "holds": [{"attribute": h.attribute, "drift": h.drift, "held_drift": h.held_drift, "held": h.held}
                      for h in frame.holds]}


def summarise(rows: list[dict], text: str, target: float) -> dict:
    mine = [r for r in rows if r["edit"] == text]
    hits = [r for r in mine if r["met"]]
    stops = {}
    for r in mine:
        if not r["met"]:
            stops[r["stop"]] = stops.get(r["stop"], 0) + 1
    stable = [r["noise_stable"] for r in hits if "noise_stable" in r]
    return {"edit": text, "faces": len(mine), "unit": mine[0]["unit"] if mine else "",
            "tolerance": mine[0]["tolerance"] if mine else None,
            "hit_rate": len(hits) / max(1, len(mine)), "target_hit_rate": target,
            "mean_rounds": statistics.fmean(r["rounds"] for r in mine),
            "mean_calls": statistics.fmean(2 * (r["rounds"] + 1) for r in mine),
            "mean_images_measured": statistics.fmean(r["evaluations"] for r in mine),
            "seconds_per_edit": statistics.fmean(r["seconds"] for r in mine),
            # over the faces with a measured value (a face the scorer finds no face in has none)
            "median_abs_error": statistics.median([e for r in mine if math.isfinite(e := abs(r["after"] - r["goal"]))]
                                                  or [math.nan]),
            "mean_abs_distance": statistics.fmean(abs(r["distance"]) for r in mine),
            "noise_stable_hits": (sum(stable) / len(stable)) if stable else None,
            "misses_by_stop": stops, "boundary": mine[0]["boundary"] if mine else ""}


def hold_summary(rows: list[dict]) -> dict:
    """Drift of every attribute hold=auto measured, before (raw direction) and after (the direction used)."""
    mine = [r for r in rows if r["edit"] == HOLD_EDIT]
    out = {"edit": HOLD_EDIT, "faces": len(mine), "hit_rate": sum(r["met"] for r in mine) / max(1, len(mine)),
           "mean_rounds": statistics.fmean(r["rounds"] for r in mine) if mine else None, "attributes": {}}
    names = sorted({h["attribute"] for r in mine for h in r["holds"]})
    for name in names:
        measured = [h for r in mine for h in r["holds"] if h["attribute"] == name]
        # Every face whose drift passed the threshold counts, held or not: a hold the editor gave up (it would
        # miss the target, or hold no better) keeps its whole drift.
        held = [h for h in measured if h["needed"]]
        before = [abs(h["drift"]) for h in held]
        after = [abs(h["held_drift"]) for h in held]
        entry = {"measured": len(measured), "needed": len(held), "held": sum(h["held"] for h in held),
                 "mean_drift_all": statistics.fmean(h["drift"] for h in measured),
                 "mean_drift_all_after": statistics.fmean(h["held_drift"] for h in measured)}
        if held:
            entry.update(mean_abs_drift_held=statistics.fmean(before), mean_abs_drift_held_after=statistics.fmean(after),
                         mean_drift_held=statistics.fmean(h["drift"] for h in held),
                         mean_drift_held_after=statistics.fmean(h["held_drift"] for h in held),
                         within_threshold_after=sum(h["within"] for h in held) / len(held),
                         cut=1 - statistics.fmean(after) / statistics.fmean(before))
            checks = [(h, r.get("hold_checks", {}).get(name)) for r in mine for h in r["holds"]
                      if h["attribute"] == name and h["held"]]
            checks = [(h, c) for h, c in checks if c is not None]
            stable = [h for h, c in checks if c["base_stable"]]
            beside = [abs(v) for _, c in checks for v in c["held_drift_beside"] if v is not None]
            entry.update(
                checked=len(checks), base_stable=len(stable),
                # the same cut over the held faces whose unedited reading is not a spike of the scorer
                cut_base_stable=(1 - statistics.fmean(abs(h["held_drift"]) for h in stable)
                                 / statistics.fmean(abs(h["drift"]) for h in stable)) if stable else None,
                # the held drift at the returned distance +- NOISE_STEP: how much of the hold survives beside it
                mean_abs_drift_held_beside=statistics.fmean(beside) if beside else None,
                cut_beside=(1 - statistics.fmean(beside) / statistics.fmean(before)) if beside else None)
        if entry["mean_drift_all"]:
            # the form: the mean (signed) drift over every face, along the edit's own and the used direction
            entry["signed_cut_all"] = 1 - entry["mean_drift_all_after"] / entry["mean_drift_all"]
        out["attributes"][name] = entry
    return out


def photo_summary(rows: list[dict]) -> dict:
    """The portraits' edits: per edit the hits over the portraits; every row."""
    rows = sorted((r for r in rows if r), key=lambda r: (r["photo"], r["edit"]))
    edits = {}
    for r in rows:
        e = edits.setdefault(r["edit"], {"photos": 0, "met": 0})
        e["photos"] += 1
        e["met"] += bool(r["met"])
    return {"photos": list(PHOTOS), "by_edit": edits, "rows": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="6 faces (the test's smoke run)")
    p.add_argument("--faces", type=int, default=200, help="faces (seeds FIRST_SEED ..)")
    p.add_argument("--concurrency", type=int, default=6, help="Edit calls in flight")
    p.add_argument("--max-minutes", type=float, default=0, help="stop starting faces after this long and report "
                                                                "the faces done (0: no limit)")
    p.add_argument("--attach", type=Path, default=None, help="run folder of a running cluster (its cluster.json) "
                                                              "instead of starting one")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "calibration.json")
    args = p.parse_args()
    faces = 6 if args.quick else args.faces
    cluster = None
    load_before = load_average()
    started = time.perf_counter()
    try:
        if args.attach:
            state = json.loads((args.attach / "cluster.json").read_text())["services"]
            editor = f"127.0.0.1:{state['editor']['port']}"
        else:
            print("starting the cluster (empty store: the shipped boundaries) ...", flush=True)
            cluster = Cluster.up(Path(tempfile.mkdtemp(prefix="bench-calibration-")), fixed_ports=False,
                                 env={"IFGAN_MODELS_DIR": str(assets.models_dir())}, log=lambda *_: None)
            editor = cluster.services["editor"].address
        # Face by face, so that a run cut short by --max-minutes reports whole faces.
        texts = [e for e, _ in EDITS] + [HOLD_EDIT]
        jobs = [(one, FIRST_SEED + i, text) for i in range(faces) for text in texts]
        jobs[:0] = [(photo_edit, name, text) for name in PHOTOS for text in texts]
        jobs += [(scan, FIRST_SEED + i) for i in range(0, faces, SCAN_EVERY)]
        deadline = time.monotonic() + args.max_minutes * 60 if args.max_minutes else float("inf")
        rows, scans, photos = [], [], []
        with Client(editor, timeout=600) as client, futures.ThreadPoolExecutor(args.concurrency) as pool:
            pending = [pool.submit(fn, client, *job, deadline) for fn, *job in jobs]
            for k, job in enumerate(futures.as_completed(pending), 1):
                got = job.result()
                (scans if got and "scan" in got else photos if got and "photo" in got else rows).append(got)
                if k % max(1, len(jobs) // 20) == 0 or k == len(jobs):
                    print(f"  {k}/{len(jobs)} calls, {time.perf_counter() - started:.0f} s", flush=True)
            boundaries = {b.ref.attribute: {"version": b.ref.version, "origin": b.origin,
                                            "num_samples": b.num_samples, "validation_accuracy": b.validation_accuracy}
                          for b in client.list_boundaries()}
    finally:
        if cluster is not None:
            cluster.down()
    complete = {s for s in {r["seed"] for r in rows if r}
                if sum(1 for r in rows if r and r["seed"] == s) == len(EDITS) + 1}
    rows = [r for r in rows if r and r["seed"] in complete]
    faces = len(complete)
    scans = [s for s in scans if s["seed"] in complete]
    table = [summarise(rows, text, target) for text, target in EDITS]
    for r in table:
        r["reach"] = reach(scans, r["edit"], r["tolerance"]) if r["tolerance"] is not None else None
    hold = hold_summary(rows)
    print(f"{'edit':16s} {'faces':>5s} {'hit':>6s} {'target':>6s} {'rounds':>6s} {'calls':>6s} {'images':>6s} "
          f"{'s/edit':>6s} {'|err|':>7s} {'stable':>6s}  misses")
    for r in table:
        stable = f"{r['noise_stable_hits']:.2f}" if r["noise_stable_hits"] is not None else "-"
        print(f"{r['edit']:16s} {r['faces']:5d} {r['hit_rate']:6.2f} {r['target_hit_rate']:6.2f} "
              f"{r['mean_rounds']:6.2f} {r['mean_calls']:6.2f} {r['mean_images_measured']:6.1f} "
              f"{r['seconds_per_edit']:6.2f} {r['median_abs_error']:7.3f} {stable:>6s}  {r['misses_by_stop']}")
    print(f"\nreach scan ({len(scans)} faces, {SCAN[2]} distances {SCAN[0]:+g} .. {SCAN[1]:+g}): faces on which any "
          f"distance gets within tolerance of the goal")
    for r in table:
        if r["reach"]:
            x = r["reach"]
            print(f"  {r['edit']:16s} |d| <= {LIMIT:g}: {x['reachable_within_limit']:.2f}   |d| <= {2 * LIMIT:g}: "
                  f"{x['reachable_within_twice_limit']:.2f}   values within the limit: median lowest "
                  f"{x['median_lowest_within_limit']:.3g}, median highest {x['median_highest_within_limit']:.3g}, "
                  f"highest {x['highest_within_limit']:.3g}")
    print(f"\n{HOLD_EDIT}: hit rate {hold['hit_rate']:.2f}, mean rounds {hold['mean_rounds']:.2f}")
    for name, a in hold["attributes"].items():
        line = f"  {name:8s} past the threshold on {a['needed']}/{a['measured']} faces, held on {a['held']}"
        if a["needed"]:
            line += (f"; |drift| of those {a['mean_abs_drift_held']:.2f} -> {a['mean_abs_drift_held_after']:.2f}"
                     f" (cut {a['cut']:.0%}; within the threshold after: {a['within_threshold_after']:.0%}); "
                     f"mean drift {a['mean_drift_held']:+.2f} -> {a['mean_drift_held_after']:+.2f}")
            if a.get("checked"):
                stable_cut = f"{a['cut_base_stable']:.0%}" if a["cut_base_stable"] is not None else "-"
                beside = f"{a['mean_abs_drift_held_beside']:.2f}" if a["mean_abs_drift_held_beside"] is not None else "-"
                line += (f"\n           unedited reading stable on {a['base_stable']}/{a['checked']} (cut on those "
                         f"{stable_cut}); |held drift| at the distance +-{NOISE_STEP:g}: {beside}")
        print(line)
    photo_table = photo_summary(photos)
    print("\nportraits (inverted, tuned, edited through the cluster):")
    for r in photo_table["rows"]:
        print(f"  {r['photo']:18s} {r['edit']:24s} met {str(r['met']):5s} {r['stop']:11s} before {r['before']:7.3f} "
              f"after {r['after']:7.3f} goal {r['goal']:7.3f} d {r['distance']:+.2f} identity {r['identity_distance']:.3f}")
    targets = {f"hit_rate {r['edit']}": at_least(round(r["hit_rate"], 4), r["target_hit_rate"]) for r in table}
    targets["mean_rounds"] = at_most(round(statistics.fmean(r["rounds"] for r in rows if r["edit"] != HOLD_EDIT), 3),
                                     MAX_MEAN_ROUNDS)
    age = hold["attributes"].get("age", {})
    targets["held_age_drift_cut_in_gender_edit"] = at_least(round(age.get("cut", 0.0), 4), MIN_DRIFT_CUT)
    print_targets(targets)
    result = {"benchmark": "calibration", "quick": args.quick, "faces": faces, "first_seed": FIRST_SEED,
              "concurrency": args.concurrency,  # seconds_per_edit is the latency of one call among this many
              "seconds": time.perf_counter() - started, "boundaries": boundaries, "table": table, "hold_auto": hold,
              "photos": photo_table, "scan": {"faces": len(scans), "every": SCAN_EVERY, "distances": list(SCAN),
                                              "limit": LIMIT},
              "targets": targets, "noise_step": NOISE_STEP, "noise_every": NOISE_EVERY, "load_average_before": load_before,
              "load_average_after": load_average(),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
