"""Settings precedence (flags > environment > defaults) and checksummed model assets."""

from __future__ import annotations

import shutil

import pytest

from services.common import assets
from services.common.settings import ServerSettings


def test_defaults_environment_and_flags(monkeypatch):
    assert ServerSettings.load([]).max_message_mb == 16
    monkeypatch.setenv("IFGAN_MAX_MESSAGE_MB", "32")
    monkeypatch.setenv("IFGAN_HOST", "0.0.0.0")
    settings = ServerSettings.load(["--max-message-mb", "8"])
    assert settings.max_message_mb == 8  # the flag wins
    assert settings.host == "0.0.0.0"  # the environment fills what flags leave
    assert settings.max_message_bytes == 8 * 1024 * 1024


def test_bad_environment_value_is_named(monkeypatch):
    monkeypatch.setenv("IFGAN_PORT", "eighty")
    with pytest.raises(ValueError, match="IFGAN_PORT='eighty' is not a valid int"):
        ServerSettings.load([])


def test_secrets_are_masked_in_logs_and_help(monkeypatch):
    monkeypatch.setenv("IFGAN_AUTH_TOKEN", "s3cret-token")
    settings = ServerSettings.load([])
    assert settings.auth_token == "s3cret-token"
    assert "s3cret-token" not in repr(settings.public_dict())
    assert "s3cret-token" not in ServerSettings.parser().format_help()


def test_help_shows_defaults_and_environment_names():
    text = ServerSettings.parser().format_help()
    assert "IFGAN_MAX_MESSAGE_MB" in text and "(default: 16)" in text


def test_cached_model_files_are_verified(models_dir):
    for name in assets.ASSETS:
        assert assets.path_of(name).stat().st_size > 0


def test_altered_model_file_is_refused_naming_both_checksums(models_dir, tmp_path):
    name = "gender-v1.onnx"
    shutil.copy(models_dir / name, tmp_path / name)
    with open(tmp_path / name, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    actual = assets.sha256_of(tmp_path / name)
    for call in (lambda: assets.path_of(name, tmp_path), lambda: assets.fetch([name], tmp_path)):
        with pytest.raises(assets.ChecksumError) as err:
            call()
        message = str(err.value)
        assert name in message and actual in message and assets.ASSETS[name].sha256 in message


def test_missing_model_file_says_how_to_fetch(tmp_path):
    with pytest.raises(FileNotFoundError, match="services.common.assets fetch"):
        assets.path_of("age-v1.onnx", tmp_path)


def test_fetch_downloads_extracts_and_verifies(tmp_path):
    paths = assets.fetch(["face_landmark.tflite"], tmp_path)
    assert assets.sha256_of(paths["face_landmark.tflite"]) == assets.ASSETS["face_landmark.tflite"].sha256
    assert not list(tmp_path.glob(".*partial"))
