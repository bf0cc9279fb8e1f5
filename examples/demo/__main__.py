"""The main job (`make demo`): boundaries for gender, age, yaw and smile on the default model, gender conditioned on
age, and a report (out/demo/index.html) with edit grids, the raw vs conditioned gender edit and the age drift of
each, the boundary cosine matrix and the SVM accuracies.

It brings the local cluster up (services.cluster), drives it through the Python SDK only, and brings it down.
The run folder keeps the (code, score) dataset and Redis, so a second run with the same seed reuses the samples.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from interfacegan import Client, EditSpec
from interfacegan import codec
from interfacegan.cli import follow_training
from interfacegan.grid import make_grid
from interfacegan.progress import ProgressBar

from . import report as html

ATTRIBUTES = ("gender", "age", "yaw", "smile")
#: Target edits of the "calibrated edits" section: asked in the attribute's unit, the editor finds the distance.
CALIBRATED = ("age:+10y", "age:-10y", "yaw:to=20", "yaw:to=-20", "smile:to=0.8", "gender:to=0.9",
              "gender:to=0.9:hold=auto")
UNITS = {"gender": "P(male)", "age": "years", "yaw": "degrees", "smile": "mouth / eye width"}


def caption(attribute: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "no face"
    return {"gender": f"male {value:.2f}", "age": f"{value:.0f} y", "yaw": f"{value:+.0f}°",
            "smile": f"{value:.2f}"}.get(attribute, f"{value:.2f}")


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def train(client: Client, args) -> tuple[dict, float]:
    started = time.monotonic()
    last = follow_training(client, client.train_boundaries(list(ATTRIBUTES), num_samples=args.num_samples,
                                                           chosen_ratio=args.ratio, seed=args.seed,
                                                           reuse_dataset=True, solver=args.solver), quiet=args.quiet)
    if last is None or last.state != 3:  # JOB_STATE_SUCCEEDED
        raise RuntimeError(f"training failed: {getattr(last, 'error', 'no update')}")
    return {b.ref.attribute: b for b in last.boundaries}, time.monotonic() - started


def edit_all(client: Client, specs: list[EditSpec], seeds: list[int], args) -> dict[int, object]:
    """One Edit call per seed (every edit, re-scored), a few at a time."""
    results = {}
    with ProgressBar(len(seeds) * sum(s.steps for s in specs), "editing", "img", disable=args.quiet) as bar, \
            concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        futures = {pool.submit(client.edit, seed=s, edits=specs, rescore=True, on_frame=lambda f: bar.update()): s
                   for s in seeds}
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
    return results


def calibrate(client: Client, boundaries: dict, seeds: list[int], args) -> dict:
    """Target edits of the grid's faces on the boundaries just trained: asked vs reached, per edit."""
    specs = [dataclasses.replace(EditSpec.parse(text), version=boundaries[EditSpec.parse(text).attribute].ref.version)
             for text in CALIBRATED]
    log(f"calibrated edits of {len(seeds)} faces: {', '.join(CALIBRATED)}")
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        results = dict(zip(seeds, pool.map(lambda s: client.edit(seed=s, edits=specs, include_original=True), seeds)))
    rows = []
    for i, text in enumerate(CALIBRATED):
        frames = [results[s].edit(i)[0] for s in seeds]
        outcomes = [f.target for f in frames]
        held = sorted({h.attribute for f in frames for h in f.holds if h.held})
        rows.append({"edit": text, "unit": outcomes[0].unit, "tolerance": outcomes[0].tolerance,
                     "faces": len(frames), "met": sum(t.met for t in outcomes),
                     "before": [t.before for t in outcomes], "goal": [t.goal for t in outcomes],
                     "after": [t.after for t in outcomes], "distance": [t.distance for t in outcomes],
                     "rounds": [t.rounds for t in outcomes], "stop": [t.stop for t in outcomes], "held": held,
                     "drift": {h.attribute: [x.drift for f in frames for x in f.holds if x.attribute == h.attribute]
                               for h in frames[0].holds},
                     "held_drift": {h.attribute: [x.held_drift for f in frames for x in f.holds
                                                  if x.attribute == h.attribute] for h in frames[0].holds}})
    tiles = [[results[s].original.image] + [results[s].edit(i)[0].image for i in range(len(CALIBRATED))]
             for s in seeds]
    captions = [["original"] + [caption(specs[i].attribute, results[s].edit(i)[0].target.after)
                                for i in range(len(CALIBRATED))] for s in seeds]
    make_grid(tiles, row_labels=[f"seed {s}" for s in seeds], captions=captions, scale=2,
              title="asked: " + "   ".join(CALIBRATED)).save(Path(args.out) / "grid_calibrated.png")
    log(f"  {sum(r['met'] for r in rows)}/{sum(r['faces'] for r in rows)} targets met in "
        f"{time.monotonic() - started:.1f} s")
    return {"rows": rows, "grid": "grid_calibrated.png", "seeds": seeds, "seconds": time.monotonic() - started}


