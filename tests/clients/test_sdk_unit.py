"""SDK pieces that need no server: edit specs, requests, codecs, channel options, grids, progress, catalog files."""

from __future__ import annotations

import ast
import io
import json
import time
import tomllib
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from interfacegan import EditSpec, channel, codec
from interfacegan.catalog import Journal, atomic_write, discover, safe_name
from interfacegan.edits import build_edit_request
from interfacegan.grid import make_grid
from interfacegan.progress import ProgressBar
from interfacegan.v1 import boundary_pb2, common_pb2, editor_pb2
from services.common import runtime
from services.common.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "clients" / "python"


def test_edit_spec_parsing_covers_the_documented_forms():
    assert EditSpec.parse("age") == EditSpec("age", -3.0, 3.0, 10)  # interfacegan.defaults
    assert EditSpec.parse("age:2") == EditSpec("age", 2.0, 2.0, 1)
    assert EditSpec.parse("smile:-1.5:2") == EditSpec("smile", -1.5, 2.0, 10)
    spec = EditSpec.parse("gender:-3:3:5:hold=age+yaw:mode=absolute:version=2:layers=0-4")
    assert spec == EditSpec("gender", -3, 3, 5, "absolute", ("age", "yaw"), 2, (0, 4))
    assert spec.label == "gender|age|yaw"
    assert np.allclose(spec.distances, [-3, -1.5, 0, 1.5, 3])
    proto = spec.to_proto()
    assert (proto.mode, list(proto.hold), proto.layer_end, proto.boundary_version) == (
        boundary_pb2.DISTANCE_MODE_ABSOLUTE, ["age", "yaw"], 4, 2)
    for bad in ("age:1:2:3:4", "age:x", "age:0:1:999", "age:mode=sideways", "age:color=red", ":1", "age:nan:1"):
        with pytest.raises(ValueError) as err:
            EditSpec.parse(bad)
        assert "ATTR[:START:END[:STEPS]]" in str(err.value) or "accepted" in str(err.value) or "attribute" in str(err.value)


def test_edit_requests_for_each_kind_of_source(tmp_path):
    seed = build_edit_request(7, ["age", "gender:-1:1:3:hold=age"], rescore=True, include_original=True)
    assert seed.WhichOneof("source") == "seed" and seed.seed == 7 and len(seed.edits) == 2 and seed.rescore
    assert len(seed.request_id) == 32
    code = build_edit_request(np.arange(100, dtype=np.float64), "age")
    assert code.WhichOneof("source") == "code" and list(code.code.codes.shape) == [1, 100]
    assert code.code.space == common_pb2.LATENT_SPACE_Z
    wp = build_edit_request(np.zeros((1, 14, 512), np.float32), "age")
    assert wp.code.space == common_pb2.LATENT_SPACE_WP
    pixels = np.full((40, 30, 3), 120, np.uint8)
    path = tmp_path / "face.png"
    Image.fromarray(pixels).save(path)
    for photo in (path, str(path), path.read_bytes(), pixels, Image.fromarray(pixels)):
        request = build_edit_request(photo, "age", blend=True, image_format="jpeg")
        assert request.WhichOneof("source") == "photo" and request.blend_into_photo
        assert request.format == common_pb2.IMAGE_FORMAT_JPEG
        assert np.array_equal(codec.image_array(request.photo), pixels)
    assert not request.HasField("change_smoothing")  # unset: the server's default
    assert build_edit_request(pixels, "age", blend=True, change_smoothing=0).HasField("change_smoothing")
    with pytest.raises(ValueError, match="change_smoothing"):
        build_edit_request(7, "age", change_smoothing=0.01)
    with pytest.raises(ValueError):
        build_edit_request(-1, "age")
    with pytest.raises(TypeError):
        build_edit_request(True, "age")
    with pytest.raises(ValueError):
        build_edit_request(1, [])


