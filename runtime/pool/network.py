"""What a worker offers and what the network to it costs: asked over the worker's HTTP side (never
through ggml-rpc, whose client ends the process on a failed connection).

A probe takes about a second: ten round trips on one kept-alive connection, then a timed download
and upload. It is cached per worker for CACHE_S; a failed probe is not cached.
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass

CACHE_S = 600.0
FAILED_S = 30.0
PROBE_BYTES = 4 << 20
_cache: dict[str, tuple[float, "Link"]] = {}
_failed: dict[str, tuple[float, str]] = {}
_lock = threading.Lock()


class WorkerUnreachable(RuntimeError):
    pass


@dataclass(frozen=True)
class Link:
    endpoint: str  # host:port
    rtt_s: float  # median round trip of a small request
    down_bps: float  # bytes/s from the worker
    up_bps: float  # bytes/s to the worker
    info: dict  # the worker's /tandem/worker answer: devices, free memory, cores, read bandwidth
    probed_at: float

    @property
    def bandwidth_bps(self) -> float:
        return min(self.down_bps, self.up_bps)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["rtt_ms"] = round(self.rtt_s * 1000, 3)
        d["bandwidth_mbps"] = round(self.bandwidth_bps * 8 / 1e6, 1)
        return d


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"A worker is HOST:PORT (e.g. 192.168.1.20:50052), got {endpoint!r}.")
    return host.strip("[]"), int(port)


def _get(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None) -> bytes:
    conn.request(method, path, body=body, headers={"Content-Type": "application/octet-stream"} if body else {})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise WorkerUnreachable(f"answered {resp.status} to {path}")
    return data


def probe(endpoint: str, timeout: float = 3.0, refresh: bool = False, pings: int = 10,
          nbytes: int = PROBE_BYTES) -> Link:
    """The worker's devices and the network's round trip and bandwidth (cached for CACHE_S; a
    worker that did not answer is not asked again for FAILED_S, so that loads stay quick)."""
    with _lock:
        hit = _cache.get(endpoint)
        if hit and not refresh and time.monotonic() - hit[0] < CACHE_S:
            return hit[1]
        failed = _failed.get(endpoint)
        if failed and not refresh and time.monotonic() - failed[0] < FAILED_S:
            raise WorkerUnreachable(failed[1])
    try:
        link = _probe(endpoint, timeout, pings, nbytes)
    except WorkerUnreachable as err:
        with _lock:
            _failed[endpoint] = (time.monotonic(), str(err))
        raise
    with _lock:
        _cache[endpoint] = (time.monotonic(), link)
        _failed.pop(endpoint, None)
    return link


def _probe(endpoint: str, timeout: float, pings: int, nbytes: int) -> Link:
    host, port = split_endpoint(endpoint)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        info = json.loads(_get(conn, "GET", "/tandem/worker"))
        if not isinstance(info, dict) or "tandem_worker" not in info:
            raise WorkerUnreachable("is not a Tandem worker")
        times = []
        for _ in range(pings):
            t0 = time.perf_counter()
            _get(conn, "GET", "/tandem/ping")
            times.append(time.perf_counter() - t0)
        rtt = statistics.median(times)
        t0 = time.perf_counter()
        got = len(_get(conn, "GET", f"/tandem/probe?bytes={nbytes}"))
        down = got / max(1e-6, time.perf_counter() - t0 - rtt)
        t0 = time.perf_counter()
        _get(conn, "POST", "/tandem/probe", bytes(nbytes))
        up = nbytes / max(1e-6, time.perf_counter() - t0 - rtt)
    except (OSError, http.client.HTTPException, ValueError) as err:
        raise WorkerUnreachable(f"The worker at {endpoint} does not answer ({err}). Is `tandem worker` "
                                "running there, with this machine's address in its --allow list?") from err
    except WorkerUnreachable as err:
        raise WorkerUnreachable(f"The worker at {endpoint} {err}.") from err
    finally:
        conn.close()
    return Link(endpoint, rtt, down, up, info, time.time())


def forget(endpoint: str | None = None) -> None:
    """Drop cached probes (one worker's, or all): the next plan probes again."""
    with _lock:
        if endpoint is None:
            _cache.clear()
            _failed.clear()
        else:
            _cache.pop(endpoint, None)
            _failed.pop(endpoint, None)
