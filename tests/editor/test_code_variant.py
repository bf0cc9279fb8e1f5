"""A photo's code edited again with its tuned variant (EditRequest.variant): same weights, same person, replayable."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from interfacegan.v1 import common_pb2, editor_pb2, editor_pb2_grpc
from services.common import assets, images

RAW = common_pb2.IMAGE_FORMAT_RAW


def _pixels(image: common_pb2.Image) -> np.ndarray:
    return images.decode(image, "image", max_pixels=1 << 24)


@pytest.fixture(scope="module")
def editor(cluster):
    with grpc.insecure_channel(cluster.services["editor"].address,
                               options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        yield editor_pb2_grpc.EditorServiceStub(channel)


@pytest.fixture(scope="module")
def photo_edit(editor):
    buf = io.BytesIO()
    Image.open(assets.path_of("astronaut.png")).convert("RGB").save(buf, format="PNG")
    replies = list(editor.Edit(editor_pb2.EditRequest(
        photo=common_pb2.Image(encoded=buf.getvalue()), include_original=True, format=RAW, rescore=True,
        edits=[editor_pb2.AttributeEdit(attribute="age", start=2.0, end=2.0, steps=1)]), timeout=300))
    original = next(r for r in replies if r.edit_index == -1)
    edited = next(r for r in replies if r.edit_index == 0)
    assert original.variant and edited.variant == original.variant
    return original, edited


def test_a_code_with_its_variant_renders_what_the_photo_edit_rendered(editor, photo_edit):
    original, edited = photo_edit
    code_edits = list(editor.Edit(editor_pb2.EditRequest(
        code=original.code, variant=original.variant, include_original=True, format=RAW, rescore=True,
        edits=[editor_pb2.AttributeEdit(attribute="age", start=2.0, end=2.0, steps=1)]), timeout=120))
    again, moved = code_edits[0], code_edits[1]
    # The same code by the same tuned weights: the photo's reconstruction and its edit, pixel for pixel.
    np.testing.assert_array_equal(_pixels(again.image), _pixels(original.image))
    np.testing.assert_array_equal(_pixels(moved.image), _pixels(edited.image))
    assert moved.receipt.variant == original.variant and moved.receipt.replay.variant == original.variant
    replayed = list(editor.Edit(moved.receipt.replay, timeout=120))
    np.testing.assert_array_equal(_pixels(replayed[0].image), _pixels(moved.image))
    # The base weights render the same code as another face: the variant is what keeps the person.
    base = list(editor.Edit(editor_pb2.EditRequest(code=original.code, include_original=True, format=RAW),
                            timeout=120))[0]
    assert np.abs(_pixels(base.image).astype(int) - _pixels(original.image).astype(int)).mean() > 1.0


def test_variant_refusals(editor, photo_edit):
    original, _ = photo_edit
    edit = [editor_pb2.AttributeEdit(attribute="age", start=1.0, end=1.0, steps=1)]
    cases = [
        (editor_pb2.EditRequest(code=original.code, variant="not-a-variant\n", edits=edit),
         grpc.StatusCode.INVALID_ARGUMENT, "is not a variant id"),
        (editor_pb2.EditRequest(seed=3, variant=original.variant, edits=edit),
         grpc.StatusCode.INVALID_ARGUMENT, "only a code is rendered with a given variant"),
        (editor_pb2.EditRequest(code=original.code, variant=original.variant[:-6] + "000000", edits=edit),
         grpc.StatusCode.FAILED_PRECONDITION, "no longer in the variant store"),
    ]
    for request, status, words in cases:
        with pytest.raises(grpc.RpcError) as err:
            list(editor.Edit(request, timeout=60))
        assert err.value.code() == status, err.value.details()
        assert words in err.value.details()