def score_table(results: dict, seeds: list[int], edit: int, attribute: str, steps: int) -> np.ndarray:
    """(seeds, steps) scores of `attribute` along edit `edit`; NaN where the scorer found no face."""
    out = np.full((len(seeds), steps), np.nan)
    for i, s in enumerate(seeds):
        for f in results[s].edit(edit):
            v = f.scores.get(attribute)
            out[i, f.step_index] = np.nan if v is None else v
    return out


def drift(table: np.ndarray) -> dict:
    """Mean end-to-end change (last step minus first) over seeds valid at both ends, with its standard error."""
    both = table[:, -1] - table[:, 0]
    both = both[np.isfinite(both)]
    if not len(both):
        return {"mean": float("nan"), "stderr": float("nan"), "n": 0}
    return {"mean": float(both.mean()), "stderr": float(both.std(ddof=1) / math.sqrt(len(both))) if len(both) > 1
            else float("nan"), "n": int(len(both))}


def run(address: str, args, timings: dict) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    d, steps = args.distance, args.steps
    with Client(address, timeout=600) as client:
        client.wait_ready(60)
        catalog = client.catalog()
        model = catalog.models[0]
        log(f"training {', '.join(ATTRIBUTES)} on {model.name}: {args.num_samples} samples, ratio {args.ratio}")
        boundaries, timings["training"] = train(client, args)
        for a in ATTRIBUTES:
            b = boundaries[a]
            log(f"  {a:<7} v{b.ref.version}: validation accuracy {b.validation_accuracy:.3f}, remaining "
                f"{b.remaining_accuracy:.3f} ({b.num_positive}+{b.num_negative} chosen of {b.num_valid} valid)")

        specs = [EditSpec(a, -d, d, steps, version=boundaries[a].ref.version) for a in ATTRIBUTES]
        specs.append(EditSpec("gender", -d, d, steps, hold=("age",), version=boundaries["gender"].ref.version))
        seeds = list(range(args.seed_base, args.seed_base + max(args.drift_seeds, args.grid_seeds)))
        log(f"editing {len(seeds)} faces: {len(specs)} edits x {steps} steps, every image re-scored")
        t = time.monotonic()
        results = edit_all(client, specs, seeds, args)
        timings["editing"] = time.monotonic() - t
        conditioned = results[seeds[0]].edit(len(specs) - 1)[0].message.boundary
        log(f"  {len(seeds) * len(specs) * steps} images in {timings['editing']:.1f} s; held-age gender boundary: "
            f"{conditioned.attribute} v{conditioned.version}")

        calibrated = calibrate(client, boundaries, seeds[:args.grid_seeds], args)
        log("editing real photos (inversion, pivotal tuning, the change pasted back)")
        photos = real_photos(client, boundaries, out, args)
        names = [f"{a}@{boundaries[a].ref.version}" for a in ATTRIBUTES] + [f"{conditioned.attribute}@{conditioned.version}"]
        log(f"analysing {len(names)} boundaries (cosines; re-scoring study on {args.rescore_samples} codes)")
        t = time.monotonic()
        bar = ProgressBar(0, "re-scoring", "code", disable=args.quiet)
        analysis = client.analyze_boundaries(names, rescore_samples=args.rescore_samples, seed=args.seed,
                                             rescore_attributes=list(ATTRIBUTES), timeout=1800,
                                             on_progress=lambda p: p.stage == "rescoring" and bar.moveto(p.done, p.total))
        bar.close()
        timings["analysis"] = time.monotonic() - t

    # -- numbers --------------------------------------------------------------------------------------------
    grid_seeds = seeds[:args.grid_seeds]
    xs = [float(x) for x in specs[0].distances]
    response = {}
    for i, spec in enumerate(specs):
        response[spec.label] = {a: [float(v) for v in np.nanmean(score_table(results, seeds, i, a, steps), axis=0)]
                                for a in ATTRIBUTES}
    raw, held = ATTRIBUTES.index("gender"), len(specs) - 1
    drifts = {label: {a: drift(score_table(results, seeds, i, a, steps)) for a in ("age", "gender")}
              for label, i in (("gender", raw), ("gender|age", held))}
    cosine = codec.array(analysis.cosine)
    rescore = codec.array(analysis.rescore) if analysis.HasField("rescore") else None

    # -- pictures ---------------------------------------------------------------------------------------------
    files = {}
    for i, spec in enumerate(specs):
        target = spec.attribute if not spec.hold else "age"
        rows = [[f.image for f in results[s].edit(i)] for s in grid_seeds]
        captions = [[caption(target, f.scores.get(target)) for f in results[s].edit(i)] for s in grid_seeds]
        image = make_grid(rows, row_labels=[f"seed {s}" for s in grid_seeds], captions=captions, scale=2,
                          title=f"{spec.label}: distance {-d:+g} ... {d:+g} (captions: {target})")
        name = f"grid_{spec.label.replace('|', '_given_')}.png"
        image.save(out / name)
        files[spec.label] = name
    # The raw and the held gender edit of each face in consecutive rows, both captioned with the re-scored age.
    rows, labels, captions = [], [], []
    for s in grid_seeds:
        for i, name in ((raw, "raw"), (held, "age held")):
            rows.append([f.image for f in results[s].edit(i)])
            labels.append(f"{s} {name}")
            captions.append([caption("age", f.scores.get("age")) for f in results[s].edit(i)])
    make_grid(rows, row_labels=labels, captions=captions, scale=2,
              title=f"gender {-d:+g} ... {d:+g}: raw vs age held (captions: age)").save(out / "grid_gender_raw_vs_held.png")
    files["raw vs held"] = "grid_gender_raw_vs_held.png"
    if analysis.HasField("cosine_image"):
        (out / "cosine.png").write_bytes(analysis.cosine_image.encoded)
    if analysis.HasField("rescore_image"):
        (out / "rescore.png").write_bytes(analysis.rescore_image.encoded)

    data = {
        "model": {"name": model.name, "version": model.version, "architecture": model.architecture,
                  "resolution": model.resolution, "device": model.device},
        "num_samples": args.num_samples, "ratio": args.ratio, "seed": args.seed, "distance": d, "steps": steps,
        "seeds": seeds, "grid_seeds": grid_seeds, "distances": xs,
        "boundaries": {a: {"version": b.ref.version, "validation_accuracy": b.validation_accuracy,
                           "remaining_accuracy": b.remaining_accuracy, "train_accuracy": b.train_accuracy,
                           "num_samples": b.num_samples, "num_valid": b.num_valid, "num_positive": b.num_positive,
                           "num_negative": b.num_negative, "solver": b.solver, "converged": b.converged,
                           "threshold": b.threshold, "timings": dict(b.timings)} for a, b in boundaries.items()},
        "conditioned": {"attribute": conditioned.attribute, "version": conditioned.version},
        "cosine": {"labels": names, "matrix": cosine.tolist()},
        "rescore": {"labels": names, "attributes": list(analysis.scored_attributes),
                    "matrix": rescore.tolist() if rescore is not None else None,
                    "samples": args.rescore_samples, "distance": 3.0},
        "response": response, "drift": drifts, "grids": files, "timings": timings, "calibrated": calibrated,
        "photos": photos,
    }
    (out / "report.json").write_text(json.dumps(data, indent=2))
    return data


