"""Real-photo benchmark: does the person survive inversion, pivotal tuning, edits and the paste back?

python bench/photos.py [--quick]

Photos: the public-domain portraits of the model cache (scikit-image's astronaut, matplotlib's
grace_hopper), a group photo composed from them and generated faces at other scales, and robustness
variants of each portrait (downscaled to 128 px and 96 px, JPEG quality 40, rotated +-10 degrees, mirrored,
darker). Each photo goes through the code the inversion service runs: face detection with the
false-detection filter, alignment to the generator's framing, the encoder + Adam inversion, pivotal
tuning of all faces of the photo together (one variant per photo), then edits along age, gender and smile
at -3 ... +3 rendered by the tuned variant and pasted back as the change (smoothed as the service smooths it)
under the feathered mask.

Per face: PSNR and identity distance of the reconstruction without and with tuning; per edit: identity
distance between the face in the photo and in the result (128 px aligned crops of both photos) and the
attribute read on the result photo and on the unedited photo with the same framing (AttributeReader);
CPU seconds (this process, all threads) per face for inversion + tuning; pixels outside the masks that
changed. Identity is the scorer's model (services/scorer/identity.py): dlib's face-recognition ResNet as
dlib runs it, landmarks in the HOG detector's box of the crop. Edits follow the boundaries shipped with the
project (services/boundary/bundled: what a fresh cluster edits with), or with `--samples N` boundaries
trained here on N generated faces scored by the scorer's models.

Targets (the issue's): mean reconstruction identity distance <= 0.25 with tuning; mean reconstruction
PSNR >= 32 dB; identity distance < 0.6 on >= 90% of edited images at |d| <= 3; the edited attribute moves
the asked way (the reading at +3 above the unedited one, at -3 below it) on >= 80% of (face, attribute,
direction); <= 3 CPU seconds per face; zero changed pixels outside the mask. A trade-off table of tuning
steps, tuned layers and the locality term against identity, PSNR, edit strength and CPU is printed and
stored, and a table of the change's smoothing against the asked way, identity and edit strength.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import at_least, at_most, load_average, print_targets  # noqa: E402
from models import load_model  # noqa: E402
from services.boundary.svm import train_boundary  # noqa: E402
from services.common import assets, variants  # noqa: E402
from services.inversion import encoder as enc  # noqa: E402
from services.inversion import photo  # noqa: E402
from services.inversion.faces import FaceFinder, similarity_transform, warp_crop  # noqa: E402
from services.inversion.framing import template_for  # noqa: E402
from services.inversion.quality import psnr  # noqa: E402
from services.inversion.refine import Inverter, Options  # noqa: E402
from services.inversion.tuning import TuningOptions, to_uint8, tune  # noqa: E402
from services.scorer.engine import Engine  # noqa: E402
from services.scorer.identity import SAME_PERSON, IdentityModel, distance  # noqa: E402

MODEL = "dcgan-digiface-64"
ATTRIBUTES = ("age", "gender", "smile")
MIN_SCORE, MIN_SIDE, TRUSTED = 0.0, 16, 1.0  # the service's false-detection filter defaults
IDENTITY_CROP = 128
PIVOT_STEPS = 0  # the inversion service's default refinement for photos it tunes: the encoder's pivot


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def resize_to(image: np.ndarray, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def robustness_variants(name: str, image: np.ndarray) -> dict[str, np.ndarray]:
    return {name: image, f"{name}@128": resize_to(image, 128), f"{name}@96": resize_to(image, 96),
            f"{name}:jpeg40": jpeg(image, 40), f"{name}:rot+10": rotate(image, 10),
            f"{name}:rot-10": rotate(image, -10), f"{name}:mirror": image[:, ::-1].copy(),
            f"{name}:dark": (image.astype(np.float32) * 0.55).astype(np.uint8)}


def group_photo(portraits: dict[str, np.ndarray], generated: np.ndarray) -> np.ndarray:
    """A 900x420 canvas: both portraits at two scales and generated faces (upscaled) at others."""
    canvas = np.full((420, 900, 3), 90, np.uint8)
    astro = resize_to(portraits["astronaut.png"][30:330, 120:420], 260)
    hopper = resize_to(portraits["grace_hopper.jpg"][60:420, 110:470], 200)
    canvas[20:20 + astro.shape[0], 20:20 + astro.shape[1]] = astro
    canvas[40:40 + hopper.shape[0], 320:320 + hopper.shape[1]] = hopper
    for k, (size, x, y) in enumerate([(180, 560, 30), (120, 760, 250)]):
        face = cv2.resize(generated[k], (size, size), interpolation=cv2.INTER_CUBIC)
        canvas[y:y + size, x:x + size] = face
    return canvas


class Bench:
    """Loads the models once and runs photos through inversion, tuning, edits and paste."""

    def __init__(self, models_dir, samples: int, steps: int, quick: bool):
        """`samples` 0: the boundaries shipped with the project (what a fresh cluster edits with); else trained
        here on that many generated faces."""
        self.model = load_model(MODEL, "cpu", models_dir=models_dir)
        encoder, _ = enc.load_for(MODEL, models_dir)
        self.inverter = Inverter(self.model, encoder)
        predictor = assets.path_of("shape_predictor_5_face_landmarks.dat", models_dir)
        self.finder = FaceFinder(predictor)
        self.verifier = photo.FaceVerifier(assets.path_of("mmod_human_face_detector.dat", models_dir))
        resnet = assets.path_of("dlib_face_recognition_resnet_model_v1.dat", models_dir)
        self.identity = IdentityModel(predictor, resnet, cache_size=0)
        self.engine = Engine(models_dir, face_threshold=0.0)
        self.engine.load()
        self.steps = steps
        self.template = template_for(MODEL, 64)
        self.normals, self.accuracy = self._boundaries(samples) if samples else self._shipped()
        self.reader = AttributeReader(self.engine)
        # The first optimizer a process builds imports torch._dynamo (about 1.3 CPU-seconds, once per
        # process: the service pays it at its first photo); done here so no face is charged for it.
        codes = torch.from_numpy(self.model.sample(1, seed=0)).float()
        tune(self.model.net, codes, self.model.net.render(codes).detach(), TuningOptions(steps=1))

    @staticmethod
    def _shipped() -> tuple[dict[str, np.ndarray], dict[str, float]]:
        from services.boundary import bundled

        found = {b.meta["attribute"]: b for b in bundled.read() if b.meta["model"] == MODEL}
        normals = {a: np.asarray(found[a].normal, np.float32).ravel() for a in ATTRIBUTES}
        normals = {a: n / np.linalg.norm(n) for a, n in normals.items()}
        return normals, {a: round(float(found[a].meta["validation_accuracy"]), 3) for a in ATTRIBUTES}

    def _boundaries(self, samples: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        codes = self.model.sample(samples, seed=424242)
        faces = np.concatenate([self.model.synthesize(codes[i:i + 256], "z", output="uint8").numpy()
                                for i in range(0, samples, 256)])
        scores = self.engine.score(list(faces), list(ATTRIBUTES))
        normals, accuracy = {}, {}
        for j, name in enumerate(ATTRIBUTES):
            fit = train_boundary(codes, scores.values[:, j], scores.valid[:, j], chosen_ratio=0.1)
            normals[name] = np.asarray(fit.normal, np.float32).ravel()
            accuracy[name] = round(float(fit.validation_accuracy), 3)
        return normals, accuracy

    def faces_of(self, image: np.ndarray):
        found = self.finder.find(image, 1)
        kept, dropped = photo.plausible(found, MIN_SCORE, MIN_SIDE, image, self.verifier, TRUSTED)
        return kept, len(dropped)

    def invert(self, image: np.ndarray, faces, options: TuningOptions | None, refine_steps: int = PIVOT_STEPS):
        """Inversion (+ tuning) of the faces of one photo: per-face records and the variant network.

        "untuned" is the first-round service: 80 Adam steps on the code, the base generator. "tuned" is the
        service's photo path, timed: the pivot (encoder + `refine_steps` Adam steps), then pivotal tuning.
        """
        matrices = [similarity_transform(f.landmarks, self.template) for f in faces]
        crops = np.stack([warp_crop(image, m, 64) for m in matrices])
        baseline = self.inverter.invert(crops, "z", Options(max_steps=80, target_psnr=38.0))
        untuned = np.stack([r.reconstruction for r in baseline])
        net, tuned_images, tuning_steps, pivots = self.model.net, untuned, 0, None
        cpu = float("nan")
        if options is not None and options.steps > 0:
            started = time.process_time()
            results = self.inverter.invert(crops, "z", Options(max_steps=max(1, refine_steps), target_psnr=38.0),
                                           refine=refine_steps > 0)
            pivots = torch.from_numpy(np.stack([r.code for r in results])).float()
            tuned = tune(self.model.net, pivots, self.inverter.targets(crops), options)
            cpu = time.process_time() - started
            net, tuned_images = variants.apply(self.model.net, tuned.delta), to_uint8(tuned.images)
            tuning_steps = tuned.steps
        if pivots is None:
            pivots = torch.from_numpy(np.stack([r.code for r in baseline])).float()
        ids = self.identity.embed(list(crops) + list(untuned) + list(tuned_images))
        n = len(faces)
        rows = []
        for i in range(n):
            rows.append({"box": [round(v) for v in faces[i].box], "score": round(faces[i].score, 2),
                         "psnr_untuned": _psnr(untuned[i], crops[i]), "psnr_tuned": _psnr(tuned_images[i], crops[i]),
                         "id_untuned": round(float(distance(ids[i], ids[n + i])), 4),
                         "id_tuned": round(float(distance(ids[i], ids[2 * n + i])), 4)})
        return {"rows": rows, "cpu_per_face": cpu / n, "net": net, "pivots": pivots, "matrices": matrices,
                "tuned_images": tuned_images, "tuning_steps": tuning_steps}

    def edit(self, image: np.ndarray, faces, inverted, distances: list[float],
             smoothing: float = photo.CHANGE_SMOOTHING):
        """Every attribute at every distance on all faces: identity, the attribute read on the result photo.

        The attribute of a face is read on the photo the user receives, with the face's framing of the
        unedited photo (its detector box, its alignment) for the unedited photo and for every edit, so the
        difference is the edit's. Also per face and attribute: how much of the original generator's change
        the tuned one renders, <T(p+3n) - T(p-3n), G(p+3n) - G(p-3n)> / |G(p+3n) - G(p-3n)|^2.
        """
        net, pivots, matrices = inverted["net"], inverted["pivots"], inverted["matrices"]
        mask = photo.face_mask(64, 0.08)
        big = [_scaled(m, IDENTITY_CROP / 64) for m in matrices]
        source = [warp_crop(image, m, IDENTITY_CROP) for m in big]
        with torch.no_grad():
            recon = to_uint8(net.render(pivots))
        results, changed_outside, outside_total, kept = [], 0, 0, {}
        for name in ATTRIBUTES:
            normal = torch.from_numpy(self.normals[name])
            with torch.no_grad():
                span = max(abs(d) for d in distances) * normal
                base = self.model.net.render(pivots + span) - self.model.net.render(pivots - span)
                tuned = net.render(pivots + span) - net.render(pivots - span)
            kept[name] = ((tuned * base).sum(dim=(1, 2, 3)) / (base * base).sum(dim=(1, 2, 3))).tolist()
            for d in distances:
                with torch.no_grad():
                    edited = to_uint8(net.render(pivots + d * normal))
                out, union = image, np.zeros(image.shape[:2], np.float32)
                for i, m in enumerate(matrices):
                    out, alpha = photo.paste_change(out, edited[i], recon[i], m, mask, smoothing)
                    union = np.maximum(union, alpha)
                outside = union == 0
                changed_outside += int((out[outside] != image[outside]).any(axis=-1).sum())
                outside_total += int(outside.sum())
                results.append({"attribute": name, "d": d, "photo": out,
                                "crops": [warp_crop(out, m, IDENTITY_CROP) for m in big]})
        all_crops = [c for r in results for c in r["crops"]]
        emb = self.identity.embed(source + all_crops)
        n = len(source)
        unedited = self.reader.read(image, faces, matrices)
        rows, k = [], 0
        for r in results:
            read = self.reader.read(r["photo"], faces, matrices, [r["attribute"]])
            for i in range(n):
                rows.append({"face": i, "attribute": r["attribute"], "d": r["d"],
                             "identity": round(float(distance(emb[i], emb[n + k])), 4),
                             "score": _round(read[i][r["attribute"]]),
                             "unedited_score": _round(unedited[i][r["attribute"]]),
                             "change_kept": round(kept[r["attribute"]][i], 3)})
                k += 1
        return rows, changed_outside, outside_total


class AttributeReader:
    """Reads age, gender and smile of the faces of a photo the way the scorer's models need their input.

    The scorer takes a face crop: age and gender come from dlib chips whose 5 landmarks it predicts in the
    crop's centred square, smile from the face mesh on the whole crop. The landmark model needs a detector
    box (see services/scorer/identity.py), so age and gender are read on the square of the face's detector box; the
    mesh, trained on crops with a margin, reads smile on the face aligned in the generator's framing (what
    the boundaries were trained on). Each value is the median over `JITTERS` (the crop moved by 4% of its
    side or scaled by 8%): a single reading of these models moves by years between crops one pixel apart.
    """

    JITTERS = ((0.0, 0.0, 1.0), (0.04, 0.0, 1.0), (-0.04, 0.0, 1.0), (0.0, 0.04, 1.0), (0.0, -0.04, 1.0),
               (0.0, 0.0, 1.08), (0.0, 0.0, 0.93))
    SIZE = 128

    def __init__(self, engine: Engine):
        self.engine = engine

    def _jittered(self, matrix: np.ndarray, image: np.ndarray) -> list[np.ndarray]:
        c = (self.SIZE - 1) / 2
        out = []
        for dx, dy, zoom in self.JITTERS:
            move = np.array([[zoom, 0, (1 - zoom) * c + dx * self.SIZE], [0, zoom, (1 - zoom) * c + dy * self.SIZE],
                             [0, 0, 1]])
            out.append(warp_crop(image, (move @ np.vstack([matrix, [0, 0, 1]]))[:2], self.SIZE))
        return out

    def read(self, image: np.ndarray, faces, matrices, attributes=ATTRIBUTES) -> list[dict[str, float]]:
        """Per face: {attribute: median reading} (NaN where no reading was valid)."""
        chips, meshes = [], []
        for face, matrix in zip(faces, matrices):
            x, y, w, h = face.box
            k = self.SIZE / max(w, h)
            box = np.array([[k, 0, self.SIZE / 2 - 0.5 - (x + w / 2 - 0.5) * k],
                            [0, k, self.SIZE / 2 - 0.5 - (y + h / 2 - 0.5) * k]])
            chips += self._jittered(box, image)
            meshes += self._jittered(_scaled(matrix, self.SIZE / 64), image)
        j = len(self.JITTERS)
        out = [{} for _ in faces]
        dlib_side = [a for a in attributes if a != "smile"]
        if dlib_side:
            values = self.engine.score(chips, dlib_side).values
            for i in range(len(faces)):
                for c, a in enumerate(dlib_side):
                    out[i][a] = _median(values[i * j:(i + 1) * j, c])
        if "smile" in attributes:
            values = self.engine.score(meshes, ["smile"]).values
            for i in range(len(faces)):
                out[i]["smile"] = _median(values[i * j:(i + 1) * j, 0])
        return out


def _median(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if len(finite) else float("nan")


def _round(value: float) -> float | None:
    return round(value, 4) if np.isfinite(value) else None


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    ta = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 127.5 - 1
    tb = torch.from_numpy(b).permute(2, 0, 1)[None].float() / 127.5 - 1
    return round(float(psnr(ta, tb)[0]), 3)


def _scaled(matrix: np.ndarray, k: float) -> np.ndarray:
    """The alignment of a crop k times larger (pixel-centre convention)."""
    up = np.array([[k, 0, (k - 1) / 2], [0, k, (k - 1) / 2], [0, 0, 1]])
    return (up @ np.vstack([matrix, [0, 0, 1]]))[:2]


def figure(bench: Bench, portraits: dict[str, np.ndarray], path: Path, crop: int = 300) -> None:
    """The README's before/after strip: each portrait as sent ("original"), then edits pasted back, each
    captioned with the edit and the identity distance of its face to the photo's."""
    from PIL import ImageDraw

    cells = [("original", None, 0.0), ("age -3", "age", -3.0), ("age +3", "age", 3.0), ("gender +3", "gender", 3.0),
             ("smile +3", "smile", 3.0)]
    rows = []
    for name, image in portraits.items():
        faces, _ = bench.faces_of(image)
        inv = bench.invert(image, faces[:1], TuningOptions())
        m = inv["matrices"][0]
        big = _scaled(m, IDENTITY_CROP / 64)
        with torch.no_grad():
            recon = to_uint8(inv["net"].render(inv["pivots"]))[0]
        x, y, w, h = faces[0].box
        cx, cy = x + w / 2, y + h / 2
        half = min(1.6 * max(w, h), cx, cy, image.shape[1] - cx, image.shape[0] - cy)
        tiles = []
        for label, attribute, d in cells:
            out = image
            if attribute is not None:
                normal = torch.from_numpy(bench.normals[attribute])
                with torch.no_grad():
                    edited = to_uint8(inv["net"].render(inv["pivots"] + d * normal))[0]
                out, _ = photo.paste_change(image, edited, recon, m, photo.face_mask(64, 0.08),
                                            photo.CHANGE_SMOOTHING)
            ident = distance(*bench.identity.embed([warp_crop(image, big, IDENTITY_CROP),
                                                    warp_crop(out, big, IDENTITY_CROP)]))
            window = out[int(cy - half):int(cy + half), int(cx - half):int(cx + half)]
            view = Image.fromarray(window).resize((crop, crop))
            canvas = Image.new("RGB", (crop, crop + 22), "white")
            canvas.paste(view, (0, 0))
            ImageDraw.Draw(canvas).text((6, crop + 5), f"{label}  identity {ident:.2f}", fill="black")
            tiles.append(canvas)
        rows.append(tiles)
    sheet = Image.new("RGB", (crop * len(cells), (crop + 22) * len(rows)), "white")
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (c * crop, r * (crop + 22)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    print(f"wrote {path}")


def direction_rates(edit_rows: list[dict]) -> dict:
    """How often the edited attribute moves the asked way.

    "asked way": for each (photo, face, attribute) and each asked direction, the result at the largest
    distance that way against the unedited photo, both read on the photo the user receives; the score must
    go up for +d and down for -d. "endpoint" (the first round's reading, for comparison): the score at the
    largest +d above the one at the largest -d. Pairs without a valid reading are left out and counted.
    """
    by_key: dict[tuple, dict[float, dict]] = {}
    for r in edit_rows:
        by_key.setdefault((r["photo"], r["face"], r["attribute"]), {})[r["d"]] = r
    asked = {a: [] for a in ATTRIBUTES}
    endpoint, unread = [], 0
    for (_, _, attribute), rows in by_key.items():
        for d in (max(rows), min(rows)):
            score, before = rows[d]["score"], rows[d]["unedited_score"]
            if score is None or before is None:
                unread += 1
            else:
                asked[attribute].append((score - before) * d > 0)
        hi, lo = rows[max(rows)]["score"], rows[min(rows)]["score"]
        if hi is not None and lo is not None:
            endpoint.append(hi > lo)
    every = [x for v in asked.values() for x in v]
    return {"rate": float(np.mean(every)) if every else 0.0, "pairs": len(every), "unread": unread,
            "by_attribute": {a: round(float(np.mean(v)), 3) if v else None for a, v in asked.items()},
            "endpoint_rate": float(np.mean(endpoint)) if endpoint else 0.0, "endpoint_pairs": len(endpoint)}


def change_columns(edit_rows: list[dict]) -> dict[str, float | None]:
    """"<attribute>_change": the mean over (photo, face) read at both ends of the score at +3 minus at -3."""
    at = {(r["photo"], r["face"], r["attribute"], r["d"]): r["score"] for r in edit_rows}
    out = {a: [] for a in ATTRIBUTES}
    for (name, face, attribute, d), hi in at.items():
        lo = at.get((name, face, attribute, -3.0))
        if d == 3.0 and hi is not None and lo is not None:
            out[attribute].append(hi - lo)
    return {f"{a}_change": round(float(np.mean(v)), 3) if v else None for a, v in out.items()}


def smoothing_row(smoothing: float, edit_rows: list[dict]) -> dict:
    """One row of the change-smoothing table, from the edits at +-3 of every photo."""
    rows = [r for r in edit_rows if abs(r["d"]) == 3.0]
    ids = np.array([r["identity"] for r in rows])
    moved = direction_rates(rows)
    return {"smoothing_x64": round(smoothing * 64, 2), "asked_way": round(moved["rate"], 3),
            "endpoint": round(moved["endpoint_rate"], 3),
            "edit_same_person": round(float(np.mean(ids < SAME_PERSON)), 3),
            "edit_identity_mean": round(float(ids.mean()), 3), **change_columns(rows)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=TuningOptions.steps, help="pivotal tuning steps (service default)")
    p.add_argument("--tune-from", type=int, default=TuningOptions.tune_from, help="first tuned DCGAN layer")
    p.add_argument("--locality-weight", type=float, default=TuningOptions.locality_weight,
                   help="weight of the tuning's locality (change-keeping) term")
    p.add_argument("--locality-codes", type=int, default=TuningOptions.locality_codes,
                   help="random directions per face of the locality term")
    p.add_argument("--refine-steps", type=int, default=PIVOT_STEPS,
                   help="Adam steps on the code before tuning (the service's default for tuned photos)")
    p.add_argument("--samples", type=int, default=0, help="generated faces to train the boundaries on (0: the "
                                                          "boundaries shipped with the project)")
    p.add_argument("--change-smoothing", type=float, default=photo.CHANGE_SMOOTHING,
                   help="Gaussian sigma of the pasted change, fraction of the face crop (the service default)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU seconds are counted over all)")
    p.add_argument("--models-dir", default=None, help="model cache folder")
    p.add_argument("--quick", action="store_true", help="one portrait, no variants, no group photo, 20 tuning "
                                                        "steps, +-3 only, 2 trade-off rows")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "photos.json", help="result JSON")
    p.add_argument("--figure", type=Path, default=None,
                   help="only write the before/after strip of both portraits to this PNG (the README's figure)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    steps = 20 if args.quick else args.steps
    bench = Bench(args.models_dir, args.samples, steps, args.quick)
    print(f"boundaries: validation accuracy {bench.accuracy}", flush=True)
    portraits = {n: np.asarray(Image.open(assets.path_of(n, args.models_dir)).convert("RGB"))
                 for n in ("astronaut.png", "grace_hopper.jpg")}
    if args.figure:
        figure(bench, portraits, args.figure)
        return 0
    if args.quick:
        photos = {"grace_hopper.jpg": portraits["grace_hopper.jpg"]}
    else:
        photos = {}
        for name, image in portraits.items():
            photos.update(robustness_variants(name, image))
        generated = bench.model.synthesize(bench.model.sample(2, seed=7), "z", output="uint8").numpy()
        photos["group"] = group_photo(portraits, generated)
    distances = [-3.0, 3.0] if args.quick else [-3.0, -2.0, -1.0, 1.0, 2.0, 3.0]
    options = TuningOptions(steps=steps, tune_from=args.tune_from, locality_weight=args.locality_weight,
                            locality_codes=args.locality_codes)

    # The change-smoothing table: every photo's edits at +-3 pasted with each of these besides the run's own.
    others = [] if args.quick else [s for s in (0.0, 0.6 / 64, 1.5 / 64) if abs(s - args.change_smoothing) > 1e-9]
    smoothed = {s: [] for s in others}
    face_rows, edit_rows, photo_rows = [], [], []
    changed_outside = outside_total = 0
    cpu_per_face = []
    for name, image in photos.items():
        faces, dropped = bench.faces_of(image)
        entry = {"photo": name, "size": list(image.shape[:2]), "faces": len(faces), "dropped": dropped}
        photo_rows.append(entry)
        if not faces:
            print(f"{name:28s} no face found ({image.shape[1]}x{image.shape[0]})", flush=True)
            continue
        inverted = bench.invert(image, faces, options, args.refine_steps)
        cpu_per_face += [inverted["cpu_per_face"]] * len(faces)
        for i, row in enumerate(inverted["rows"]):
            face_rows.append({"photo": name, "face": i, **row, "cpu_s": round(inverted["cpu_per_face"], 3)})
        rows, changed, outside = bench.edit(image, faces, inverted, distances, args.change_smoothing)
        changed_outside += changed
        outside_total += outside
        edit_rows += [{"photo": name, **r} for r in rows]
        for s in others:  # the same renders pasted with other smoothings (at +-3 only: the asked way's distances)
            other, changed, outside = bench.edit(image, faces, inverted, [-3.0, 3.0], s)
            changed_outside += changed
            outside_total += outside
            smoothed[s] += [{"photo": name, **r} for r in other]
        for i, row in enumerate(inverted["rows"]):
            ids = [r["identity"] for r in rows if r["face"] == i]
            print(f"{name:28s} face {i} {row['psnr_untuned']:6.2f} -> {row['psnr_tuned']:6.2f} dB  identity "
                  f"{row['id_untuned']:.3f} -> {row['id_tuned']:.3f}  edits: identity max {max(ids):.3f}  "
                  f"cpu {inverted['cpu_per_face']:.2f} s/face (dropped detections {dropped})", flush=True)

    # The trade-off table: tuned layers, steps and the locality term against identity, PSNR, edits and CPU.
    base = {k: v for k, v in photos.items() if ":" not in k and "@" not in k and k != "group"}
    same = vars(options)
    configs = [(0, {}), (steps, {})] if args.quick else \
        [(0, {}), (50, {}), (100, {}), (150, {}), (250, {}), (350, {}), (150, {"tune_from": 6}),
         (250, {"tune_from": 6}), (150, {"tune_from": 3}), (250, {"locality_weight": 0.0})]
    tradeoff = []
    for n_steps, change in configs:
        tuning = TuningOptions(**{**same, "steps": n_steps, **change})
        ids, psnrs, cpus, edits = [], [], [], []
        for name, image in base.items():
            faces, _ = bench.faces_of(image)
            inv = bench.invert(image, faces, tuning if n_steps else None, args.refine_steps)
            ids += [r["id_tuned"] for r in inv["rows"]]
            psnrs += [r["psnr_tuned"] for r in inv["rows"]]
            cpus.append(inv["cpu_per_face"] if n_steps else float("nan"))
            rows, _, _ = bench.edit(image, faces, inv, [-3.0, 3.0])
            edits += [{"photo": name, **r} for r in rows]
        moved = direction_rates(edits)
        edit_ids = np.array([r["identity"] for r in edits])
        tradeoff.append({"tune_from": tuning.tune_from, "steps": n_steps,
                         "locality_weight": tuning.locality_weight if n_steps else None,
                         "psnr": round(float(np.mean(psnrs)), 2), "identity": round(float(np.mean(ids)), 3),
                         "edit_identity_max": round(float(edit_ids.max()), 3),
                         "edit_same_person": round(float(np.mean(edit_ids < SAME_PERSON)), 3),
                         "change_kept": round(float(np.mean([r["change_kept"] for r in edits])), 3),
                         "asked_way": round(moved["rate"], 3),
                         **change_columns(edits),
                         "cpu_s_per_face": round(float(np.mean(cpus)), 2) if n_steps else None})

    smoothing_table = sorted([smoothing_row(args.change_smoothing, edit_rows)] +
                             [smoothing_row(s, rows) for s, rows in smoothed.items()], key=lambda r: r["smoothing_x64"])
    edit_ids = np.array([r["identity"] for r in edit_rows])
    moved = direction_rates(edit_rows)
    rate = moved["rate"]
    mean_id = float(np.mean([r["id_tuned"] for r in face_rows]))
    mean_psnr = float(np.mean([r["psnr_tuned"] for r in face_rows]))
    targets = {
        "mean_reconstruction_identity_tuned": at_most(mean_id, 0.25),
        "mean_reconstruction_psnr_tuned_db": at_least(mean_psnr, 32.0),
        "edited_same_person_rate": at_least(float(np.mean(edit_ids < SAME_PERSON)), 0.9),
        "attribute_moves_asked_way_rate": at_least(rate, 0.8),
        "cpu_seconds_per_face": at_most(float(np.mean(cpu_per_face)), 3.0),
        "changed_pixels_outside_mask": at_most(changed_outside, 0),
    }
    summary = {
        "faces": len(face_rows), "photos": len(photos),
        "photos_without_face": [r["photo"] for r in photo_rows if not r["faces"]],
        "psnr_untuned": round(float(np.mean([r["psnr_untuned"] for r in face_rows])), 2),
        "psnr_tuned": round(mean_psnr, 2),
        "identity_untuned": round(float(np.mean([r["id_untuned"] for r in face_rows])), 3),
        "identity_tuned": round(mean_id, 3),
        "identity_tuned_max": round(float(np.max([r["id_tuned"] for r in face_rows])), 3),
        "identity_fallbacks_to_frame": bench.identity.fallbacks,
        "edited_images": int(len(edit_ids)), "edited_identity_mean": round(float(edit_ids.mean()), 3),
        "edited_same_person_rate": round(float(np.mean(edit_ids < SAME_PERSON)), 3),
        "change_kept": round(float(np.mean([r["change_kept"] for r in edit_rows])), 3),
        "attribute_pairs": moved["pairs"], "attribute_pairs_unread": moved["unread"],
        "attribute_moves_asked_way_rate": round(rate, 3),
        "attribute_moves_asked_way_by_attribute": moved["by_attribute"],
        "attribute_endpoint_rate": round(moved["endpoint_rate"], 3),
        "cpu_seconds_per_face": round(float(np.mean(cpu_per_face)), 3),
        "pixels_outside_mask": outside_total, "changed_pixels_outside_mask": changed_outside,
    }
    print("\nsummary:")
    for k, v in summary.items():
        print(f"  {k:32s} {v}")
    print("\ntrade-off (the two portraits; change_kept: share of the original generator's change the tuned one "
          "renders; asked_way: edits at +-3 moving the attribute as asked; *_change: score at +3 minus at -3):")
    head = list(tradeoff[0])
    print("  " + " ".join(f"{h[:12]:>12s}" for h in head))
    for row in tradeoff:
        print("  " + " ".join(f"{str(row[h]):>12}" for h in head))
    print(f"\nchange smoothing (every photo, edits at +-3; sigma in pixels of a 64 px face crop; this run's: "
          f"{args.change_smoothing * 64:g}):")
    head = list(smoothing_table[0])
    print("  " + " ".join(f"{h[:16]:>16s}" for h in head))
    for row in smoothing_table:
        print("  " + " ".join(f"{str(row[h]):>16}" for h in head))
    print("targets:")
    print_targets(targets)
    result = {"benchmark": "photos", "quick": args.quick, "model": MODEL, "tuning": vars(options) | {},
              "threads": args.threads, "load_average": load_average(), "boundary_accuracy": bench.accuracy,
              "change_smoothing": args.change_smoothing,
              "wall_seconds": round(time.monotonic() - t0, 1), "summary": summary, "tradeoff": tradeoff,
              "smoothing": smoothing_table,
              "photos": photo_rows, "faces": face_rows, "edits": edit_rows, "targets": targets}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
