"""The page's HTTP side: static files, the JSON API, token access, upload limits, security headers, metrics."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import math
import secrets
import time
import warnings
from pathlib import Path

from aiohttp import web
from PIL import Image as PILImage

from services.common import metrics
from services.common.errors import ServiceError

from .workspace import Workspace, http_status

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
FILES = {"studio.js": "text/javascript", "studio.css": "text/css"}
COOKIE = "ifgan_studio"
#: The page runs only its own script and style; images are data: URLs (renders) or blob: URLs (the photo picked).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
MAX_JSON_BYTES = 64 * 1024
PHOTO_FORMATS = ("PNG", "JPEG")


def make_app(workspace: Workspace, settings) -> web.Application:
    """The aiohttp application of the page."""
    token = settings.token
    # The session cookie proves the token was given once; it is worthless after a restart (a fresh key).
    session = hmac.new(secrets.token_bytes(32), token.encode(), hashlib.sha256).hexdigest() if token else ""

    @web.middleware
    async def middleware(request: web.Request, handler):
        """Access (token), errors as JSON with what is accepted, security headers, metrics: for every request."""
        route = request.match_info.route.resource
        name = f"{request.method} {route.canonical if route else 'unmatched'}"
        started = time.perf_counter()
        try:
            response = await admit(request) or await handler(request)
        except web.HTTPException as e:  # aiohttp's own: no such route, method not allowed
            response = error_response(e.status, e.reason, "NOT_FOUND" if e.status == 404 else "INVALID_ARGUMENT")
        except Refused as e:
            response = error_response(e.status, e.message, e.code)
        except ServiceError as e:
            response = error_response(http_status(e), e.message, e.code.name, e.retry_after)
            if response.status >= 500:
                log.warning("editor call failed", extra={"route": name, "status": response.status, "error": e.message})
        except Exception as e:  # noqa: BLE001 - answered as 500, the page stays up
            log.exception("unhandled error", extra={"route": name})
            response = error_response(500, f"internal error in the studio: {type(e).__name__}", "INTERNAL")
        headers = response.headers
        headers.setdefault("Content-Security-Policy", CSP)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "no-referrer")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Cache-Control", "no-store")
        metrics.REQUESTS.labels("studio", name, str(response.status)).inc()
        metrics.LATENCY.labels("studio", name).observe(time.perf_counter() - started)
        return response

    async def admit(request: web.Request) -> web.Response | None:
        """None when the request may go on; else the answer: a login page, a 401, or the redirect that sets
        the session cookie after /?token=TOKEN."""
        if not token or request.path == "/healthz" or request.path.startswith("/static/") or authorized(request):
            return None  # probes and the page's static files need no token (the login page uses the style)
        given = request.query.get("token", "")
        if request.method == "GET" and request.path == "/" and given:
            if not hmac.compare_digest(given.encode(), token.encode()):
                return login_page(401, "That token is not the studio's token.")
            # The token leaves the address bar: the page goes on with a session cookie.
            response = web.Response(status=303, headers={"Location": "/"})
            response.set_cookie(COOKIE, session, httponly=True, samesite="Strict", path="/", secure=request.secure)
            return response
        if request.path.startswith("/api/"):
            return error_response(401, "this studio asks for a token: send 'Authorization: Bearer TOKEN', or open "
                                       "the page once as /?token=TOKEN", "UNAUTHENTICATED")
        return login_page(401, "")

    def authorized(request: web.Request) -> bool:
        bearer = request.headers.get("Authorization", "")
        if bearer and hmac.compare_digest(bearer.encode(), f"Bearer {token}".encode()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), session.encode())

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=(STATIC / "index.html").read_bytes(), content_type="text/html", charset="utf-8")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in FILES:
            raise web.HTTPNotFound(text="no such file")
        return web.Response(body=(STATIC / name).read_bytes(), content_type=FILES[name], charset="utf-8")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "SERVING"})

    async def catalog(request: web.Request) -> web.Response:
        q = request.query
        return reply(await workspace.describe(q.get("model", ""), q.get("space", ""), fresh=q.get("fresh") == "1"))

    async def boundary(request: web.Request) -> web.Response:
        q = request.query
        described = await workspace.describe(q.get("model", ""), q.get("space", ""))
        for slider in described["sliders"]:
            if slider["attribute"] == q.get("attribute"):
                return reply(slider["boundary"])
        raise Refused(404, f"no boundary {q.get('attribute', '')!r:.80} for model {described['model']} in "
                           f"{described['space']}; there are: {', '.join(s['attribute'] for s in described['sliders'])}",
                      "NOT_FOUND")

    async def source(request: web.Request) -> web.Response:
        body = await json_body(request)
        found = await workspace.seed(body.get("model", ""), body.get("space", ""), body.get("seed"))
        return reply(found.public())

    async def photo(request: web.Request) -> web.Response:
        data = await photo_upload(request, settings.max_upload_bytes, settings.max_upload_pixels)
        q = request.query
        face = q.get("face", "0")
        found = await workspace.photo(q.get("model", ""), q.get("space", ""), data,
                                      int(face) if face.isdecimal() and len(face) < 4 else face)
        return reply(found.public())

    async def edit(request: web.Request) -> web.Response:
        return reply(await workspace.edit(await json_body(request)))

    async def grid(request: web.Request) -> web.Response:
        return reply(await workspace.grid(await json_body(request)))

    app = web.Application(middlewares=[middleware])
    app.add_routes([
        web.get("/", index), web.get("/static/{name}", static), web.get("/healthz", healthz),
        web.get("/api/catalog", catalog), web.get("/api/boundary", boundary), web.post("/api/source", source), web.post("/api/photo", photo),
        web.post("/api/edit", edit), web.post("/api/grid", grid),
    ])
    return app


def dumps(value) -> str:
    """JSON with non-finite numbers (an unbounded range, an invalid score) as null: browsers refuse NaN."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(value), allow_nan=False)