#: Public-domain portraits of the model cache (fetched with the models): real people no one here made.
PORTRAITS = ("grace_hopper.jpg", "astronaut.png")
PHOTO_EDITS = ("age", "gender", "smile")


def real_photos(client: Client, boundaries: dict, out: Path, args) -> dict:
    """Edits each real portrait along age, gender and smile at -d and +d (inverted, tuned, the change pasted
    back); returns the per-photo numbers and writes grid_photos.png (the input first, labelled "original")."""
    from services.common import assets  # the portraits come with the model files

    d = args.distance
    specs = [EditSpec(a, -d, d, 2, version=boundaries[a].ref.version) for a in PHOTO_EDITS]
    rows, captions, labels, table = [], [], [], []
    for name in PORTRAITS:
        try:
            path = assets.path_of(name)
        except FileNotFoundError:
            log(f"  {name}: not in the models folder (make models); skipped")
            continue
        t = time.monotonic()
        result = client.edit(photo=path, edits=specs, blend=True, include_original=True, rescore=True)
        frames = [result.original] + [f for i in range(len(specs)) for f in result.edit(i)]
        first = frames[0].message
        rows.append([f.image for f in frames])
        caps = ["original"]
        for i, spec in enumerate(specs):
            for f in result.edit(i):
                caps.append(f"{spec.attribute} {f.distance:+g}: {caption(spec.attribute, f.scores.get(spec.attribute))}"
                            f" id {f.message.identity_distance:.2f}")
        captions.append(caps)
        labels.append(name.split(".")[0])
        ids = [f.message.identity_distance for f in frames[1:]]
        table.append({"photo": name, "faces": len(first.faces), "psnr": first.faces[0].reconstruction_psnr
                      if first.faces else first.inversion_psnr, "variant": first.variant,
                      "blend": first.blend_mode, "identity": ids, "seconds": time.monotonic() - t,
                      "scores": {spec.attribute: [f.scores.get(spec.attribute) for f in result.edit(i)]
                                 for i, spec in enumerate(specs)}})
        log(f"  {name}: reconstruction {table[-1]['psnr']:.1f} dB, identity of the edits "
            f"{min(ids):.2f}..{max(ids):.2f} ({table[-1]['seconds']:.1f} s)")
    if rows:
        make_grid(rows, row_labels=labels, captions=captions, scale=1,
                  title=f"real portraits: the input, then age, gender, smile at {-d:+g} / {d:+g} "
                        f"(captions: measured attribute, identity distance)").save(out / "grid_photos.png")
    return {"rows": table, "grid": "grid_photos.png" if rows else None, "distance": d}


