"""Edits in the attribute's unit on the real cluster (shipped boundaries, real generator and scorer): target
searches, their bad input, hold=auto, and receipts that render the same image again."""

from __future__ import annotations

import grpc
import pytest

from interfacegan.edits import EditSpec
from interfacegan.v1 import common_pb2, editor_pb2, editor_pb2_grpc

C = grpc.StatusCode
RAW = common_pb2.IMAGE_FORMAT_RAW


@pytest.fixture(scope="module")
def stub(cluster):
    with grpc.insecure_channel(cluster.services["editor"].address) as channel:
        yield editor_pb2_grpc.EditorServiceStub(channel)


def edit_of(text: str, version: int = 1) -> editor_pb2.AttributeEdit:
    """The SDK's grammar; version 1 is the shipped boundary (the session's store started empty)."""
    e = EditSpec.parse(text).to_proto()
    e.boundary_version = version
    return e


def run(stub, seed, *edits, **fields):
    request = editor_pb2.EditRequest(seed=seed, edits=list(edits), format=RAW, **fields)
    return list(stub.Edit(request, timeout=300))


def score(frame, attribute):
    return next(s.value for s in frame.scores if s.attribute == attribute and s.valid)


def test_a_target_edit_reports_the_distance_and_the_values_measured_on_the_returned_image(stub):
    met = 0
    for seed in (3, 4, 11):
        (frame,) = run(stub, seed, edit_of("yaw:+12deg"))
        t = frame.target
        assert t.attribute == "yaw" and t.unit == "degrees" and t.tolerance == 3.0
        assert t.goal == pytest.approx(t.before + 12) and t.distance == frame.distance
        assert t.after == pytest.approx(score(frame, "yaw"))  # measured on the image the caller gets
        assert t.met == (abs(t.after - t.goal) <= 3.0) and 1 <= t.rounds <= 5 and t.evaluations > t.rounds
        assert t.stop in ("met", "rounds", "unreachable", "wrong_way") and t.message
        assert frame.receipt.distance == frame.distance and len(frame.scores) >= 5  # the full row
        met += t.met
    assert met >= 2, "yaw, the cleanest attribute, should reach +12 degrees on most faces"


def test_an_unreachable_target_says_so_and_stays_within_the_distance_limit(stub):
    (frame,) = run(stub, 3, edit_of("yaw:+60deg:max=0.5"))
    t = frame.target
    assert not t.met and t.stop in ("unreachable", "wrong_way") and abs(t.distance) <= 0.5
    assert t.rounds == 1  # nothing bracketed: no refining rounds


def test_bad_target_edits_are_refused_with_the_field_at_fault(stub):
    cases = [
        (editor_pb2.AttributeEdit(attribute="age", delta=5, steps=4), "steps"),
        (editor_pb2.AttributeEdit(attribute="age", to=200), r"outside age's range"),
        (editor_pb2.AttributeEdit(attribute="age", delta=5, unit="degrees"), r"measured in 'years'"),
        (editor_pb2.AttributeEdit(attribute="age", delta=5, max_rounds=50), "max_rounds"),
        (editor_pb2.AttributeEdit(attribute="age", delta=float("nan")), "finite"),
    ]
    for edit, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            run(stub, 1, edit)
        assert err.value.code() == C.INVALID_ARGUMENT and err.value.details() and \
            __import__("re").search(message, err.value.details()), (edit, err.value.details())


