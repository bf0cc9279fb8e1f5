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


BATCH_FLAGS = ["--max-batch-size", "--max-queue-size", "--max-queue-delay-microseconds", "--preferred-batch-sizes",
               "--default-timeout-microseconds", "--instances", "--prefetch-batches"]


def _batching_services():
    from services.generator.server import Settings as GeneratorSettings
    from services.inversion.server import Settings as InversionSettings
    from services.scorer.server import Settings as ScorerSettings
    return GeneratorSettings, ScorerSettings, InversionSettings


def test_batching_services_share_one_batch_settings_group(monkeypatch):
    generator, scorer, inversion = _batching_services()
    for cls in (generator, scorer):
        text = cls.parser().format_help()
        for flag in BATCH_FLAGS:
            env = "IFGAN_" + flag[2:].replace("-", "_").upper()
            assert flag in text and env in text, (cls.service_name, flag)
    # Continuous batching (inversion) forms no batches to wait for: only the size and queue settings apply.
    text = inversion.parser().format_help()
    assert "--max-batch-size" in text and "--max-queue-size" in text and "--instances" not in text
    for cls in (generator, scorer, inversion):  # the old spellings are gone everywhere
        names = {f for f in vars(cls.load([]))}
        assert not names & {"max_batch_delay_ms", "max_queue_requests", "batch_instances", "max_batch", "max_queue"}
    # Defaults kept from before the group: generator 0 (auto)/2000 us/512/1 instance, scorer 64/5 ms/256/2,
    # inversion 32/64.
    config = scorer.load([]).batching_config()
    assert (config.max_batch_size, config.max_queue_delay_microseconds, config.max_queue_size,
            config.instances, config.prefetch_batches) == (64, 5000, 256, 2, 1)
    g = generator.load([])
    assert (g.max_batch_size, g.max_queue_delay_microseconds, g.max_queue_size, g.instances) == (0, 2000, 512, 1)
    assert (inversion.load([]).max_batch_size, inversion.load([]).max_queue_size) == (32, 64)
    # Same environment names and precedence everywhere; one unit (microseconds).
    monkeypatch.setenv("IFGAN_MAX_QUEUE_DELAY_MICROSECONDS", "750")
    monkeypatch.setenv("IFGAN_MAX_QUEUE_SIZE", "9")
    for cls in (generator, scorer):
        config = cls.load(["--instances", "3", "--preferred-batch-sizes", "2,4"]).batching_config(max_batch_size=8)
        assert (config.max_queue_delay_microseconds, config.max_queue_size, config.instances,
                config.preferred_batch_sizes) == (750, 9, 3, (2, 4))
    assert inversion.load([]).max_queue_size == 9
    with pytest.raises(ValueError, match="max_batch_size must be within 1..4096"):
        scorer.load(["--max-batch-size", "0"])  # only the generator reads 0 as "auto"
    with pytest.raises(ValueError, match="preferred_batch_sizes"):
        scorer.load(["--preferred-batch-sizes", "128"])


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