def test_codec_round_trips():
    a = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    assert np.array_equal(codec.array(codec.tensor(a)), a)
    raw = common_pb2.Image(raw=common_pb2.RawImage(height=2, width=3, channels=1, data=bytes(range(6))))
    assert codec.image_array(raw).shape == (2, 3, 3)
    png = codec.image_bytes(raw)
    assert Image.open(io.BytesIO(png)).size == (3, 2)
    assert codec.space_of("w+") == common_pb2.LATENT_SPACE_WP and codec.space_of(None) == 0
    with pytest.raises(ValueError):
        codec.space_of("q")


def test_channel_keepalive_agrees_with_the_servers_and_retries_only_idempotent_methods():
    client = dict(channel.channel_options())
    server = dict(runtime.server_options(ServerSettings()))
    # The client pings no more often than the server tolerates, and the server's own pings are slower.
    assert client["grpc.keepalive_time_ms"] >= server["grpc.http2.min_ping_interval_without_data_ms"]
    assert client["grpc.keepalive_timeout_ms"] <= client["grpc.keepalive_time_ms"]
    assert client["grpc.max_receive_message_length"] == ServerSettings().max_message_bytes
    with pytest.raises(ValueError):
        channel.channel_options(channel.ChannelConfig(keepalive_seconds=5))
    config = json.loads(client["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    policy = config["methodConfig"][0]
    assert policy["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    named = {(n["service"].rsplit(".", 1)[1], n["method"]) for n in policy["name"]}
    assert ("BoundaryService", "ImportBoundary") not in named and ("BoundaryService", "TrainBoundaries") not in named
    assert ("EditorService", "Edit") in named
    # Every method named exists in the API.
    from interfacegan.v1 import generator_pb2, inversion_pb2, scorer_pb2
    methods = {(s.name, m.name) for f in (editor_pb2, boundary_pb2, generator_pb2, scorer_pb2, inversion_pb2)
               for s in f.DESCRIPTOR.services_by_name.values() for m in s.methods}
    assert named <= methods
    # A request up to the largest message stays retryable (gRPC's default keeps 256 KiB: a photo was not).
    assert client["grpc.per_rpc_retry_buffer_size"] >= client["grpc.max_send_message_length"]
    off = json.loads(dict(channel.channel_options(channel.ChannelConfig(retry=None)))["grpc.service_config"])
    assert "methodConfig" not in off
    assert channel.split_addresses(" a:1, b:2 ,") == ["a:1", "b:2"]
    with pytest.raises(ValueError):
        channel.split_addresses(" , ")
    assert channel.credentials(channel.ChannelConfig()) is None
    assert channel.credentials(channel.ChannelConfig(tls=True)) is not None
    assert channel.auth_metadata("t") == (("authorization", "Bearer t"),)


def test_large_requests_survive_the_servers_connection_renewal():
    """Servers renew connections (max_connection_age); a GOAWAY can race the next call on the old connection.
    The channel retries such a call, also when its request is a photo of several hundred KiB: here a server
    renews every 20 ms while 800 KiB requests stream in, and no call reaches the caller as UNAVAILABLE."""
    from concurrent import futures

    def edit(request, context):
        yield b"frame"

    server = grpc.server(futures.ThreadPoolExecutor(4), options=[
        ("grpc.max_connection_age_ms", 20), ("grpc.max_connection_age_grace_ms", 60_000),
        ("grpc.max_receive_message_length", 16 << 20)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "interfacegan.v1.EditorService", {"Edit": grpc.unary_stream_rpc_method_handler(edit)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    failures, calls = [], 0
    try:
        with channel.secure_channel(f"127.0.0.1:{port}") as chan:
            call = chan.unary_stream("/interfacegan.v1.EditorService/Edit")
            photo = bytes(800 << 10)
            end = time.monotonic() + 4
            while time.monotonic() < end:
                calls += 1
                try:
                    assert list(call(photo, timeout=10)) == [b"frame"]
                except grpc.RpcError as e:
                    failures.append(f"{e.code().name}: {e.details()}")
    finally:
        server.stop(0)
    assert calls > 200 and not failures, (calls, failures[:3])


def test_the_sdk_needs_only_grpcio_protobuf_numpy_and_pillow():
    project = tomllib.loads((SDK / "pyproject.toml").read_text())["project"]
    names = sorted(d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"])
    assert names == ["grpcio", "numpy", "pillow", "protobuf"]
    assert project["scripts"]["ifgan"] == "interfacegan.cli:main"
    allowed = {"grpc", "google", "numpy", "PIL", "interfacegan", "tqdm", "services"}
    for path in (SDK / "interfacegan").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                import sys
                assert top in sys.stdlib_module_names or top in allowed, f"{path.name} imports {top}"
                if top in ("tqdm", "services"):
                    # Optional imports only: inside a function, guarded by ImportError.
                    assert node.col_offset > 0, f"{path.name} imports {top} at module level"


def test_grid_and_progress_bar(capsys):
    tiles = [[np.full((8, 8, 3), v, np.uint8) for v in (0, 128, 255)], [np.zeros((8, 8, 3), np.uint8)]]
    grid = make_grid(tiles, row_labels=["first", "second"], captions=[["a", "b", "c"], ["d"]], scale=3,
                     title="title")
    assert grid.width > 3 * 24 and grid.height > 2 * 24
    with pytest.raises(ValueError):
        make_grid([])
    out = io.StringIO()
    bar = ProgressBar(10, "test", "x", file=out)
    bar._tqdm = None  # the plain bar the SDK draws without tqdm
    for _ in range(10):
        bar.update()
    bar.set_postfix("done")
    bar.close()
    assert "10/10" in out.getvalue() and "done" in out.getvalue()


def test_catalog_discovery_journal_and_atomic_writes(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("b.png", "a.JPG", "sub/c.jpeg", "notes.txt", ".hidden.png"):
        (tmp_path / "in" / name).write_bytes(b"x")
    assert [p.id for p in discover(tmp_path / "in")] == ["a.JPG", "b.png", "sub/c.jpeg"]
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("id,path\none,in/b.png\ntwo,/abs/x.jpg\n")
    photos = discover(csv_path)
    assert [(p.id, p.path) for p in photos] == [("one", tmp_path / "in" / "b.png"), ("two", Path("/abs/x.jpg"))]
    csv_path.write_text("id,path\none,a.png\none,b.png\n")
    with pytest.raises(ValueError, match="repeats"):
        discover(csv_path)
    csv_path.write_text("name\nx\n")
    with pytest.raises(ValueError, match="path column"):
        discover(csv_path)
    with pytest.raises(ValueError):
        discover(tmp_path / "in" / "notes.txt")

    journal = Journal(tmp_path / "journal.jsonl")
    journal.append({"id": "a", "status": "failed", "code": "UNAVAILABLE", "error": "x"})
    journal.append({"id": "a", "status": "done", "outputs": []})
    with open(tmp_path / "journal.jsonl", "ab") as f:
        f.write(b'{"id": "b", "status": "do')  # a line cut by a crash
    again = Journal(tmp_path / "journal.jsonl")
    assert again.records == {"a": {"id": "a", "status": "done", "outputs": []}}

    target = tmp_path / "out" / "x.bin"
    atomic_write(target, b"1" * 1000)
    atomic_write(target, b"2")
    assert target.read_bytes() == b"2" and [p.name for p in target.parent.iterdir()] == ["x.bin"]
    assert safe_name("gender|age|yaw") == "gender-hold-age+yaw" and safe_name("../x y") == "x_y"


def test_priority_lane_metadata_agrees_with_the_servers():
    from interfacegan import Client, _requests as rq
    from services.common.batching import LANE_METADATA, LANES

    assert (rq.PRIORITY_METADATA, rq.PRIORITIES) == (LANE_METADATA, LANES)
    assert rq.metadata("t", "r1", "bulk") == (("authorization", "Bearer t"), (LANE_METADATA, "bulk"),
                                             ("x-request-id", "r1"))
    assert rq.metadata(None, "", "") == ()
    with pytest.raises(ValueError, match="accepted: interactive, bulk"):
        Client("127.0.0.1:1", priority="urgent")
    with Client("127.0.0.1:1", priority="bulk") as client:
        assert dict(client._md("r"))[LANE_METADATA] == "bulk"
        assert dict(client._md("r", "interactive"))[LANE_METADATA] == "interactive"  # a call's own lane wins


def test_photo_options_use_the_request_names_and_are_checked_on_the_client(tmp_path):
    from interfacegan.edits import face_selection_of, parse_face_indices
    from interfacegan.v1 import inversion_pb2
    photo = np.full((40, 30, 3), 120, np.uint8)
    request = build_edit_request(photo, "age", blend=True, face_selection="all", skip_tuning=True,
                                 paste_whole_face=True)
    assert (request.face_selection, request.skip_tuning, request.paste_whole_face) == (
        inversion_pb2.FACE_SELECTION_ALL, True, True)
    picked = build_edit_request(photo, "age", face_indices=[2, 0])
    assert picked.face_selection == inversion_pb2.FACE_SELECTION_INDICES and list(picked.face_indices) == [2, 0]
    assert build_edit_request(photo, "age").face_selection == inversion_pb2.FACE_SELECTION_UNSPECIFIED
    assert face_selection_of("Largest") == (inversion_pb2.FACE_SELECTION_LARGEST, [])
    assert parse_face_indices("0, 2") == [0, 2]
    for kwargs, words in [({"face_selection": "some"}, "accepted"), ({"face_selection": "indices"}, "needs"),
                          ({"face_selection": "all", "face_indices": [1]}, "alone"),
                          ({"face_indices": [-1]}, "numbered")]:
        with pytest.raises(ValueError, match=words):
            build_edit_request(photo, "age", **kwargs)
    with pytest.raises(ValueError, match="photo options"):
        build_edit_request(7, "age", paste_whole_face=True)
    with pytest.raises(ValueError, match="commas"):
        parse_face_indices("0;2")
    # One name per concept: the SDK's photo options are the request's fields.
    import inspect
    from interfacegan import Client
    fields = set(editor_pb2.EditRequest.DESCRIPTOR.fields_by_name)
    options = {"face_selection", "face_indices", "skip_tuning", "paste_whole_face"}
    assert options <= fields and options <= set(inspect.signature(Client.edit).parameters)
    assert options <= set(inspect.signature(build_edit_request).parameters)


def test_a_photo_grid_shows_the_input_as_original_and_the_reconstruction_apart():
    from interfacegan.edits import EditFrame, collect
    photo = np.zeros((120, 90, 3), np.uint8)
    photo[:, :45] = 255
    request = build_edit_request(photo, "age:-1:1:2", blend=True, include_original=True, include_face=True)

    def frame(edit: int, step: int, image: np.ndarray, face: np.ndarray, distance: float = 0.0) -> EditFrame:
        m = editor_pb2.EditResponse(edit_index=edit, step_index=step, distance=distance, blend_mode="change",
                                    image=codec.image_message(image), face=codec.image_message(face),
                                    identity_distance=0.0 if edit < 0 else 0.3)
        m.faces.add(index=0, box=[10, 20, 40, 40], reconstruction_psnr=31.0, identity_distance=m.identity_distance)
        return EditFrame.of(m)

    render = np.full((64, 64, 3), 77, np.uint8)
    frames = [frame(-1, 0, photo, render), frame(0, 0, photo + 1, render, -1), frame(0, 1, photo + 2, render, 1)]
    result = collect([EditSpec.parse("age:-1:1:2")], frames, request)
    assert np.array_equal(result.photo, photo) and np.array_equal(result.reconstruction, render)
    assert [f.index for f in result.faces] == [0] and result.edit(0)[1].identity_distance == pytest.approx(0.3)
    grid = np.asarray(result.grid(scale=1, labels=False))
    # Four tiles of the photo's size: the input, the reconstruction fitted into it, then the two edits.
    assert grid.shape[1] >= 4 * 90 and np.array_equal(grid[4:124, 4:94], photo)
    assert (grid[4:124, 98:188] == 77).mean() > 0.5  # the render, scaled up, not the input again
    seed = collect([EditSpec.parse("age:1")], [frame(-1, 0, render, render), frame(0, 0, render, render, 1)])
    assert seed.photo is None and np.array_equal(seed.reconstruction, render)