def _photos_section(data: dict) -> list[str]:
    """The "real photos" section: each portrait beside its edits, with identity distances."""
    ph = data.get("photos")
    if not ph or not ph["rows"]:
        return []
    rows = [[r["photo"], r["faces"], f"{r['psnr']:.1f}", r["blend"], f"{min(r['identity']):.2f} – "
             f"{max(r['identity']):.2f}", f"{sum(i < 0.6 for i in r['identity'])} / {len(r['identity'])}",
             f"{r['seconds']:.1f}"] for r in ph["rows"]]
    return [
        "<h2>Real photos</h2>",
        '<p class="lead">Public-domain portraits no one here made: each face is found, aligned, inverted, and the '
        'generator is tuned around its code (pivotal tuning) into a variant the generator pool serves; each edit '
        'is rendered by that variant and only its change (edited render − reconstruction, low-passed so that the '
        'variant\'s own texture stays out) is pasted back under a feathered mask, so the photo keeps its own '
        'detail and every pixel outside the mask is the input\'s. '
        'Identity distance: dlib\'s face-recognition ResNet between the face in the photo and in the result '
        '(under 0.6: the same person).</p>',
        html.table(["photo", "faces", "reconstruction dB", "paste", "identity of the edits", "same person",
                    "seconds"], rows),
        html.figure(ph["grid"], "The input (\"original\"), then each edit pasted back; captions: the edited "
                                "attribute measured on the face and the identity distance."),
    ]


def _fmt_drift(x: dict, unit: str) -> str:
    if not x["n"]:
        return "n/a"
    return f"{x['mean']:+.2f} {unit} ± {x['stderr']:.2f} (n={x['n']})"


def _study_note(data: dict) -> str:
    """The re-scoring study's view of the same question, on other codes: age change per unit of gender edit."""
    rs = data["rescore"]
    if rs["matrix"] is None or "age" not in rs["attributes"]:
        return ""
    col = rs["attributes"].index("age")
    raw, held = rs["matrix"][0][col], rs["matrix"][-1][col]
    return (f"Cross-check on {rs['samples']} other codes (the re-scoring study below, edits of ±3): the age moves "
            f"{raw:+.2f} years per unit of raw gender edit and {held:+.2f} with age held.")


