"""ifgan: the command line of the InterFaceGAN service (edit faces, train and manage boundaries, batch catalogs).

Every command talks to a running cluster over gRPC and needs only this SDK; the local cluster itself is started
by the services' own command, `ifgan-cluster up|down|status`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from . import codec
from ._requests import ApiError
from .channel import ChannelConfig
from .client import Client
from .edits import GRAMMAR, EditSpec
from .progress import ProgressBar

#: Exit status of `catalog` when photos failed for reasons that may pass (UNAVAILABLE...): run it again.
EXIT_RETRY = 75
STATES = {0: "unspecified", 1: "queued", 2: "running", 3: "succeeded", 4: "failed", 5: "cancelled"}
EDIT_HELP = GRAMMAR + "; repeat for several edits"


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _client(args) -> Client:
    config = ChannelConfig(tls=args.tls or bool(args.ca_cert), root_certificates=args.ca_cert,
                           server_name=args.server_name or None)
    token = args.token or os.environ.get("IFGAN_TOKEN") or os.environ.get("IFGAN_AUTH_TOKEN") or None
    return Client(args.address, token=token, config=config, timeout=args.timeout,
                  boundary_address=args.boundary_address or None, default_model=args.model, priority=args.priority)


def _space(info) -> str:
    return codec.SPACE_NAMES.get(info.ref.space, "?")


def _boundary_rows(infos) -> list[str]:
    lines = [f"{'attribute':<22} {'space':<5} {'ver':>3}  {'origin':<11} {'val acc':>7} {'rem acc':>7} "
             f"{'samples':>8}  {'model'}"]
    for b in infos:
        val = f"{b.validation_accuracy:.3f}" if b.origin == "trained" else "-"
        rem = f"{b.remaining_accuracy:.3f}" if b.origin == "trained" else "-"
        lines.append(f"{b.ref.attribute:<22} {_space(b):<5} {b.ref.version:>3}  {b.origin:<11} {val:>7} {rem:>7} "
                     f"{b.num_samples or '-':>8}  {b.ref.model}")
    return lines


# -- commands ------------------------------------------------------------------------------------------------

def cmd_info(args) -> int:
    with _client(args) as client:
        catalog = client.catalog()
    if args.json:
        from google.protobuf import json_format
        print(json_format.MessageToJson(catalog))
        return 0
    print("models (the first is the default):")
    for m in catalog.models:
        spaces = ", ".join(f"{codec.SPACE_NAMES[s.space]} {list(s.shape)}" for s in m.latent_spaces)
        print(f"  {m.name:<22} {m.architecture:<9} {m.resolution:>4}px  {spaces}  {'loaded' if m.loaded else ''}")
    print("attributes:")
    for a in catalog.attributes:
        print(f"  {a.name:<12} {a.unit:<12} {a.description}")
    print("boundaries:")
    for line in _boundary_rows(catalog.boundaries):
        print("  " + line)
    if catalog.invertible_models:
        print("photos can be inverted into: " + ", ".join(
            f"{m.model.name} ({', '.join(codec.SPACE_NAMES[s] for s in m.spaces)})" for m in catalog.invertible_models))
    for w in catalog.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def follow_job(updates, *, quiet: bool = False) -> object:
    """Draws a bar per stage of a JobUpdate stream; returns the last update."""
    bar, stage, last = None, None, None
    try:
        for update in updates:
            last = update
            if not quiet and update.job_id and stage is None:
                print(f"job {update.job_id}", file=sys.stderr)
            p = update.progress
            if p.stage != stage:
                if bar is not None:
                    bar.close()
                stage = p.stage
                bar = ProgressBar(p.total, stage or "job", "sample" if stage in ("sampling", "augmenting") else "it",
                                  disable=quiet)
            if bar is not None:
                bar.moveto(p.done, p.total)
                eta = f"ETA {p.eta_seconds:.0f}s" if p.eta_seconds >= 0 else ""
                bar.set_postfix(" ".join(x for x in (eta, p.message) if x))
    finally:
        if bar is not None:
            bar.close()
    return last


def follow_training(client: Client, updates, *, quiet: bool = False, seen: dict | None = None,
                    attempts: int = 6):
    """follow_job, re-attaching (WatchJob) when the stream breaks: the job runs on, whatever the connection does."""
    seen = {} if seen is None else seen
    stream = _remember(updates, seen)
    for attempt in range(attempts):
        try:
            return follow_job(stream, quiet=quiet)
        except ApiError as e:
            if e.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) \
                    or not seen.get("job_id") or attempt == attempts - 1:
                raise
            wait = min(2 ** attempt, 15)
            print(f"\nlost the job stream ({e.code.name}); re-attaching to {seen['job_id']} in {wait} s",
                  file=sys.stderr)
            time.sleep(wait)
            stream = _remember(client.watch_job(seen["job_id"]), seen)


def cmd_train(args) -> int:
    with _client(args) as client:
        updates = client.train_boundaries(args.attributes, num_samples=args.num_samples, chosen_ratio=args.ratio,
                                          train_split=args.train_split, seed=args.seed, svm_c=args.svm_c,
                                          reuse_dataset=args.reuse_dataset, solver=args.solver, model=args.model,
                                          space=args.space, request_id=args.request_id or None)
        seen: dict[str, str] = {}
        try:
            last = follow_training(client, updates, quiet=args.quiet, seen=seen)
        except KeyboardInterrupt:
            job_id = seen.get("job_id", "JOB_ID")
            print(f"\nstopped following; the job goes on on the server.\n  re-attach: ifgan boundaries watch {job_id}\n"
                  f"  cancel:    ifgan boundaries cancel {job_id}", file=sys.stderr)
            return 130
    return _report_job(last)


def _remember(updates, seen: dict):
    for u in updates:
        seen["job_id"] = u.job_id or seen.get("job_id", "")
        yield u


def _report_job(last) -> int:
    if last is None:
        print("the job stream ended without an update", file=sys.stderr)
        return 1
    state = STATES.get(last.state, str(last.state))
    if last.state != 3:
        print(f"job {last.job_id} {state}: {last.error}", file=sys.stderr)
        return 1
    print(f"job {last.job_id} succeeded in {last.progress.elapsed_seconds:.1f} s")
    for line in _boundary_rows(last.boundaries):
        print("  " + line)
    return 0


def cmd_boundaries(args) -> int:
    with _client(args) as client:
        action = args.action
        if action == "list":
            infos = client.list_boundaries(model=args.model, attribute=args.attribute or "", space=args.space,
                                           all_versions=args.all_versions)
            if args.json:
                from google.protobuf import json_format
                print(json.dumps([json.loads(json_format.MessageToJson(b)) for b in infos], indent=2))
            else:
                print("\n".join(_boundary_rows(infos)))
        elif action == "show":
            info, normal = client.get_boundary(args.name, model=args.model, space=args.space)
            from google.protobuf import json_format
            print(json_format.MessageToJson(info))
            print(f"normal: shape {list(normal.shape)}, norm {np.linalg.norm(normal):.6f}, "
                  f"first values {np.round(normal.ravel()[:5], 4).tolist()}")
        elif action == "import":
            for path in args.files:
                info = client.import_boundary(path, model=args.model, attribute=args.attribute or "",
                                              space=args.space)
                print(f"imported {path} as {info.ref.model}/{info.ref.attribute}/{_space(info)} v{info.ref.version}")
        elif action == "export":
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            for name in args.names:
                file_name, npy = client.export_boundary(name, model=args.model, space=args.space)
                (out / file_name).write_bytes(npy)
                print(out / file_name)
        elif action == "condition":
            info = client.condition_boundary(args.name, args.hold, model=args.model, space=args.space)
            print(f"{info.ref.attribute} v{info.ref.version} (parents: "
                  f"{', '.join(f'{p.attribute} v{p.version}' for p in info.parents)})")
        elif action == "watch":
            return _report_job(follow_job(client.watch_job(args.job_id), quiet=args.quiet))
        elif action == "cancel":
            update = client.cancel_job(args.job_id)
            print(f"job {update.job_id}: {STATES.get(update.state, update.state)}")
        elif action == "analyze":
            result = client.analyze_boundaries(args.names, model=args.model, space=args.space,
                                               rescore_samples=args.rescore_samples, seed=args.seed)
            labels = [f"{r.attribute}@{r.version}" for r in result.labels]
            cos = codec.array(result.cosine)
            width = max(len(x) for x in labels) + 1
            print(" " * width + "".join(f"{x:>{width}}" for x in labels))
            for name, row in zip(labels, cos):
                print(f"{name:<{width}}" + "".join(f"{v:>{width}.3f}" for v in row))
            if args.out:
                Path(args.out).write_bytes(result.cosine_image.encoded)
                print(f"heatmap: {args.out}")
    return 0


def _read_code(path: Path) -> np.ndarray:
    code = np.load(path, allow_pickle=False)
    return np.asarray(code, dtype=np.float32)


def _photo_options(args) -> dict:
    """The photo options of `edit` and `catalog`, named as EditRequest names them."""
    from .edits import face_selection_of, parse_face_indices
    indices = parse_face_indices(args.face_indices) if args.face_indices else []
    face_selection_of(args.face_selection, indices)  # refused here, before any photo is sent
    return dict(face_selection=args.face_selection, face_indices=indices, skip_tuning=args.skip_tuning,
                paste_whole_face=args.paste_whole_face, change_smoothing=args.change_smoothing)


def _face_lines(result) -> list[str]:
    """One line per edited face of a photo: box, reconstruction PSNR, identity distances of the edited images."""
    from .defaults import SAME_PERSON
    lines = []
    for face in result.faces:
        ids = [d for f in result.frames if f.edit_index >= 0 for g in f.faces if g.index == face.index
               for d in [g.identity_distance] if d >= 0]
        x, y, w, h = (round(v) for v in face.box)
        same = sum(d < SAME_PERSON for d in ids)
        lines.append(f"face {face.index} at x {x}, y {y}, {w}x{h} px: reconstruction {face.reconstruction_psnr:.1f} "
                     f"dB" + (f", identity distance {min(ids):.2f}..{max(ids):.2f} ({same} of {len(ids)} edited "
                              f"images the same person)" if ids else ""))
    return lines


def cmd_edit(args) -> int:
    specs = [EditSpec.parse(e) for e in (args.edit or ["age"])]
    if sum(x is not None for x in (args.seed, args.code, args.photo)) != 1:
        print("give exactly one face: --seed N, --code FILE.npy or --photo FILE", file=sys.stderr)
        return 2
    photo_options = _photo_options(args) if args.photo is not None else {}
    if args.photo is None and (args.face_selection or args.face_indices or args.skip_tuning or args.paste_whole_face
                               or args.change_smoothing is not None):
        print("--face-selection, --face-indices, --skip-tuning, --paste-whole-face and --change-smoothing apply "
              "to --photo only", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    total = sum(s.steps for s in specs) + 1
    with _client(args) as client, ProgressBar(total, "edit", "img", disable=args.quiet) as bar:
        # include_face: with the change pasted, the original frame is the photo itself; its face crop is the
        # reconstruction written beside it.
        result = client.edit(seed=args.seed, code=_read_code(args.code) if args.code else None,
                             photo=args.photo, edits=specs, model=args.model, space=args.space or None,
                             rescore=args.rescore, include_original=True, blend=args.blend,
                             include_face=args.blend and args.photo is not None, inversion_steps=args.inversion_steps,
                             image_format=args.format, on_frame=lambda f: bar.update(), **photo_options)
    from .catalog import safe_name
    ext = "jpg" if args.format == "jpeg" else "png"
    written = []
    if result.photo is not None:
        # The real input is the "original"; the generator's reconstruction is written on its own.
        path = out / f"original.{ext}"
        path.write_bytes(codec.array_bytes(result.photo, ext))
        written.append(path)
        if result.reconstruction is not None:
            path = out / f"reconstruction.{ext}"
            path.write_bytes(codec.array_bytes(result.reconstruction, ext))
            written.append(path)
        for index, face in result.other_reconstructions.items():
            path = out / f"reconstruction_face{index}.{ext}"
            path.write_bytes(codec.array_bytes(face, ext))
            written.append(path)
    elif result.original is not None:
        path = out / f"original.{ext}"
        path.write_bytes(codec.image_bytes(result.original.message.image, ext))
        written.append(path)
    for i, spec in enumerate(specs):
        for f in result.edit(i):
            path = out / f"{safe_name(spec.label)}_{f.step_index:02d}_{f.distance:+.2f}.{ext}"
            path.write_bytes(codec.image_bytes(f.message.image, ext))
            written.append(path)
    if args.grid:
        grid = Path(args.grid)
        result.grid(scale=args.scale, score=args.grid_score or (specs[0].attribute if args.rescore else None),
                    identity=result.photo is not None).save(grid)
        print(f"grid: {grid}")
    if args.rescore:
        rows = [{"edit": specs[f.edit_index].label if f.edit_index >= 0 else "original", "step": f.step_index,
                 "distance": f.distance, "scores": f.scores} for f in result.frames]
        (out / "scores.json").write_text(json.dumps(rows, indent=2))
        attrs = list(result.frames[0].scores)
        print(f"{'edit':<16} {'dist':>6} " + " ".join(f"{a:>10}" for a in attrs))
        for r in rows:
            print(f"{r['edit']:<16} {r['distance']:>+6.2f} " + " ".join(
                f"{r['scores'][a]:>10.3f}" if r["scores"][a] is not None else f"{'n/a':>10}" for a in attrs))
    for i, spec in enumerate(specs):
        for f in result.edit(i):
            if f.target is not None:
                t = f.target
                print(f"{spec.label}: {t.attribute} {t.before:.3g} -> {t.after:.3g} {t.unit} (goal {t.goal:.3g} "
                      f"± {t.tolerance:g}: {'met' if t.met else 'NOT met, ' + t.message}) at distance "
                      f"{t.distance:+.3f}, {t.rounds} rounds")
            for h in f.holds:
                print(f"{spec.label}: {h.attribute} drift {h.drift:+.3g} {h.unit}"
                      + (f" -> {h.held_drift:+.3g} held" if h.held else " (not held)"))
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if result.inversion_psnr:
        print(f"inversion PSNR {result.inversion_psnr:.2f} dB")
    for line in _face_lines(result):
        print(line)
    print(f"{len(written)} images in {out} (request {result.request_id})")
    return 0


def cmd_catalog(args) -> int:
    from .catalog import run_catalog, shard_dir
    specs = [EditSpec.parse(e) for e in (args.edit or ["age"])]
    stop = threading.Event()
    with _client(args) as client:
        summary = run_catalog(client, args.source, args.out, specs, concurrency=args.concurrency, blend=args.blend,
                              image_format=args.format, inversion_steps=args.inversion_steps,
                              retry_failed=args.retry_failed, progress=not args.quiet, stop=stop,
                              timeout=args.timeout, shard=args.shard, follow_links=args.follow_links,
                              **_photo_options(args))
    for w in summary.warnings:
        print(f"warning: {w}", file=sys.stderr)
    shard = f"shard {summary.shard}: " if summary.shard.count > 1 else ""
    print(f"{shard}{summary.done} of {summary.total} photos done, {len(summary.failed)} failed, "
          f"{summary.skipped} skipped as already handled ({summary.seconds:.1f} s); outputs in {summary.out}")
    report = summary.merged or summary.report or {}
    if report.get("faces"):
        share = report["same_person_share"]
        print(f"{report['faces']} faces edited: reconstruction {report['mean_reconstruction_psnr']:.1f} dB on average"
              + (f", identity distance {report['mean_identity_distance']:.2f} on average, {100 * share:.0f}% of "
                 f"edited faces the same person" if share is not None else "")
              + f"; per face: {shard_dir(summary.out, summary.shard) / 'faces.csv'}")
    if summary.failed:
        print(f"failures: {shard_dir(summary.out, summary.shard) / 'failures.csv'}")
        for pid, (code, reason) in list(summary.failed.items())[:10]:
            print(f"  {pid}: {code}: {reason}")
    if summary.merged is not None:
        m = summary.merged
        print(f"every shard is finished: {m['done']} of {m['total']} photos done, {m['failed']} failed; "
              f"merged report in {summary.out / 'report.json'}")
    elif shard and not summary.interrupted:
        print(f"other shards are not finished yet; `ifgan catalog-merge {summary.out}` joins the shards' reports")
    if summary.interrupted:
        print("interrupted: run the same command again to go on where it stopped", file=sys.stderr)
        return 130
    if summary.transient_failures:
        return EXIT_RETRY
    return 0 if not summary.failed or args.lasting_failures_ok else 1


def cmd_catalog_merge(args) -> int:
    from .catalog import merge_catalog
    report = merge_catalog(args.out, source=args.source)
    print(f"{report['done']} of {report['total']} photos done, {report['failed']} failed, {report['pending']} "
          f"pending over {len(report['shards'])} shards; report in {Path(args.out) / 'report.json'}, failures in "
          f"{Path(args.out) / 'failures.csv'}")
    for s in report["shards"]:
        if s["pending"]:
            print(f"  shard {s['shard']}: {s['pending']} of {s['total']} photos pending", file=sys.stderr)
    if report["missing_shards"]:
        print(f"shards that have not started: {', '.join(map(str, report['missing_shards']))}", file=sys.stderr)
    if report["misplaced"]:
        print(f"{len(report['misplaced'])} photos recorded by a shard that does not own them (or by two): "
              f"{', '.join(report['misplaced'][:10])}", file=sys.stderr)
    return 0 if report["complete"] else 1


# -- parser ----------------------------------------------------------------------------------------------------

def _add_photo_options(c: argparse.ArgumentParser, default: str | None) -> None:
    """The photo options (EditRequest's face_selection, face_indices, skip_tuning, paste_whole_face,
    change_smoothing)."""
    what = "the server's choice, the largest" if default == "" else "all, or indices with --face-indices"
    c.add_argument("--face-selection", default=default, choices=("largest", "all", "indices"),
                   help=f"photos: which faces to edit; when not given: {what}")
    c.add_argument("--face-indices", default="", metavar="I,J",
                   help="photos: the faces to edit, numbered largest first, e.g. 0,2 (selects indices)")
    c.add_argument("--skip-tuning", action="store_true",
                   help="photos: skip pivotal tuning (faster; faces usually become other people's)")
    c.add_argument("--paste-whole-face", action="store_true",
                   help="photos with --blend: paste the whole edited face instead of only the edit's change")
    c.add_argument("--change-smoothing", type=float, default=None, metavar="SIGMA",
                   help="photos with --blend: Gaussian sigma of the pasted change as a fraction of the face crop "
                        "(0: none, sharper); when not given: the server's, 1/64")


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="ifgan", description=__doc__, formatter_class=Formatter)
    p.add_argument("--address", default=env("IFGAN_ADDRESS", "127.0.0.1:50051"),
                   help="editor gateway: host:port or a gRPC target (env IFGAN_ADDRESS)")
    p.add_argument("--boundary-address", default=env("IFGAN_BOUNDARY_ADDRESS_CLIENT", ""),
                   help="talk to a BoundaryService here instead of through the editor")
    p.add_argument("--token", default=None, help="bearer token; when not given, env IFGAN_TOKEN or IFGAN_AUTH_TOKEN")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system CA roots unless --ca-cert)")
    p.add_argument("--ca-cert", default=env("IFGAN_CA_CERT", None), help="PEM file of the CA to trust (implies --tls)")
    p.add_argument("--server-name", default="", help="name to check in the server certificate instead of the host")
    p.add_argument("--timeout", type=float, default=300.0, help="deadline of one call, seconds")
    p.add_argument("--priority", choices=("", "interactive", "bulk"), default="",
                   help="priority lane of every call (the ifgan-priority metadata); empty: each RPC's default "
                        "(edit interactive; catalog, training and analysis bulk)")
    p.add_argument("--model", default="", help="generator model; empty = the server's default")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("info", help="models, attributes, boundaries (GetCatalog)", formatter_class=Formatter)
    c.add_argument("--json", action="store_true", help="print the Catalog message as JSON")
    c.set_defaults(fn=cmd_info)

    c = sub.add_parser("train-boundary", help="train boundaries (one sampling pass for all), with a progress bar",
                       formatter_class=Formatter)
    c.add_argument("attributes", nargs="+", metavar="ATTR", help="attributes the scorer computes, e.g. gender age")
    c.add_argument("--num-samples", type=int, default=0, help="codes to sample; 0 = the server default (500,000)")
    c.add_argument("--ratio", type=float, default=0.0, help="fraction taken from each end; 0 = 0.02 (the paper's)")
    c.add_argument("--train-split", type=float, default=0.0, help="training fraction of the chosen; 0 = 0.7")
    c.add_argument("--seed", type=int, default=0, help="sampling and SVM seed")
    c.add_argument("--svm-c", type=float, default=0.0, help="SVM C; 0 = 1.0")
    c.add_argument("--solver", default="", choices=("", "hinge", "squared_hinge", "svc"), help="SVM solver; '' = hinge")
    c.add_argument("--space", default="Z", help="latent space of the boundaries")
    c.add_argument("--reuse-dataset", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse stored (code, score) samples of the same model/space/seed")
    c.add_argument("--request-id", default="", help="idempotency key: the same id re-attaches to the same job")
    c.set_defaults(fn=cmd_train)

    c = sub.add_parser("boundaries", help="list, show, import, export, condition, analyze boundaries; watch/cancel jobs",
                       formatter_class=Formatter)
    bsub = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = bsub.add_parser("list", help="stored boundaries", formatter_class=Formatter)
    b.add_argument("--attribute", default="", help="only this attribute")
    b.add_argument("--space", default=None, help="only this space (Z, W, W+)")
    b.add_argument("--all-versions", action="store_true", help="every version, not only the newest")
    b.add_argument("--json", action="store_true", help="JSON output")
    b = bsub.add_parser("show", help="one boundary's metadata and normal", formatter_class=Formatter)
    b.add_argument("name", help="attribute, optionally @version, e.g. gender or gender|age@2")
    b.add_argument("--space", default="Z", help="latent space")
    b = bsub.add_parser("import", help="store reference-format .npy boundaries", formatter_class=Formatter)
    b.add_argument("files", nargs="+", type=Path, help="files named {model}_{attr}[_w]_boundary.npy (or give --model ...)")
    b.add_argument("--attribute", default="", help="attribute name instead of the file name's")
    b.add_argument("--space", default=None, help="latent space instead of the file name's (Z, W, W+)")
    b = bsub.add_parser("export", help="write boundaries as reference-format .npy files", formatter_class=Formatter)
    b.add_argument("names", nargs="+", help="attributes, optionally @version")
    b.add_argument("-o", "--out", default=".", help="output folder")
    b.add_argument("--space", default="Z", help="latent space")
    b = bsub.add_parser("condition", help="store a boundary projected off others (held attributes)",
                        formatter_class=Formatter)
    b.add_argument("name", help="the attribute to edit")
    b.add_argument("--hold", action="append", required=True, help="attribute to hold fixed (repeat)")
    b.add_argument("--space", default="Z", help="latent space")
    b = bsub.add_parser("analyze", help="cosine matrix (and re-scoring study) of boundaries", formatter_class=Formatter)
    b.add_argument("names", nargs="+", help="2 .. 32 attributes, optionally @version")
    b.add_argument("--space", default="Z", help="latent space")
    b.add_argument("--rescore-samples", type=int, default=0, help="codes for the re-scoring study; 0 = skip")
    b.add_argument("--seed", type=int, default=0, help="seed of the re-scoring samples")
    b.add_argument("-o", "--out", default="", help="write the cosine heatmap PNG here")
    b = bsub.add_parser("watch", help="re-attach to a training job", formatter_class=Formatter)
    b.add_argument("job_id")
    b = bsub.add_parser("cancel", help="cancel a training job", formatter_class=Formatter)
    b.add_argument("job_id")
    c.set_defaults(fn=cmd_boundaries)

    c = sub.add_parser("edit", help="edit one face (seed, code or photo): images and a grid", formatter_class=Formatter)
    c.add_argument("--seed", type=int, default=None, help="sample the face from this seed")
    c.add_argument("--code", type=Path, default=None, help="a latent code (.npy, (1, d) or (d))")
    c.add_argument("--photo", type=Path, default=None, help="a photo (PNG or JPEG) with a face")
    c.add_argument("-e", "--edit", action="append", default=None, help=EDIT_HELP + " (default: age)")
    c.add_argument("--space", default="", help="latent space to edit in; '' = the model's default")
    c.add_argument("-o", "--out", default="edits", help="output folder")
    c.add_argument("--grid", default="", help="also write a grid PNG here (rows = edits, columns = steps)")
    c.add_argument("--grid-score", default="", help="attribute whose score the grid captions show (with --rescore)")
    c.add_argument("--scale", type=int, default=2, help="upscaling of the grid tiles")
    c.add_argument("--rescore", action="store_true", help="score every attribute on every image (scores.json)")
    c.add_argument("--blend", action=argparse.BooleanOptionalAction, default=False,
                   help="photos: paste the edited face back into the photo")
    c.add_argument("--inversion-steps", type=int, default=0, help="photos: refinement steps; 0 = server default")
    c.add_argument("--format", default="png", choices=("png", "jpeg"), help="image format")
    _add_photo_options(c, "")
    c.set_defaults(fn=cmd_edit)

    c = sub.add_parser("catalog", help="edit every photo of a folder or CSV (resumable, failure report)",
                       formatter_class=Formatter)
    c.add_argument("source", type=Path, help="folder of PNG/JPEG photos, or a CSV with a path column (and id)")
    c.add_argument("-o", "--out", type=Path, required=True, help="output folder (resumes a run found there)")
    c.add_argument("-e", "--edit", action="append", default=None, help=EDIT_HELP + " (default: age)")
    c.add_argument("-j", "--concurrency", type=int, default=2, help="photos in flight at once")
    c.add_argument("--blend", action=argparse.BooleanOptionalAction, default=True,
                   help="paste the edited face back into each photo (else write the aligned face crops)")
    c.add_argument("--inversion-steps", type=int, default=0, help="refinement steps; 0 = server default")
    c.add_argument("--format", default="png", choices=("png", "jpeg"), help="image format")
    c.add_argument("--retry-failed", action="store_true", help="also retry photos that failed for lasting reasons")
    c.add_argument("--shard", default="0/1", metavar="I/N",
                   help="edit only shard I of N (0-based; a share fixed by each photo's id): run N of these, on any "
                        "machines, into one output folder")
    c.add_argument("--follow-links", action="store_true",
                   help="also read photos through symbolic links that lead out of the catalog's folder")
    _add_photo_options(c, None)
    c.add_argument("--lasting-failures-ok", action="store_true",
                   help="exit 0 when the only failures are lasting ones (no face, not an image), as a batch "
                        "scheduler wants; they stay in failures.csv")
    c.set_defaults(fn=cmd_catalog)

    c = sub.add_parser("catalog-merge", help="join the reports of a sharded catalog (report.json, failures.csv)",
                       formatter_class=Formatter)
    c.add_argument("out", type=Path, help="the catalog's output folder, shared by its shards")
    c.add_argument("--source", type=Path, default=None,
                   help="the photos, where they are mounted here; default: the source catalog.json names")
    c.set_defaults(fn=cmd_catalog_merge)
    return p


def _interrupt(*_):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "catalog":
        # SIGTERM (a stopped container, a CI timeout) winds down like Ctrl-C: photos in flight are finished
        # and journaled, so the next run resumes exactly.
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        return args.fn(args)
    except ApiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
