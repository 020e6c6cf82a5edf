"""The review page's web application (Starlette) and its server (uvicorn).

Every URL is under a random per-run token, ``/TOKEN/...``; anything else is
404. The page is three local files (no CDN); the API:

=======  ==========================  ===============================================
GET      ``/TOKEN/``                 the page
GET      ``/TOKEN/static/NAME``      app.js, style.css
GET      ``/TOKEN/api/session``      the report's cells, classes, keys and the review state
GET      ``/TOKEN/img/CELL``         a cell's image: only images the report lists, by index
GET      ``/TOKEN/api/cam/CELL``     its class activation map (``?class=NAME``), JSON
POST     ``/TOKEN/api/decision``     ``{"cell": i, "corrected": class}`` (the predicted class: approve)
POST     ``/TOKEN/api/undo``         ``{}``: takes back the last decision
POST     ``/TOKEN/api/export``       ``{}``: writes corrections.csv and REPORT.reviewed.json
POST     ``/TOKEN/api/signoff``      ``{}``: refused (409) while flagged cells are unreviewed
GET      ``/TOKEN/download/NAME``    corrections.csv or reviewed.json as they are now
=======  ==========================  ===============================================

POSTs take ``application/json`` only (a cross-site form cannot send it, and
there is no CORS to allow a script to), an object with exactly the documented
keys, at most 16 KiB; a request whose ``Origin`` is another site is refused.
When the server listens on a loopback address, requests must name it in
``Host`` (no DNS rebinding).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import secrets
import socket
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from .cam import CamProvider, CamUnavailable
from .state import ReviewError, ReviewSession

MAX_BODY = 16 << 10
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                 b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def new_token() -> str:
    return secrets.token_urlsafe(24)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_for(host: str, port: int, token: str) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
    return f"http://{shown}:{port}/{token}/"


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0: any free port)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


class _Guard:
    """ASGI wrapper: the token, the Host check, security headers, no CORS."""

    def __init__(self, app, token: str, allowed_hosts: set[str] | None):
        self.app, self.token, self.allowed_hosts = app, token, allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if not k.lower().startswith(b"access-control-")]
                present = {k.lower() for k, _ in headers}
                message = {**message, "headers": headers + [h for h in SECURITY_HEADERS if h[0] not in present]}
            await send(message)

        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.allowed_hosts is not None and headers.get(b"host", b"").decode("latin-1").lower() \
                not in self.allowed_hosts:
            return await PlainTextResponse("unknown host", 421)(scope, receive, send_with_headers)
        # The token is the first path segment, compared in constant time on
        # the raw (undecoded) path.
        raw = scope.get("raw_path") or scope["path"].encode()
        raw = raw.split(b"?", 1)[0]
        segment, _, rest = raw.lstrip(b"/").partition(b"/")
        if not hmac.compare_digest(segment, self.token.encode()):
            return await PlainTextResponse("not found", 404)(scope, receive, send_with_headers)
        if not rest and not raw.endswith(b"/"):
            return await RedirectResponse(f"/{self.token}/", 308)(scope, receive, send_with_headers)
        await self.app(scope, receive, send_with_headers)


def create_app(session: ReviewSession, token: str, *, allowed_hosts: set[str] | None = None,
               cam: CamProvider | None = None) -> Any:
    """The ASGI application for one review; ``allowed_hosts`` (lower-case
    ``host:port`` values) restricts the Host header, None accepts any."""
    page = resources.files(__package__).joinpath("static")
    static = {name: page.joinpath(name).read_bytes() for name in STATIC}
    index = page.joinpath("index.html").read_bytes()
    cams = cam if cam is not None else CamProvider(session.report["model"], session.classes)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status)

    async def body_of(request: Request, keys: set[str], required: set[str]) -> dict:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ReviewError("send application/json", 415)
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
            raise ReviewError("cross-origin requests are refused", 403)
        if request.headers.get("sec-fetch-site") not in (None, "same-origin", "none"):
            raise ReviewError("cross-site requests are refused", 403)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            raise ReviewError("request body too large", 413)
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise ReviewError("request body too large", 413)
        try:
            body = json.loads(raw or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ReviewError("the body is not JSON") from None
        if not isinstance(body, dict):
            raise ReviewError("the body must be a JSON object")
        unknown, missing = set(body) - keys, required - set(body)
        if unknown:
            raise ReviewError(f"unknown fields: {', '.join(sorted(unknown))}")
        if missing:
            raise ReviewError(f"missing fields: {', '.join(sorted(missing))}")
        return body

    def handled(endpoint):
        async def wrapper(request: Request):
            try:
                return await endpoint(request)
            except ReviewError as e:
                return error(e.status, str(e))
        return wrapper

    async def index_page(request: Request):
        return Response(index, media_type="text/html; charset=utf-8")

    async def static_file(request: Request):
        name = request.path_params["name"]
        if name not in static:
            return error(404, "not found")
        return Response(static[name], media_type=STATIC[name])

    async def api_session(request: Request):
        data = session.session()
        data["cam_notes"] = list(cams.notes)
        return JSONResponse(data)

    def image(request: Request):
        data, content_type = session.read_image(request.path_params["cell"])
        return Response(data, media_type=content_type, headers={"cache-control": "private, max-age=3600"})

    def cam_map(request: Request):
        cell = session.check_cell(request.path_params["cell"])
        name = request.query_params.get("class") or session.current_label(cell)
        if name not in session.classes:
            raise ReviewError(f"unknown class {name!r}", 422)
        path = session.image_path(cell)
        if path is None:
            raise ReviewError(f"the image of cell {cell} is not on this machine", 404)
        try:
            return JSONResponse(cams.cam(cell, path, name))
        except CamUnavailable as why:
            return JSONResponse({"available": False, "reason": str(why), "notes": list(cams.notes)})

    async def decision(request: Request):
        body = await body_of(request, {"cell", "corrected"}, {"cell", "corrected"})
        result = session.decide(body["cell"], body["corrected"])
        return JSONResponse({"decision": result, "state": session.snapshot()})

    async def undo(request: Request):
        await body_of(request, set(), set())
        cell = session.undo()
        return JSONResponse({"undone": cell, "state": session.snapshot()})

    async def export(request: Request):
        await body_of(request, set(), set())
        result = session.export()
        return JSONResponse({**result, "state": session.snapshot()})

    async def signoff(request: Request):
        await body_of(request, set(), set())
        result = session.sign_off()
        return JSONResponse({**result, "state": session.snapshot()})

    async def download(request: Request):
        name = request.path_params["name"]
        if name == "corrections.csv":
            return Response(session.corrections_csv(), media_type="text/csv; charset=utf-8",
                            headers={"content-disposition": 'attachment; filename="corrections.csv"'})
        if name == "reviewed.json":
            return Response(json.dumps(session.reviewed_report(), indent=2), media_type="application/json",
                            headers={"content-disposition":
                                     f'attachment; filename="{session.reviewed_path.name}"'})
        return error(404, "not found")

    def sync(endpoint):
        """A blocking endpoint (file reads, the model) run in a worker thread."""
        from starlette.concurrency import run_in_threadpool

        async def wrapper(request: Request):
            return await run_in_threadpool(endpoint, request)
        return wrapper

    routes = [
        Route("/{token}/", handled(index_page), methods=["GET"]),
        Route("/{token}/static/{name}", handled(static_file), methods=["GET"]),
        Route("/{token}/api/session", handled(api_session), methods=["GET"]),
        Route("/{token}/img/{cell:int}", handled(sync(image)), methods=["GET"]),
        Route("/{token}/api/cam/{cell:int}", handled(sync(cam_map)), methods=["GET"]),
        Route("/{token}/api/decision", handled(decision), methods=["POST"]),
        Route("/{token}/api/undo", handled(undo), methods=["POST"]),
        Route("/{token}/api/export", handled(export), methods=["POST"]),
        Route("/{token}/api/signoff", handled(signoff), methods=["POST"]),
        Route("/{token}/download/{name}", handled(download), methods=["GET"]),
    ]

    async def not_found(request, exc):
        return error(404, "not found")

    async def not_allowed(request, exc):
        return error(405, "method not allowed")

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
    app.state.cam = cams
    return _Guard(app, token, allowed_hosts)


def loopback_hosts(host: str, port: int) -> set[str] | None:
    """The Host header values a loopback server answers to; None (any) for
    other addresses, where the machine's names cannot be known."""
    if not is_loopback(host):
        return None
    return {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"{host.lower()}:{port}"}


class ReviewServer:
    """The page served by uvicorn on an already bound socket; ``start()``
    runs it in a thread (tests, the CLI's browser opening), ``run()`` in this one."""

    def __init__(self, session: ReviewSession, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 cam: CamProvider | None = None):
        import uvicorn

        self.session = session
        self.token = token or new_token()
        self.socket = bind_socket(host, port)
        self.host = host
        self.port = self.socket.getsockname()[1]
        self.app = create_app(session, self.token, allowed_hosts=loopback_hosts(host, self.port), cam=cam)
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False,
                                server_header=False, date_header=False)
        self.server = uvicorn.Server(config)
        self._thread = None

    @property
    def url(self) -> str:
        return url_for(self.host, self.port, self.token)

    def run(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.close()

    def start(self) -> ReviewServer:
        import threading
        import time

        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the review server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.close()

    def close(self) -> None:
        self.app.app.state.cam.close()
        with contextlib.suppress(OSError):
            self.socket.close()
