"""The latent spaces are spelled once: the contract's mapping, the model zoo's keys and every service agree."""

from __future__ import annotations

import pytest

from interfacegan import codec
from interfacegan.v1 import common_pb2
from models.base import SPACE_LABELS, SPACES, parse_space


def test_the_contract_maps_every_space_onto_the_model_zoo_keys():
    enums = [v for v in common_pb2.LatentSpace.values() if v != common_pb2.LATENT_SPACE_UNSPECIFIED]
    assert sorted(codec.SPACE_KEYS) == sorted(enums)
    assert tuple(codec.SPACE_KEYS.values()) == SPACES
    assert {codec.SPACE_KEYS[e]: codec.SPACE_NAMES[e] for e in enums} == SPACE_LABELS
    assert codec.SPACE_ENUMS == {key: enum for enum, key in codec.SPACE_KEYS.items()}


@pytest.mark.parametrize("text", ["Z", "w", "W+", "wp", "WP"])
def test_labels_and_keys_parse_alike_in_the_sdk_and_the_zoo(text):
    assert codec.SPACE_KEYS[codec.space_of(text)] == parse_space(text)


def test_names_for_messages():
    assert codec.space_name(common_pb2.LATENT_SPACE_WP) == "W+"
    assert codec.space_name(common_pb2.LATENT_SPACE_UNSPECIFIED) == "UNSPECIFIED"
    assert codec.space_name(42) == "42"
    with pytest.raises(ValueError, match="accepted Z, W, W\\+"):
        codec.space_of("x")


def test_services_use_the_contract_mapping():
    from services.boundary import store
    from services.common import tensors
    assert store.SPACE_KEYS is codec.SPACE_KEYS
    assert tensors.space_name is codec.space_name
