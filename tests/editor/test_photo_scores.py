"""A photo pasted back is re-scored as the user receives it: the face in the result photo, not the render."""

from __future__ import annotations

import io

import grpc
import pytest
from PIL import Image

from interfacegan.v1 import common_pb2, editor_pb2, editor_pb2_grpc
from services.common import assets


@pytest.fixture(scope="module")
def editor(cluster):
    with grpc.insecure_channel(cluster.services["editor"].address,
                               options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        yield editor_pb2_grpc.EditorServiceStub(channel)


def _edit(editor, **fields):
    buf = io.BytesIO()
    Image.open(assets.path_of("grace_hopper.jpg")).convert("RGB").save(buf, format="PNG")
    replies = list(editor.Edit(editor_pb2.EditRequest(
        photo=common_pb2.Image(encoded=buf.getvalue()), include_original=True, rescore=True,
        edits=[editor_pb2.AttributeEdit(attribute="age", start=3.0, end=3.0, steps=1)], **fields), timeout=300))
    return ({s.attribute: round(s.value, 6) for s in replies[0].scores},
            {s.attribute: round(s.value, 6) for s in replies[1].scores})


def test_a_pasted_photo_is_scored_on_the_photo_the_user_receives(editor):
    # Tuned and untuned inversions render different reconstructions of the same face; pasting only the change,
    # the unedited result is the input photo itself either way, so its scores are the input's, equal in both.
    tuned_original, tuned_edit = _edit(editor, blend_into_photo=True)
    untuned_original, _ = _edit(editor, blend_into_photo=True, skip_tuning=True)
    assert tuned_original == untuned_original and tuned_original
    # Without pasting, the same call scores the renders: the reconstructions differ, and so do their scores.
    render_tuned, _ = _edit(editor)
    render_untuned, _ = _edit(editor, skip_tuning=True)
    assert render_tuned != render_untuned
    assert tuned_edit != tuned_original  # the edit is measured too, on its pasted result
