"""`tandem worker`: this machine's devices served to another Tandem over llama.cpp's RPC backend.

ggml-rpc has no authentication: whoever reaches its port can run graphs and read or write its
memory. So llama.cpp's server listens on a loopback port only, and what faces the network is a
gate in front of it: it binds to the one address the person names, accepts connections only from
the allowed addresses (the main machine), and forwards their bytes. The same port answers a few
HTTP requests of Tandem's own, told apart by their first bytes (ggml-rpc's first byte is a command
number, never a letter): the worker's devices and free memory, and a network probe.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from tandem.runtime.pool import rpc

log = logging.getLogger("tandem.worker")

DEFAULT_PORT = 50052  # llama.cpp's rpc-server default
PROTOCOL = 1  # the HTTP side's version, for the main machine to check
MAX_PROBE_BYTES = 64 << 20
HTTP_VERBS = (b"GET ", b"POST")
MAX_CONNECTIONS = 32  # at once, HTTP and RPC together
MAX_HEADERS = 64
IO_TIMEOUT_S = 30.0
BUSY_WAIT_S = 5.0
PEEK_S = 2.0  # both protocols send their first 4 bytes at once; a trickle is dropped


class WorkerRefused(ValueError):
    """The worker was asked to listen where it must not (the message says what to do)."""


def _is_any(host: str) -> bool:
    """Every address of the machine, however it is spelled (0.0.0.0, ::, ::0, 0, 0x0 ...)."""
    host = host.strip().strip("[]")
    if host in ("", "*"):
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        pass
    try:
        return any(ipaddress.ip_address(i[4][0].split("%")[0]).is_unspecified
                   for i in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (socket.gaierror, UnicodeError, ValueError):
        return False


def _is_loopback(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr.split("%")[0])
    except ValueError:
        return addr.lower().rstrip(".") == "localhost"
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _resolve(name: str) -> set[str]:
    try:
        ip = ipaddress.ip_address(name)
        return {str(ip)}
    except ValueError:
        pass
    try:
        return {i[4][0] for i in socket.getaddrinfo(name, None)}
    except socket.gaierror as err:
        raise WorkerRefused(f"Cannot resolve {name!r} for the allow-list ({err}). Give the main machine's IP address.")


def _normal(addr: str) -> str:
    ip = ipaddress.ip_address(addr.split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


@dataclass
class WorkerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    allow: tuple[str, ...] = ()  # addresses (or names) allowed to connect; loopback always is
    threads: int = 0  # 0: physical cores
    i_understand_no_auth: bool = False
    cache_dir: str | None = None
    allowed_ips: set[str] = field(default_factory=set)

    def check(self) -> None:
        """Refuse a bind that would put an unauthenticated RPC port on an open network."""
        if _is_any(self.host) and not self.i_understand_no_auth:
            raise WorkerRefused(
                f"Refusing to listen on {self.host or 'every address'}: llama.cpp's RPC protocol has no "
                "authentication. Give the one address of this machine the main machine reaches, e.g. "
                "`tandem worker --host 192.168.1.20 --allow 192.168.1.10`, or pass --i-understand-no-auth "
                "on a network only you use.")
        if not _is_loopback(self.host) and not self.allow and not (_is_any(self.host) and self.i_understand_no_auth):
            raise WorkerRefused(
                "A worker on a network address needs --allow ADDRESS: the main machine's address, the only "
                "one that may connect (e.g. --allow 192.168.1.10).")
        if not 0 < self.port < 65536:
            raise WorkerRefused(f"--port must be between 1 and 65535, got {self.port}.")
        ips = set()
        for a in self.allow:
            ips |= {_normal(i) for i in _resolve(a)}
        self.allowed_ips = ips

    def allowed(self, peer: str) -> bool:
        try:
            peer = _normal(peer)
        except ValueError:
            return False
        if not self.allowed_ips and _is_any(self.host) and self.i_understand_no_auth:
            return True  # the person chose an open worker
        return _is_loopback(peer) or peer in self.allowed_ips


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """The gate and llama.cpp's RPC server behind it. start() returns once both listen."""

    def __init__(self, config: WorkerConfig):
        config.check()
        self.config = config
        from tandem.runtime.hardware import physical_cores

        self.threads = config.threads or physical_cores()
        self.inner_port = _free_port()
        self.read_gbps: float | None = None
        self.connections = 0
        self._rpc_busy = threading.Lock()  # llama.cpp's server serves one client at a time
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._stop = threading.Event()
        self._server: socket.socket | None = None

    def info(self) -> dict:
        from tandem.runtime.hardware import physical_cores

        devices = rpc.local_devices()
        accel = [d for d in devices if d["type"] != "cpu"]
        return {"tandem_worker": PROTOCOL, "host": socket.gethostname(), "rpc_proto": "7.0.0",
                "served": accel or devices, "devices": devices, "physical_cores": physical_cores(),
                "threads": self.threads, "read_gbps": self.read_gbps, "pid": os.getpid(),
                "busy": self._rpc_busy.locked()}

    def start(self) -> "Worker":
        if not rpc.supported():
            raise rpc.RpcUnavailable(
                "This llama-cpp-python build has no RPC backend; run ./dev.sh run again (it builds with GGML_RPC=ON).")
        from tandem.runtime.hardware import probe

        # measured as this machine's own planner measures it: every core, a buffer past the caches
        self.read_gbps = probe(None).memory.read_bandwidth_gbps
        endpoint = f"127.0.0.1:{self.inner_port}"
        threading.Thread(target=rpc.serve, args=(endpoint, self.threads, self.config.cache_dir),
                         name="ggml-rpc", daemon=True).start()
        deadline = time.monotonic() + 30
        while True:  # llama.cpp's server is up when its port answers
            try:
                socket.create_connection(("127.0.0.1", self.inner_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("llama.cpp's RPC server did not start")
                time.sleep(0.05)
        family = socket.AF_INET6 if ":" in self.config.host.strip("[]") else socket.AF_INET
        srv = socket.socket(family, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            srv.bind((self.config.host.strip("[]") or "0.0.0.0", self.config.port))
        except OSError as err:
            srv.close()
            raise WorkerRefused(f"Cannot listen on {self.config.host}:{self.config.port} ({err.strerror}). "
                                "Is another worker running there? Pick another --port.") from err
        srv.listen(16)
        self._server = srv
        self.port = srv.getsockname()[1]
        threading.Thread(target=self._accept, name="worker-gate", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._server.accept()
            except OSError:
                return
            if not self.config.allowed(peer[0]):
                log.warning("refused a connection from %s (not in the allow-list)", peer[0])
                conn.close()
                continue
            if not self._slots.acquire(blocking=False):
                conn.close()  # too many at once: whoever it is may try again
                continue
            threading.Thread(target=self._serve_slot, args=(conn,), daemon=True).start()

    def _serve_slot(self, conn: socket.socket) -> None:
        try:
            self._serve(conn)
        finally:
            self._slots.release()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            conn.settimeout(IO_TIMEOUT_S)
            head = b""
            deadline = time.monotonic() + PEEK_S
            while len(head) < 4 and time.monotonic() < deadline:  # a peek may see fewer bytes than sent
                head = conn.recv(4, socket.MSG_PEEK)
                if not head:
                    break
                if len(head) < 4:
                    time.sleep(0.01)
        except OSError:
            conn.close()
            return
        if head[:4] in HTTP_VERBS:
            try:
                _http(conn, self)  # with the timeout kept: a slow client cannot hold a slot
            except (OSError, ValueError):
                pass
            finally:
                conn.close()
            return
        # llama.cpp serves one client at a time; ggml-rpc's client closes and opens its connection
        # again between steps of a load, so a new one waits a little for the last to end: a
        # connection still refused after that is another main machine's, or another model's
        if len(head) < 4 or not self._rpc_busy.acquire(timeout=BUSY_WAIT_S):
            conn.close()
            return
        try:
            conn.settimeout(None)
            self.connections += 1
            try:
                inner = socket.create_connection(("127.0.0.1", self.inner_port))
            except OSError:
                conn.close()
                return
            inner.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            back = threading.Thread(target=_pipe, args=(inner, conn), daemon=True)
            back.start()
            _pipe(conn, inner)
            back.join()
        finally:
            self._rpc_busy.release()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy bytes until either side closes, then close both (so the other direction ends too)."""
    try:
        while True:
            data = src.recv(1 << 20)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def _http(conn: socket.socket, worker: Worker) -> None:
    """A few HTTP/1.1 requests on one connection (kept alive, so a probe's pings measure the network,
    not connection set-up): GET /tandem/worker, GET /tandem/ping, GET /tandem/probe?bytes=N and
    POST /tandem/probe (reads the body)."""
    f = conn.makefile("rb")
    while True:
        line = f.readline(8192)
        if not line:
            return
        parts = line.decode("latin-1").split()
        headers = {}
        for _ in range(MAX_HEADERS + 1):
            h = f.readline(8192)
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        else:
            _answer(conn, 431, b'{"error": "too many headers"}')
            return
        if len(parts) < 2:
            return
        method, target = parts[0], parts[1]
        path, _, query = target.partition("?")
        text = headers.get("content-length") or "0"
        if not text.isdigit():
            _answer(conn, 400, b'{"error": "bad Content-Length"}')
            return
        length = int(text)
        if length > MAX_PROBE_BYTES:
            _answer(conn, 413, b'{"error": "too large"}')
            return
        received = 0
        while received < length:
            chunk = f.read(min(1 << 20, length - received))
            if not chunk:
                return
            received += len(chunk)
        if path == "/tandem/worker" and method == "GET":
            _answer(conn, 200, json.dumps(worker.info()).encode())
        elif path == "/tandem/ping":
            _answer(conn, 200, b"ok")
        elif path == "/tandem/probe" and method == "GET":
            n = 0
            for kv in query.split("&"):
                if kv.startswith("bytes="):
                    n = int(kv[6:]) if kv[6:].isdigit() else 0
            n = min(n, MAX_PROBE_BYTES)
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nContent-Type: application/octet-stream\r\n\r\n".encode())
            block = bytes(1 << 20)
            sent = 0
            while sent < n:
                k = min(len(block), n - sent)
                conn.sendall(block[:k])
                sent += k
        elif path == "/tandem/probe" and method == "POST":
            _answer(conn, 200, json.dumps({"received": received}).encode())
        else:
            _answer(conn, 404, b'{"error": "not found"}')
        if headers.get("connection", "").lower() == "close":
            return


def _answer(conn: socket.socket, status: int, body: bytes) -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large",
              431: "Request Header Fields Too Large"}.get(status, "Error")
    conn.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
                 f"Content-Type: application/json\r\n\r\n".encode() + body)
