"""Edits in the attribute's own unit: target distances found with the scorer in the loop, and automatic holding."""

from __future__ import annotations

import dataclasses
import math
import time

import grpc
import numpy as np

from interfacegan import codec, defaults
from interfacegan.v1 import boundary_pb2, editor_pb2, generator_pb2, scorer_pb2
from services.common import editing
from services.common.errors import ServiceError, invalid_argument
from services.common.upstream import CallContext

from . import holding, search

RAW = 3  # common_pb2.IMAGE_FORMAT_RAW
Row = dict  # attribute -> value (valid scores only)


@dataclasses.dataclass
class Calibration:
    """What the calibration of one edit decided: the direction to follow, the distance, and the reports."""

    direction: object  # server.Direction
    distance: float | None = None  # target edits: the relative distance found
    target: editor_pb2.TargetOutcome | None = None
    holds: list[editor_pb2.HoldDrift] = dataclasses.field(default_factory=list)
    held: list[str] = dataclasses.field(default_factory=list)  # attributes held automatically
    codes: np.ndarray | None = None  # hold=auto corrected the face: every face's start code (F, ...) float32


@dataclasses.dataclass(frozen=True)
class HeldMiss:
    """A held search given up (it missed the target the edit's own direction met, or held no better): what it
    tried and spent."""

    attributes: list[str]
    rounds: int
    evaluations: int
    message: str


def measured_attribute(edit: editor_pb2.AttributeEdit) -> str:
    """The scorer attribute an edit changes ('gender|age' changes gender)."""
    return edit.attribute.split("|", 1)[0]


def check_target(edit: editor_pb2.AttributeEdit, field: str) -> None:
    """Validates a target edit's fields (INVALID_ARGUMENT naming the field and what is accepted)."""
    kind = edit.WhichOneof("target")
    value = getattr(edit, kind)
    if not math.isfinite(value):
        raise invalid_argument(f"{field}.{kind}", f"{value}; give a finite number in the attribute's unit")
    if edit.steps > 1 or edit.start or edit.end:
        raise invalid_argument(f"{field}.steps", "a target edit returns one image: leave start and end unset and "
                                                 "steps 0 or 1")
    if edit.mode == boundary_pb2.DISTANCE_MODE_ABSOLUTE:
        raise invalid_argument(f"{field}.mode", "target edits search relative distances; leave mode unset")
    if not (math.isfinite(edit.tolerance) and edit.tolerance >= 0):
        raise invalid_argument(f"{field}.tolerance", f"{edit.tolerance}; accepted >= 0 (0: the unit's default)")
    if not (math.isfinite(edit.max_distance) and 0 <= edit.max_distance <= defaults.MAX_DISTANCE):
        raise invalid_argument(f"{field}.max_distance", f"{edit.max_distance}; accepted 0 .. "
                                                        f"{defaults.MAX_DISTANCE:g} (0: {defaults.TARGET_MAX_DISTANCE:g})")
    if edit.max_rounds > defaults.MAX_TARGET_ROUNDS:
        raise invalid_argument(f"{field}.max_rounds", f"{edit.max_rounds}; accepted 1 .. {defaults.MAX_TARGET_ROUNDS} "
                                                      f"(0: {defaults.TARGET_ROUNDS})")