def _calibrated_section(data: dict) -> list[str]:
    """The "calibrated edits" section: each edit asked in the attribute's unit, and what the faces reached."""
    c = data.get("calibrated")
    if not c:
        return []
    rows = []
    for r in c["rows"]:
        err = [abs(a - g) for a, g in zip(r["after"], r["goal"])]
        rows.append([r["edit"], f"{r['unit']} ± {r['tolerance']:g}", f"{np.mean(r['before']):.3g}",
                     f"{np.mean(r['goal']):.3g}", f"{np.mean(r['after']):.3g}", f"{np.median(err):.3g}",
                     f"{r['met']} / {r['faces']}", f"{np.mean(np.abs(r['distance'])):.2f}", f"{np.mean(r['rounds']):.1f}",
                     ", ".join(f"{s}×{r['stop'].count(s)}" for s in sorted(set(r["stop"])) if s != "met") or "—"])
    auto = next((r for r in c["rows"] if r["held"]), None)
    note = ""
    if auto:
        parts = [f"{a}: {np.mean(auto['drift'][a]):+.2f} → {np.mean(auto['held_drift'][a]):+.2f}" for a in auto["held"]]
        note = (f'<p class="note"><code>{html.esc(auto["edit"])}</code> held {", ".join(auto["held"])} on some faces; '
                f'mean drift along the raw edit → along the held one: {"; ".join(parts)}.</p>')
    return [
        "<h2>Calibrated edits</h2>",
        '<p class="lead">Edits asked in the attribute\'s own unit (<code>age:+10y</code>, <code>yaw:to=20</code>, '
        '<code>smile:to=0.8</code>, <code>gender:to=0.9:hold=auto</code>): for each face the editor searches the '
        'distance along the boundary with the scorer in the loop (a bracketing search, each round one generator '
        'and one scorer batch) and reports the value before and after, measured on the returned image. Asked vs '
        f'reached on the {len(c["seeds"])} faces of the grids:</p>',
        html.table(["edit", "unit ± tolerance", "mean before", "mean asked", "mean reached", "median |error|", "met",
                    "mean |distance|", "mean rounds", "misses"], rows),
        note,
        html.figure(c["grid"], "Each face unedited, then each calibrated edit (columns in the order of the table); "
                               "captions: the edited attribute measured on that image."),
    ]


def _within_noise(x: dict) -> str:
    """A clause for a raw drift its own standard error cannot tell from zero ('' otherwise)."""
    if math.isfinite(x["stderr"]) and abs(x["mean"]) < 2 * x["stderr"]:
        return (f" (the raw drift, {x['mean']:+.1f} years, is within two standard errors of zero on these faces: "
                f"this gender boundary hardly moves age, so holding it has little to remove)")
    return ""


