"""Generated stubs are importable as a package and match protos/ exactly (stale code is caught)."""

from __future__ import annotations

import importlib
from pathlib import Path

import interfacegan.v1

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "python" / "interfacegan" / "v1"


def _generated(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if "_pb2" in p.name}


def test_generated_code_is_up_to_date(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from gen_protos import generate
    finally:
        sys.path.pop(0)
    generate(tmp_path)
    fresh = _generated(tmp_path / "interfacegan" / "v1")
    committed = _generated(PACKAGE)
    assert fresh, "protoc produced nothing"
    stale = sorted(name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name))
    assert not stale, f"stale generated code, run `make protos`: {stale}"


def test_stubs_import_as_a_package_without_path_tricks():
    for name in ("common", "generator", "scorer", "boundary", "inversion", "editor"):
        module = importlib.import_module(f"interfacegan.v1.{name}_pb2")
        assert module.DESCRIPTOR.package == "interfacegan.v1"
        importlib.import_module(f"interfacegan.v1.{name}_pb2_grpc")
    assert Path(interfacegan.v1.__file__).parent == PACKAGE


def test_every_message_and_field_is_documented():
    """Each message, field, enum value, service and RPC in the .proto files has a comment."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    protos = ROOT / "protos"
    files = [str(p.relative_to(protos)) for p in protos.rglob("*.proto")]
    out = ROOT / ".pytest_cache" / "descriptor.pb"
    out.parent.mkdir(exist_ok=True)
    assert protoc.main(["protoc", f"-I{protos}", "--include_source_info", f"--descriptor_set_out={out}", *files]) == 0
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    missing = []
    for f in fds.file:
        commented = {tuple(loc.path) for loc in f.source_code_info.location
                     if loc.leading_comments.strip() or loc.trailing_comments.strip()}
        # Paths: 4 = message_type, 2 = field, 5 = enum_type, 6 = service, 2 (in service) = method.
        for i, msg in enumerate(f.message_type):
            for j, field in enumerate(msg.field):
                if (4, i, 2, j) not in commented:
                    missing.append(f"{f.name}: {msg.name}.{field.name}")
        for i, svc in enumerate(f.service):
            for j, method in enumerate(svc.method):
                if (6, i, 2, j) not in commented:
                    missing.append(f"{f.name}: {svc.name}.{method.name}")
    assert not missing, "undocumented: " + ", ".join(missing)