class CalibratedEdits:
    """Mixin of EditorService: measuring faces along a direction, target searches and hold=auto."""

    _attributes: tuple[float, dict] = (0.0, {})
    _stored_names: dict

    async def _scorer_attributes(self, call: CallContext) -> dict:
        """name -> AttributeInfo of the scorer (re-asked after boundary_refresh_seconds)."""
        seen, known = self._attributes
        if not known or time.monotonic() - seen > max(60.0, self.settings.boundary_refresh_seconds):
            reply = await self.scorer.unary("ListAttributes", scorer_pb2.ListAttributesRequest(), call)
            known = {a.name: a for a in reply.attributes}
            self._attributes = (time.monotonic(), known)
        return known

    async def _boundary_names(self, model: str, space: int, call: CallContext) -> set[str]:
        """Plain (not derived) attributes with a stored boundary editing `space` codes of `model`."""
        cache = self.__dict__.setdefault("_stored_names", {})
        key = (model, space)
        if key in cache and time.monotonic() - cache[key][0] <= self.settings.boundary_refresh_seconds:
            return cache[key][1]
        reply = await self.boundary.unary("ListBoundaries", boundary_pb2.ListBoundariesRequest(model=model), call)
        from .server import BOUNDARY_SPACES  # the one table of which boundary spaces edit which codes
        names = {b.ref.attribute for b in reply.boundaries
                 if "|" not in b.ref.attribute and b.ref.space in BOUNDARY_SPACES.get(space, (space,))}
        cache[key] = (time.monotonic(), names)
        return names

    async def _measure(self, codes: np.ndarray, model, source, call: CallContext, tag: str,
                       attributes: tuple[str, ...] = ()) -> list[Row]:
        """Renders codes (one generator batch) and scores `attributes` (all when empty) on them (one scorer batch)."""
        replies = await self.generator.collect("Synthesize", generator_pb2.SynthesizeRequest(
            request_id=call.derived_id(tag), model=model,
            codes=codec.latents(codes, source.space), format=RAW, variant=source.variant), call)
        faces = [image for reply in replies for image in reply.images]
        if len(faces) != len(codes):
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, f"generator returned {len(faces)} images for "
                                                            f"{len(codes)} codes; retry")
        rows: list[Row] = [{} for _ in faces]
        for reply in await self.scorer.collect("Score", scorer_pb2.ScoreRequest(
                request_id=call.derived_id(tag), images=faces, attributes=attributes), call):
            for i, r in enumerate(reply.results, start=reply.offset):
                rows[i] = {s.attribute: s.value for s in r.scores if s.valid}
        return rows

    def _codes_along(self, source, normal: np.ndarray, distances, *, absolute: bool = False,
                     layers: tuple[int, int] | None = None) -> np.ndarray:
        edited = editing.edit(source.code, normal[None], np.asarray([list(distances)], np.float64),
                              absolute=absolute, layers=np.array([layers]) if layers else None)
        return edited[0, 0]

    async def _calibrate(self, index: int, edit: editor_pb2.AttributeEdit, direction, model, source,
                         layers: tuple[int, int] | None, call: CallContext) -> Calibration | None:
        """Target search and/or automatic holding for one edit; None for a plain edit."""
        kind = edit.WhichOneof("target")
        if kind is None and not edit.hold_auto:
            return None
        field = f"edits[{index}]"
        known = await self._scorer_attributes(call)
        name = measured_attribute(edit)
        info = known.get(name)
        if info is None:
            raise invalid_argument(f"{field}.attribute", f"{name!r} is not measured by the scorer, and target edits "
                                                         f"and hold_auto measure it; accepted: {', '.join(sorted(known))}")
        if kind is not None:
            if edit.unit and edit.unit != info.unit:
                raise invalid_argument(f"{field}.unit", f"{edit.unit!r}, but {name} is measured in {info.unit!r}; give "
                                                        f"the target in {info.unit} (or leave unit unset)")
            if kind == "to" and not info.min_value <= edit.to <= info.max_value:
                raise invalid_argument(f"{field}.to", f"{edit.to:g} is outside {name}'s range; accepted "
                                                      f"{info.min_value:g} .. {info.max_value:g} {info.unit}")
        tolerance = edit.tolerance or defaults.per_unit(defaults.TOLERANCE, info.unit, info.min_value, info.max_value)
        rows: dict[tuple, dict[float, Row]] = {}
        # A plain target search needs only its own attribute (the cheapest scorer pass); hold=auto needs them all.
        wanted = () if edit.hold_auto else (name,)

        async def evaluate_on(d, distances, tag):
            codes = self._codes_along(source, d.normal, distances, layers=layers)
            measured = await self._measure(codes, model, source, call, f"{tag}{index}", wanted)
            rows.setdefault(_key(d), {}).update(zip(distances, measured))
            return [r.get(name) for r in measured]

        async def find(d, tag):
            if kind is None:
                return None
            return await search.search(
                lambda ts: evaluate_on(d, ts, tag), tolerance=tolerance,
                max_distance=edit.max_distance or defaults.TARGET_MAX_DISTANCE,
                max_rounds=edit.max_rounds or defaults.TARGET_ROUNDS,
                goal=edit.to if kind == "to" else None, delta=edit.delta if kind == "delta" else None)

        outcome = await find(direction, "t")
        result = Calibration(direction)
        spent = (outcome.rounds, outcome.evaluations) if outcome else (0, 0)
        note = ""
        if edit.hold_auto:
            held, holds, outcome, extra, codes, missed = await self._auto_hold(
                index, edit, direction, model, source, layers, call, known, name, outcome, rows, tolerance)
            result.held, result.holds, result.codes = held, holds, codes
            if held:
                result.direction = extra
            if outcome is not None and held:
                spent = (spent[0] + outcome.rounds, spent[1] + outcome.evaluations)
            if missed is not None:
                spent = (spent[0] + missed.rounds, spent[1] + missed.evaluations)
                note = (f"; holding {', '.join(missed.attributes)} was tried ({missed.message}), so nothing is held "
                        f"(the drift is reported)")
        if outcome is not None:
            result.distance = outcome.distance
            result.target = editor_pb2.TargetOutcome(
                attribute=name, unit=info.unit, goal=outcome.goal, tolerance=tolerance, before=outcome.before,
                after=outcome.after, distance=outcome.distance, met=outcome.met, rounds=spent[0],
                evaluations=spent[1], stop=outcome.stop, message=outcome.message + note)
        return result

    async def _auto_hold(self, index, edit, direction, model, source, layers, call, known, name, outcome, rows,
                         tolerance):
        """Measures the other attributes along the edit on this face; holds those that drift past the threshold.

        A target edit's held search corrects the residual drift with the scorer in the loop (holding.py); a
        plain edit follows the held direction (the held normals projected off) alone.

        Returns (held names, HoldDrift reports, the final search outcome, the held direction, the corrected start
        codes of every face or None, a HeldMiss when the held search missed a target the edit's own direction met).
        """
        candidates = sorted((await self._boundary_names(direction.ref.model, source.space, call))
                            - {name, *edit.hold} & set(known))
        if outcome is not None:
            probe = outcome.distance
        else:
            start, end, _ = defaults.resolve(edit.start, edit.end, edit.steps)
            probe = start if abs(start) > abs(end) else end
        absolute = edit.mode == boundary_pb2.DISTANCE_MODE_ABSOLUTE
        at = rows.get(_key(direction), {})
        if 0.0 not in at or probe not in at or absolute:
            codes = self._codes_along(source, direction.normal, [0.0, probe], absolute=absolute, layers=layers)
            if absolute:  # distance 0 of an absolute edit is not the unedited face
                codes[0] = source.code[0]
            first, last = await self._measure(codes, model, source, call, f"h{index}")
            at = {0.0: first, probe: last}
        base, moved = at[0.0], at[probe]
        drift = {a: moved[a] - base[a] for a in candidates if a in base and a in moved}
        threshold = {a: defaults.per_unit(defaults.HOLD_THRESHOLD, known[a].unit, known[a].min_value,
                                          known[a].max_value) for a in drift}
        held = [a for a in drift if abs(drift[a]) > threshold[a]]
        held_drift = dict(drift)
        final, held_direction, start_codes = outcome, direction, None
        if held:
            conditioned = editor_pb2.AttributeEdit()
            conditioned.CopyFrom(edit)
            conditioned.hold.extend(held)
            held_direction = await self._boundary(index, conditioned, direction.ref.model, source.space, call)
            if outcome is not None:
                found, start_codes = await self._held_search(index, edit, direction, held_direction, held, base,
                                                             threshold, model, source, layers, call, name, outcome,
                                                             at, tolerance)
                final, point = found.outcome, found.row
                watched = [holding.Held(a, base[a], threshold[a]) for a in drift]
                worse = holding.cost(point, watched) >= holding.cost(moved, watched)
                if outcome.met and (not final.met or worse):
                    # The target comes first: the edit's own direction met it, the held one did not (the face
                    # leaves the scorer's reach, or the target moves too), or held no better. Nothing is held
                    # then, and the report says so.
                    why = "it drifted no less" if final.met else f"it missed the target: {final.message}"
                    missed = HeldMiss(held, final.rounds, final.evaluations, why)
                    return [], self._holds(drift, drift, threshold, known, ()), outcome, direction, None, missed
            else:
                codes = self._codes_along(source, held_direction.normal, [probe], absolute=absolute, layers=layers)
                point = (await self._measure(codes, model, source, call, f"a{index}"))[0]
            held_drift = {a: point[a] - base[a] if a in point else math.nan for a in drift}
        return held, self._holds(drift, held_drift, threshold, known, held), final, held_direction, start_codes, None

    @staticmethod
    def _holds(drift, held_drift, threshold, known, held) -> list[editor_pb2.HoldDrift]:
        return [editor_pb2.HoldDrift(attribute=a, unit=known[a].unit, threshold=threshold[a], drift=drift[a],
                                     held_drift=held_drift[a], held=a in held) for a in sorted(drift)]

    async def _held_search(self, index, edit, direction, held_direction, held, base, threshold, model, source, layers,
                           call, name, outcome, along, tolerance):
        """The target search along the held direction with the held attributes' drift corrected on this face.

        Returns (holding.HeldResult, the corrected start codes of every face, None when no correction was needed).
        """
        # The held direction's parents: the edited boundary, the attributes held as asked, then those held here.
        parents = {p.attribute: p for p in held_direction.parents[1:]}
        asked = [a for a in parents if a not in held]
        normals = []
        for a in [*asked, *held]:
            found = await self._find_boundary(direction.ref.model, a, source.space, parents[a].version, call,
                                              f"edits[{index}].hold")
            normals.append(found.normal)
        # Corrections move neither the edited attribute nor the ones held as asked (to first order).
        directions = holding.correction_directions(direction.normal, normals)[len(asked):]
        wanted = [holding.Held(a, base[a], threshold[a]) for a in held]
        watched = [holding.Held(a, base[a], threshold[a]) for a in threshold if a not in held]

        # The local rounds append the directions they probe: a point's corrections follow basis[:len(c)].
        basis = list(directions)

        def offset(c) -> np.ndarray:
            return np.asarray(c) @ np.stack(basis[:len(c)])

        async def measure(points):
            codes = np.concatenate([
                self._codes_along(_Start(holding.shifted(source.code, offset(c), layers)),
                                  held_direction.normal, [t], layers=layers) for t, c in points])
            return await self._measure(codes, model, source, call, f"a{index}")

        kind = edit.WhichOneof("target")
        result = await holding.held_search(
            measure, name=name, held=wanted, prior=sorted(along.items()), tolerance=tolerance,
            max_distance=edit.max_distance or defaults.TARGET_MAX_DISTANCE,
            max_rounds=edit.max_rounds or defaults.TARGET_ROUNDS, goal=edit.to if kind == "to" else None,
            delta=edit.delta if kind == "delta" else None, watched=watched,
            side=math.copysign(1.0, outcome.distance) if kind == "to" and outcome.distance else 0.0,
            basis=basis, along=held_direction.normal)
        correction = np.asarray(result.point[1])
        if not correction.any():
            return result, None
        return result, holding.shifted(source.codes, offset(correction), layers)


