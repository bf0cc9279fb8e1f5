"""The SDK/CLI grammar of edits in the attribute's unit: parsing, the request it builds, errors, --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from interfacegan import defaults
from interfacegan.catalog import safe_name
from interfacegan.edits import GRAMMAR, EditSpec, build_edit_request


@pytest.mark.parametrize("text, fields", [
    ("age:+10y", dict(delta=10.0, unit="years", to=None)),
    ("age:-10y", dict(delta=-10.0, unit="years")),
    ("age:to=70", dict(to=70.0, delta=None, unit="")),
    ("yaw:to=20", dict(to=20.0)),
    ("yaw:to=-20deg", dict(to=-20.0, unit="degrees")),
    ("smile:to=0.8", dict(to=0.8)),
    ("gender:to=0.9:hold=auto", dict(to=0.9, hold=(), hold_auto=True)),
    ("gender:to=0.9:hold=age+auto", dict(hold=("age",), hold_auto=True)),
    ("age:+10y:tol=1:max=6:rounds=3", dict(tolerance=1.0, max_distance=6.0, rounds=3)),
    ("age:delta=5", dict(delta=5.0)),
])
def test_target_forms(text, fields):
    spec = EditSpec.parse(text)
    assert spec.is_target and spec.steps == 1 and spec.start == spec.end == 0
    for key, value in fields.items():
        assert getattr(spec, key) == value, key


def test_plain_numbers_stay_distances_and_hold_auto_works_on_them():
    assert EditSpec.parse("age:2") == EditSpec("age", 2.0, 2.0, 1) and not EditSpec.parse("age:2").is_target
    assert EditSpec.parse("age:1e-3").start == 0.001
    spec = EditSpec.parse("gender:-2:2:5:hold=auto")
    assert not spec.is_target and spec.hold_auto and spec.hold == () and spec.steps == 5


def test_the_request_carries_the_target_fields():
    request = build_edit_request(7, ["age:+10y:tol=1", "gender:to=0.9:hold=auto", "yaw:-3:3:5"])
    age, gender, yaw = request.edits
    assert age.WhichOneof("target") == "delta" and age.delta == 10 and age.unit == "years" and age.tolerance == 1
    assert age.steps == 0 and age.start == age.end == 0 and age.mode == 0  # the server wants them unset
    assert gender.WhichOneof("target") == "to" and gender.to == 0.9 and gender.hold_auto and not gender.hold
    assert yaw.WhichOneof("target") is None and (yaw.start, yaw.end, yaw.steps) == (-3, 3, 5)


def test_labels_name_the_target_and_make_file_names():
    assert EditSpec.parse("age:+10y").label == "age+10"
    assert EditSpec.parse("gender:to=0.9:hold=auto").label == "gender@0.9|auto"
    assert safe_name(EditSpec.parse("yaw:to=-20").label) == "yaw_-20"


@pytest.mark.parametrize("bad, message", [
    ("age:+10q", "unknown unit"),
    ("age:to=x", "not a number"),
    ("age:to=1:delta=2", "not both"),
    ("age:to=nan", "not a number"),
    ("age:+10y:rounds=99", "rounds"),
])
def test_bad_targets_say_what_is_accepted(bad, message):
    with pytest.raises(ValueError) as err:
        EditSpec.parse(bad)
    assert message in str(err.value) and "age:+10y" in str(err.value)  # the grammar's examples come along


def test_edit_help_shows_the_grammar():
    done = subprocess.run([sys.executable, "-m", "interfacegan.cli", "edit", "--help"], capture_output=True,
                          text=True, timeout=60, env={"COLUMNS": "400", "PATH": ""})
    assert done.returncode == 0
    for form in ("age:+10y", "age:to=70", "yaw:to=20", "smile:to=0.8", "gender:to=0.9:hold=auto"):
        assert form in done.stdout and form in GRAMMAR
    catalog = subprocess.run([sys.executable, "-m", "interfacegan.cli", "catalog", "--help"], capture_output=True,
                             text=True, timeout=60, env={"COLUMNS": "400", "PATH": ""})
    assert "gender:to=0.9:hold=auto" in catalog.stdout  # the catalog tool takes the same edits
    assert set(defaults.UNIT_SUFFIXES.values()) == set(defaults.TOLERANCE) == set(defaults.HOLD_THRESHOLD)