def reply(value) -> web.Response:
    return web.json_response(value, dumps=dumps)


def error_response(status: int, message: str, code: str, retry_after: float | None = None) -> web.Response:
    response = web.json_response({"error": message, "code": code}, status=status)
    if retry_after:
        response.headers["Retry-After"] = str(max(1, round(retry_after)))
    return response


def login_page(status: int, problem: str) -> web.Response:
    # Static text only: nothing the caller sent is written into this page.
    note = f"<p class=problem>{problem}</p>" if problem else ""
    body = ("<!doctype html><html><head><meta charset=utf-8><title>InterFaceGAN studio</title>"
            "<link rel=stylesheet href=/static/studio.css></head><body class=login><h1>InterFaceGAN studio</h1>"
            f"{note}<p>This studio asks for a token (the cluster's auth token unless a page token was set).</p>"
            "<form method=get action=/><input name=token type=password placeholder=token autofocus>"
            "<button>Open</button></form></body></html>")
    return web.Response(status=status, text=body, content_type="text/html", charset="utf-8")


class Refused(Exception):
    """A request the page's HTTP side refuses before the editor is asked: an HTTP status and what is accepted."""

    def __init__(self, status: int, message: str, code: str = "INVALID_ARGUMENT"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


async def read_bounded(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to be over `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: web.Request) -> dict:
    if request.content_type != "application/json":
        raise Refused(415, f"content type {request.content_type!r:.60}; send application/json")
    raw = await read_bounded(request, MAX_JSON_BYTES)
    if raw is None:
        raise Refused(413, f"the request is over {MAX_JSON_BYTES} bytes; a request names its sliders, not images")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise Refused(400, f"the body is not JSON ({e}); send an object such as "
                           '{"source": {"seed": 7}, "values": {"age": 1.5}, "active": "age"}') from None
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object")
    return body


async def photo_upload(request: web.Request, max_bytes: int, max_pixels: int) -> bytes:
    """The uploaded photo's bytes; refuses, from its size and header alone, what is too big or not PNG/JPEG."""
    data = await read_bounded(request, max_bytes)
    if data is None:
        size = f"{request.content_length / 1e6:.1f} MB" if request.content_length else f"over {max_bytes / 1e6:g} MB"
        raise Refused(413, f"the photo is {size}; the studio accepts photos up to {max_bytes / 1e6:g} MB: send a "
                           f"smaller or more compressed file", "RESOURCE_EXHAUSTED")
    if not data:
        raise Refused(400, "the photo is empty; send the PNG or JPEG file's bytes as the request body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)  # the limit below says it better
            with PILImage.open(io.BytesIO(data)) as image:
                kind, (width, height) = image.format, image.size
    except (OSError, SyntaxError, ValueError, PILImage.DecompressionBombError) as e:
        raise Refused(400, f"the photo is not a readable image ({type(e).__name__}); send a PNG or JPEG file") from None
    if kind not in PHOTO_FORMATS:
        raise Refused(415, f"the photo is a {kind} file; accepted: PNG or JPEG")
    if width * height > max_pixels:
        raise Refused(413, f"the photo is {width} x {height} pixels ({width * height / 1e6:.1f} megapixels); the "
                           f"studio accepts up to {max_pixels / 1e6:g} megapixels: downscale it", "RESOURCE_EXHAUSTED")
    return data