def test_hold_auto_holds_what_drifts_on_this_face_and_reports_before_and_after(stub):
    held_any = False
    for seed in range(1, 9):
        (frame,) = run(stub, seed, edit_of("gender:to=0.9:hold=auto"))
        holds = {h.attribute: h for h in frame.holds}
        assert {"age", "yaw", "smile"} <= set(holds)  # every other attribute with a boundary was measured
        # A hold that would miss the target the edit's own direction meets is given up, and said so.
        missed = "nothing is held" in frame.target.message
        if missed:
            assert frame.target.met and any(abs(h.drift) > h.threshold for h in holds.values())
        for h in holds.values():
            assert h.held == (abs(h.drift) > h.threshold and not missed)
        held = sorted(a for a, h in holds.items() if h.held)
        if not held:  # nothing held: the direction used is the edit's own
            assert all(h.held_drift == h.drift for h in holds.values())
        assert sorted(a for a in frame.receipt.held) == held
        if held:
            held_any = True
            assert frame.receipt.boundary.attribute == "|".join(["gender", *held])
            assert [p.attribute for p in frame.receipt.parents] == ["gender", *held]
            assert frame.target.attribute == "gender"
    assert held_any, "a gender edit to 0.9 moves age, yaw or smile past its threshold on some of 8 faces"


def test_the_receipt_renders_the_same_image_again(stub, cluster):
    frames = run(stub, 5, edit_of("age:-2:2:3"), edit_of("gender:to=0.9:hold=age"), edit_of("yaw:+10deg:hold=auto"),
                 include_original=True)
    assert frames[0].edit_index == -1 and not frames[0].HasField("receipt")
    for frame in frames[1:]:
        receipt = frame.receipt
        assert receipt.model.name and receipt.model.version and receipt.boundary.version >= 1
        # A face corrected by hold=auto replays from its corrected start code, any other from the seed.
        corrected = receipt.replay.WhichOneof("source") == "code"
        assert (receipt.replay.seed == 5) != corrected and len(receipt.replay.edits) == 1
        assert not corrected or list(receipt.held)
        (again,) = list(stub.Edit(receipt.replay, timeout=300))
        assert again.image.encoded == frame.image.encoded  # bit-identical pixels
        assert again.code.codes.data == frame.code.codes.data
        assert again.distance == frame.distance and again.boundary == frame.boundary
    # A code source is replayed with its code.
    code = frames[1].code
    (first,) = list(stub.Edit(editor_pb2.EditRequest(code=code, edits=[edit_of("smile:+0.05r")], format=RAW),
                              timeout=300))
    (again,) = list(stub.Edit(first.receipt.replay, timeout=300))
    assert first.receipt.replay.code == code and again.image.encoded == first.image.encoded


def test_hold_auto_in_the_hold_list_is_hold_auto(stub):
    """`hold: ["auto"]` (as grpcurl or a JSON client writes it) works as hold_auto, alone or beside a name."""
    flag = edit_of("gender:to=0.9:hold=auto")
    listed = edit_of("gender:to=0.9")
    listed.hold.append("auto")
    (a,), (b,) = run(stub, 1001, flag), run(stub, 1001, listed)
    assert b.holds and [h.attribute for h in b.holds] == [h.attribute for h in a.holds]
    assert "auto" not in b.receipt.held and b.image.raw.data == a.image.raw.data
    both = edit_of("gender:to=0.9")
    both.hold.extend(["smile", "auto"])
    (c,) = run(stub, 1001, both)
    assert "smile" in c.receipt.held and "auto" not in c.receipt.held and "smile" not in {h.attribute for h in c.holds}


def test_a_corrected_hold_meets_the_target_holds_age_and_replays_exactly(stub):
    """Seed 1001: a gender edit to 0.9 ages the face by about 4 years; hold=auto takes it back with the scorer in
    the loop, along age's own direction, and the receipt replays the image from the corrected start code."""
    (frame,) = run(stub, 1001, edit_of("gender:to=0.9:hold=auto"))
    holds = {h.attribute: h for h in frame.holds}
    age = holds["age"]
    assert age.held and abs(age.drift) > age.threshold and abs(age.held_drift) <= age.threshold
    assert frame.target.met and frame.receipt.boundary.attribute.startswith("gender|")
    replay = frame.receipt.replay
    assert replay.WhichOneof("source") == "code" and replay.edits[0].start == frame.distance
    (again,) = list(stub.Edit(replay, timeout=300))
    assert again.image.raw.data == frame.image.raw.data and again.code.codes.data == frame.code.codes.data