@dataclasses.dataclass
class _Start:
    """A start code for _codes_along (the face moved by a correction)."""

    code: np.ndarray


def apply_corrections(edited: np.ndarray, found: list, normals: list[np.ndarray], dist: np.ndarray,
                      ranges: list) -> None:
    """Re-renders in place the codes of the edits whose held search corrected the face (their own start codes).

    Args:
        edited: (F, E, S, ...) as editing.edit returns them for the request's source.
        found: Per edit, its Calibration or None.
        normals: Per edit, the normal it follows.
        dist: (E, S) distances.
        ranges: Per edit, its W+ layer range or None.
    """
    for e, c in enumerate(found):
        if c is not None and c.codes is not None:
            layers = np.array([ranges[e]]) if ranges[e] else None
            edited[:, e, :1] = editing.edit(c.codes, normals[e][None], dist[e:e + 1, :1], layers=layers)[:, 0]


def replay_source(replay: editor_pb2.EditRequest, found, space: int, variant: str) -> None:
    """A corrected edit replays from its corrected start code (and a photo's tuned variant)."""
    if found is not None and found.codes is not None:
        replay.code.CopyFrom(codec.latents(found.codes[:1], space))
        replay.variant = variant


def expand_hold_auto(request: editor_pb2.EditRequest) -> None:
    """`hold: ["auto"]` (grpcurl, JSON clients) means hold_auto: "auto" leaves the list and sets the flag."""
    for edit in request.edits:
        if "auto" in edit.hold:
            kept = [h for h in edit.hold if h != "auto"]
            del edit.hold[:]
            edit.hold.extend(kept)
            edit.hold_auto = True


def _key(direction) -> tuple:
    ref = direction.ref
    return ref.model, ref.attribute, ref.space, ref.version
