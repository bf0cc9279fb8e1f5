"""Studio server: the page over HTTP (aiohttp, in the gRPC server's event loop), health and StudioService over gRPC."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import ssl

import grpc
from aiohttp import web

from interfacegan.v1 import editor_pb2_grpc, studio_pb2, studio_pb2_grpc
from services.common.settings import ServerSettings, setting
from services.common.upstream import Upstream

from .web import make_app
from .workspace import Workspace

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Settings(ServerSettings):
    """Studio settings: the page's port and access, upload limits, caches, the editor it talks to."""

    editor_address: str = setting("127.0.0.1:50051", "the editor the page talks to (host:port or a target URI such "
                                                      "as dns:///editor:50051); called with --auth-token and TLS")
    http_port: int = setting(8080, "HTTP port of the page, on --host; 0 picks a free one (logged, and returned by "
                                   "StudioService.GetStudioInfo)")
    page_token: str = setting("", "token the page asks for (open it once as /?token=TOKEN, or send 'Authorization: "
                                  "Bearer TOKEN'); empty: the cluster's --auth-token; no token at all: an open page, "
                                  "refused on a non-loopback --host unless --open-page", secret=True)
    open_page: bool = setting(False, "serve the page without a token on a non-loopback --host (a public, open studio)")
    max_upload_mb: float = setting(8.0, "largest photo upload, MB")
    max_upload_megapixels: float = setting(24.0, "largest photo upload, megapixels (width x height / 1e6)")
    call_timeout: float = setting(60.0, "seconds one editor call may take (a photo's inversion is the longest)")
    catalog_seconds: float = setting(5.0, "seconds the editor's catalog is reused before it is asked again")
    max_sources: int = setting(64, "faces remembered (seeds and uploaded photos: code, unedited render, scores), "
                                   "least recent dropped first; a 1024 px model's render is about 2 MB")
    max_codes: int = setting(1024, "codes of slider combinations remembered, so a drag costs one edit (a W+ code "
                                   "of a 1024 px StyleGAN is 36 KB)")
    slider_range: float = setting(3.0, "sliders span -range .. +range (distance along the boundary's unit normal)")
    max_distance: float = setting(10.0, "largest |distance| a request may ask for")
    max_grid_steps: int = setting(9, "most images in one grid")

    service_name = "studio"

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.http_port <= 65535:
            raise ValueError(f"http_port must be within 0..65535, got {self.http_port}")
        if not 0 < self.max_upload_mb <= 256 or not 0 < self.max_upload_megapixels <= 400:
            raise ValueError("max_upload_mb must be within (0, 256] and max_upload_megapixels within (0, 400]")
        if not 0 < self.slider_range <= self.max_distance:
            raise ValueError(f"slider_range must be within (0, max_distance={self.max_distance}]")
        if not 2 <= self.max_grid_steps <= 64 or self.max_sources < 1 or self.max_codes < 1:
            raise ValueError("max_grid_steps must be within 2..64, max_sources and max_codes at least 1")
        if not (self.token or self.open_page or is_loopback(self.host)):
            raise ValueError(f"the page would be open to anyone on {self.host}: set a token (--page-token or "
                             f"--auth-token), bind 127.0.0.1, or pass --open-page to mean it")

    @property
    def token(self) -> str:
        """The token the page asks for ("" = none)."""
        return self.page_token or self.auth_token

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    @property
    def max_upload_pixels(self) -> int:
        return int(self.max_upload_megapixels * 1_000_000)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class StudioService(studio_pb2_grpc.StudioServiceServicer):
    """Runs the page's web server next to the runtime's gRPC server (health, metrics, GetStudioInfo)."""

    service_names = ("interfacegan.v1.StudioService",)

    def __init__(self, settings: Settings):
        self.settings = settings
        self.editor: Upstream | None = None
        self.workspace: Workspace | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    def register(self, server: grpc.aio.Server) -> None:
        # Channels are made here, inside the server's event loop.
        s = self.settings
        self.editor = Upstream("editor", s.editor_address, editor_pb2_grpc.EditorServiceStub, s)
        self.workspace = Workspace(self.editor, s)
        studio_pb2_grpc.add_StudioServiceServicer_to_server(self, server)

    async def load(self) -> None:
        s = self.settings
        tls = None
        if s.tls_cert:  # the page speaks HTTPS with the certificate the gRPC port uses
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(s.tls_cert, s.tls_key)
        self._runner = web.AppRunner(make_app(self.workspace, s), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, s.http_port, ssl_context=tls, shutdown_timeout=s.grace_seconds)
        await site.start()
        port = self._runner.addresses[0][1]  # the bound port when http_port is 0
        host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
        self.url = f"{'https' if tls else 'http'}://{host}:{port}/"
        log.info("page", extra={"url": self.url, "token_required": bool(s.token), "editor": s.editor_address})

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self.editor is not None:
            await self.editor.close()

    async def GetStudioInfo(self, request: studio_pb2.GetStudioInfoRequest, context) -> studio_pb2.StudioInfo:
        s = self.settings
        return studio_pb2.StudioInfo(url=self.url, token_required=bool(s.token), max_upload_bytes=s.max_upload_bytes,
                                     max_upload_pixels=s.max_upload_pixels, editor_address=s.editor_address)
