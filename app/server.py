"""The local HTTP server: FastAPI app, its start-up and shutdown, and running it on a socket."""

from __future__ import annotations

import errno
import logging
import socket
import threading
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from tandem.app import __version__
from tandem.app.api import conversations, errors, hub, library, openai, system
from tandem.app.api import auth, pool, remotes, stats
from tandem.app.api import ollama as ollama_api
from tandem.app.api import window as window_api
from tandem.app.config import Settings
from tandem.app.errors import TandemError
from tandem.app.paths import ui_dir
from tandem.app.security import BodyLimit, HostGuard
from tandem.app.services import Services

log = logging.getLogger("tandem")


class PortInUse(TandemError):
    status = 409
    code = "port_in_use"


def create_app(services: Services) -> FastAPI:
    """The ASGI app over opened services; they are closed when the server shuts down."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:
            services.close()

    app = FastAPI(title="Tandem", version=__version__, lifespan=lifespan)
    settings = services.settings
    app.state.settings, app.state.store = settings, services.store
    app.state.models, app.state.chat = services.models, services.chat
    app.state.services = services
    errors.install(app)
    app.include_router(system.router)
    app.include_router(conversations.router)
    app.include_router(library.router)
    app.include_router(openai.router)
    app.include_router(ollama_api.router)
    app.include_router(hub.router)
    app.include_router(stats.router)
    app.include_router(window_api.router)
    app.include_router(auth.router)
    app.include_router(remotes.router)
    app.include_router(pool.router)
    app.mount("/", StaticFiles(directory=ui_dir(), html=True), name="ui")
    app.add_middleware(BodyLimit, limit=settings.max_body_mb * 1024 * 1024)
    # Added last, so it runs first: a refused request never reaches the body reader or a route.
    app.state.key_hash = settings.key_hash
    app.add_middleware(HostGuard, allowed_hosts=set(settings.allowed_hosts), lan=not settings.loopback,
                       key_hash=settings.key_hash)
    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, or PortInUse with what to do about it. Port 0 picks a free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"Port {port} on {host} is already in use: Tandem may already be running at "
                f"http://{url_host(host)}:{port}/ . Open that, or start with --port 0 to use any free port."
            ) from err
        raise PortInUse(f"Cannot listen on {host}:{port} ({err.strerror}). Pick another --host or --port.") from err
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


class ServerThread:
    """uvicorn serving the app from a background thread (desktop window, tests, benchmarks)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        from tandem.app.services.settings import saved_start_values

        saved = saved_start_values(settings.db_path)  # what the Settings page chose, unless set now
        if "port" not in settings.model_fields_set and "port" in saved:
            settings.port = saved["port"]
        if "host" not in settings.model_fields_set and saved.get("lan_access"):
            settings.host = "0.0.0.0"
        if not settings.api_key and "api_key_hash" in saved:
            settings.saved_key_hash = saved["api_key_hash"]
        if not settings.loopback and not settings.key_hash:
            raise TandemError(
                f"Serving beyond this machine (--host {settings.host}) needs an API key, or anyone on the "
                "network could use it: run `tandem api-key` to make one (it is shown once), or set "
                "TANDEM_API_KEY to a secret of 16 or more characters, or serve on 127.0.0.1.")
        self.sock = bind_socket(settings.host, settings.port)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{url_host(settings.host)}:{self.port}"
        try:
            self.services = Services.open(settings)
            self.services.prefs.running_port = self.port
            app = create_app(self.services)
        except BaseException:
            self.sock.close()
            raise
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # the main thread owns signals
        self._thread = threading.Thread(target=self._run, name="uvicorn", daemon=True)
        # Waiting on an Event, not Thread.join: a join interrupted by Ctrl-C can leave the thread
        # reporting itself dead (CPython issue 21822), and shutdown would then be skipped.
        self._exited = threading.Event()
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as err:
            self.error = err
        finally:
            self._exited.set()

    def start(self, timeout: float = 60.0) -> "ServerThread":
        self._thread.start()
        while not self.server.started:
            if self._exited.wait(0.05) or timeout <= 0:
                self.stop()
                raise TandemError(f"The server did not start: {self.error or 'see the log above'}")
            timeout -= 0.05
        return self

    def stop(self) -> None:
        """Shut down: requests end, the model is freed and the database closed."""
        self.server.should_exit = True
        # Replies in progress end now (as stopped, their text stored), so that their streams close
        # and uvicorn need not wait for them.
        self.services.models.close()
        if self._thread.ident is not None:
            self._exited.wait(30)
        self.sock.close()

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C arrives here as KeyboardInterrupt)."""
        while not self._exited.wait(0.5):
            pass

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