def write_report(out: Path, data: dict) -> Path:
    """Writes out/index.html from the numbers of `run`."""
    d, t = data["distance"], data["timings"]
    b = data["boundaries"]
    raw, held = data["drift"]["gender"], data["drift"]["gender|age"]
    cond = data["conditioned"]
    cos = data["cosine"]
    labels = cos["labels"]
    cos_ga = cos["matrix"][0][1]
    cut = 1 - abs(held["age"]["mean"]) / abs(raw["age"]["mean"]) if raw["age"]["n"] and raw["age"]["mean"] else float("nan")
    body = [
        f"<h1>InterFaceGAN on {html.esc(data['model']['name'])}</h1>",
        f'<p class="lead">Boundaries for gender, age, yaw and smile trained on {data["num_samples"]:,} samples '
        f'(top and bottom {data["ratio"]:.0%} of the scores, 70/30 split, linear SVM), a gender boundary '
        f'conditioned on age, and edits of {len(data["seeds"])} sampled faces from {-d:+g} to {d:+g} in '
        f'{data["steps"]} steps, every image re-scored by the scorer service. Generated by '
        f'<code>python -m examples.demo</code> through the Python SDK against the local gRPC cluster.</p>',
        '<div class="cards">',
        *(f'<div class="card"><b>{b[a]["validation_accuracy"]:.1%}</b><span>{a} validation accuracy</span></div>'
          for a in ATTRIBUTES),
        f'<div class="card"><b>{raw["age"]["mean"]:+.1f} → {held["age"]["mean"]:+.1f} y</b><span>age drift of the '
        f'gender edit, raw → age held</span></div>',
        f'<div class="card"><b>{t["total"] / 60:.1f} min</b><span>whole job ({t["training"]:.0f} s training)</span></div>',
        "</div>",
        "<h2>Edit grids</h2>",
        f'<p class="lead">One row per face (seeds {data["grid_seeds"][0]}–{data["grid_seeds"][-1]}), one column per '
        f'distance along the boundary (relative offsets, the middle column is the unedited face). Captions: the '
        f'edited attribute re-scored on that very image.</p>',
    ]
    for a in ATTRIBUTES:
        curve = data["response"][a][a]
        mid = len(curve) // 2
        chart = html.line_chart(data["distances"], {f"mean {a}": curve}, title=f"mean {a} along the {a} boundary",
                                ylabel=UNITS[a], width=360, height=230)
        body.append('<div class="side">' + html.figure(
            data["grids"][a], f"<b>{a}</b> ({UNITS[a]}): mean over {len(data['seeds'])} faces {curve[0]:.3g} at "
                              f"{-d:+g}, {curve[mid]:.3g} unedited, {curve[-1]:.3g} at {d:+g}.") + chart + "</div>")
    body += [
        "<h2>Gender edit: raw vs age held fixed</h2>",
        f'<p class="lead">The raw gender boundary and the age boundary have cosine {cos_ga:+.3f}; projecting the age '
        f'normal out of the gender normal (<code>hold=age</code>, stored as <code>{html.esc(cond["attribute"])} '
        f'v{cond["version"]}</code>) gives a direction orthogonal to age. Age drift = mean age at {d:+g} minus '
        f'mean age at {-d:+g}, per face, over {raw["age"]["n"]} faces valid at both ends. Captions show the '
        f're-scored age.</p>',
        html.table(["edit", "age drift (years)", "P(male) change", "faces"],
                   [["gender (raw)", _fmt_drift(raw["age"], ""), _fmt_drift(raw["gender"], ""), raw["age"]["n"]],
                    ["gender | age held", _fmt_drift(held["age"], ""), _fmt_drift(held["gender"], ""),
                     held["age"]["n"]]]),
        f'<p class="note">Holding age changed the age drift by {-cut:+.0%} while the gender change stayed '
        f'{"comparable" if abs(held["gender"]["mean"]) > 0.5 * abs(raw["gender"]["mean"]) else "smaller"}'
        f'{_within_noise(raw["age"])}. {_study_note(data)}</p>' if math.isfinite(cut) else "",
        '<div class="side">',
        html.figure(data["grids"]["raw vs held"],
                    f"Each face twice: the raw gender edit (age drift <b>{_fmt_drift(raw['age'], 'y')}</b> over all "
                    f"faces), then the age-held one (<b>{_fmt_drift(held['age'], 'y')}</b>). Captions: re-scored age."),
        '<div>',
        html.line_chart(data["distances"], {"raw gender": data["response"]["gender"]["age"],
                                            "gender, age held": data["response"]["gender|age"]["age"]},
                        title="mean age along the gender edit", ylabel="age (years)"),
        html.line_chart(data["distances"], {"raw gender": data["response"]["gender"]["gender"],
                                            "gender, age held": data["response"]["gender|age"]["gender"]},
                        title="mean P(male) along the gender edit", ylabel="P(male)"),
        "</div></div>",
        *_calibrated_section(data),
        *_photos_section(data),
        "<h2>Boundary cosine matrix</h2>",
        '<p class="lead">Cosine of the unit normals (the paper\'s disentanglement measure): near 0 means independent '
        'directions; the conditioned boundary is orthogonal to age by construction.</p>',
        html.heat_table(cos["matrix"], labels, labels, fmt="{:+.3f}", scale=1.0),
    ]
    rs = data["rescore"]
    if rs["matrix"] is not None:
        m = np.array(rs["matrix"])
        scaled = m / np.maximum(np.abs(m).max(axis=0, keepdims=True), 1e-12)
        body += [
            "<h3>Re-scoring study</h3>",
            f'<p class="lead">Mean change of each attribute per unit of edit along each boundary, measured on '
            f'{rs["samples"]} sampled codes edited by ±3 (colours scaled per column: each column has its own unit).</p>',
            html.heat_table(m, labels, rs["attributes"], fmt="{:+.3f}", colour=scaled),
        ]
    rows = []
    for a in ATTRIBUTES:
        x = b[a]
        fit = x["timings"].get("fitting", float("nan"))
        rows.append([a, f"v{x['version']}", f"{x['validation_accuracy']:.3f}", f"{x['remaining_accuracy']:.3f}",
                     f"{x['train_accuracy']:.3f}", f"{x['num_positive']} + {x['num_negative']}",
                     f"{x['num_valid']:,} / {x['num_samples']:,}", f"{x['threshold']:.3g}", x["solver"],
                     "yes" if x["converged"] else "no", f"{fit:.2f}"])
    sampling = b["gender"]["timings"].get("sampling", 0.0)
    body += [
        "<h2>SVM accuracies</h2>",
        html.table(["attribute", "version", "validation acc.", "remaining acc.", "train acc.", "chosen (+ / −)",
                    "valid / sampled", "threshold", "solver", "converged", "fit (s)"], rows),
        '<p class="note">Validation: the held-out 30% of the chosen extremes. Remaining: every other valid sample, '
        'labelled by the threshold (max + min) / 2 — lower, as in the paper. Invalid scores (no face found) are '
        'dropped before choosing.</p>',
        "<h2>Timings</h2>",
        html.table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in t.items()] + [
            ["sampling (generate + score, inside training)", f"{sampling:.1f}"],
            ["samples per second through generate + score",
             f"{data['num_samples'] / sampling:.0f}" if sampling else "reused dataset"]]),
        f'<p class="note">Model {html.esc(data["model"]["name"])} v{html.esc(data["model"]["version"])} on '
        f'{html.esc(data["model"]["device"])}; seed {data["seed"]}. Numbers: <a href="report.json">report.json</a>.</p>',
    ]
    path = out / "index.html"
    html.write(path, f"InterFaceGAN demo — {data['model']['name']}", "\n".join(body))
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="report folder (index.html, grids, report.json)")
    p.add_argument("--num-samples", type=int, default=30_000, help="codes sampled, synthesized and scored for training")
    p.add_argument("--ratio", type=float, default=0.1,
                   help="fraction of samples taken from each end of the scores. 0.1 rather than the paper's 0.02: "
                        "on 30K samples of this model the 2%% extremes of the (noisy) age scores give an age normal "
                        "almost orthogonal to gender (cosine -0.01), so holding age changes nothing while the gender "
                        "edit still ages faces by +5 years; with 10%% the cosine is 0.29 and holding age cuts that "
                        "drift to about +1 year")
    p.add_argument("--solver", default="squared_hinge",
                   help="linear SVM solver of the boundary service: squared_hinge converges on 6K chosen samples "
                        "(hinge, the reference's objective, stops at liblinear's iteration cap there, with the same "
                        "accuracies)")
    p.add_argument("--seed", type=int, default=0, help="sampling / SVM / study seed")
    p.add_argument("--distance", type=float, default=3.0, help="edits go from -distance to +distance")
    p.add_argument("--steps", type=int, default=7, help="steps per edit")
    p.add_argument("--grid-seeds", type=int, default=6, help="faces shown per grid")
    p.add_argument("--drift-seeds", type=int, default=96, help="faces edited to measure responses and drifts")
    p.add_argument("--seed-base", type=int, default=1000, help="first seed of the edited faces")
    p.add_argument("--rescore-samples", type=int, default=200, help="codes of the re-scoring study (0 = skip)")
    p.add_argument("--concurrency", type=int, default=4, help="Edit calls in flight")
    p.add_argument("--address", default="", help="use a running editor at this address instead of a local cluster")
    p.add_argument("--run-dir", type=Path, default=Path(".run/demo"),
                   help="local cluster folder (logs, Redis AOF, the reusable dataset)")
    p.add_argument("--fixed-ports", action="store_true", help="local cluster on 50051-50055/6380 instead of free ports")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    started = time.monotonic()
    timings: dict[str, float] = {}
    cluster = None
    try:
        address = args.address
        if not address:
            from services.cluster import Cluster
            log(f"starting the local cluster in {args.run_dir}")
            t = time.monotonic()
            args.run_dir.mkdir(parents=True, exist_ok=True)
            cluster = Cluster.up(args.run_dir.resolve(), fixed_ports=args.fixed_ports,
                                 log=lambda line: log("  " + line))
            timings["cluster up"] = time.monotonic() - t
            address = cluster.services["editor"].address
        data = run(address, args, timings)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if cluster is not None:
            t = time.monotonic()
            cluster.down()
            timings["cluster down"] = time.monotonic() - t
    timings["total"] = time.monotonic() - started
    data["timings"] = timings
    (Path(args.out) / "report.json").write_text(json.dumps(data, indent=2))
    path = write_report(Path(args.out), data)
    log(f"done in {timings['total']:.0f} s (training {timings['training']:.0f} s): {path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
