"""`tandem worker` (serve this machine's devices to another Tandem) and `tandem pool` (the workers
this machine may spread a model over)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from tandem.app.config import Settings


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    worker = sub.add_parser(
        "worker", help="serve this machine's GPU (or CPU) to another Tandem over llama.cpp RPC",
        description="Serve this machine's devices to the Tandem on another machine, which then runs some "
                    "of a model's layers here. llama.cpp's RPC protocol has no authentication: the worker "
                    "listens on the one address you give and accepts only the addresses you allow.")
    worker.add_argument("--host", default="127.0.0.1",
                        help="the address of this machine to listen on (default 127.0.0.1: this machine only)")
    worker.add_argument("--port", type=int, default=50052, help="port to listen on (default 50052)")
    worker.add_argument("--allow", action="append", default=[], metavar="ADDRESS",
                        help="the main machine's address, the only one that may connect (repeat for several); "
                             "loopback is always allowed")
    worker.add_argument("--threads", type=int, default=0, help="CPU threads (default: physical cores)")
    worker.add_argument("--i-understand-no-auth", action="store_true",
                        help="allow listening on every address (0.0.0.0 / ::): anyone who reaches the port "
                             "can use this machine's memory; only on a network only you use")
    pool = sub.add_parser("pool", parents=[common], help="machines running `tandem worker` that models may spread over")
    psub = pool.add_subparsers(dest="pool_command", required=True)
    padd = psub.add_parser("add", parents=[common], help="register a worker (it is probed first)")
    padd.add_argument("endpoint", help="HOST:PORT of a `tandem worker`, e.g. 192.168.1.20:50052")
    psub.add_parser("list", parents=[common], help="registered workers: devices, free memory, round trip, bandwidth")
    prm = psub.add_parser("rm", parents=[common], help="forget a worker")
    prm.add_argument("endpoint")


def run_worker(args: argparse.Namespace) -> int:
    from tandem.runtime.pool import rpc
    from tandem.runtime.pool.worker import Worker, WorkerConfig, WorkerRefused

    # llama.cpp's server prints each connection on the C stdout: that goes to stderr, the log,
    # and stdout keeps the worker's own lines
    sys.stdout.flush()
    sys.stdout = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    config = WorkerConfig(host=args.host, port=args.port, allow=tuple(args.allow), threads=args.threads,
                          i_understand_no_auth=args.i_understand_no_auth)
    try:
        worker = Worker(config).start()
    except (WorkerRefused, rpc.RpcUnavailable) as err:
        print(f"tandem: error: {err}", file=sys.stderr)
        return 2
    info = worker.info()
    served = ", ".join(f"{d['name']} ({d['description']}, {d['free_bytes'] >> 20} MiB free)" for d in info["served"])
    allowed = ", ".join(config.allow) or "this machine only"
    print(f"Tandem worker on {config.host}:{worker.port}, serving {served}; {worker.threads} threads, "
          f"{worker.read_gbps} GB/s read.", flush=True)
    print(f"Accepting connections from: {allowed} (and loopback). On the main machine: "
          f"tandem pool add {config.host}:{worker.port}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    worker.stop()
    return 0


def run_pool(settings: Settings, args: argparse.Namespace) -> int:
    from tandem.app.store import Store
    from tandem.runtime.pool import network

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.db_path)
    try:
        if args.pool_command == "add":
            try:
                network.split_endpoint(args.endpoint)
                link = network.probe(args.endpoint, refresh=True)
            except (ValueError, network.WorkerUnreachable) as err:
                print(f"tandem: error: {err}", file=sys.stderr)
                return 1
            store.add_pool_worker(args.endpoint)
            print(f"Added {args.endpoint}: {describe(link)}")
        elif args.pool_command == "list":
            endpoints = store.list_pool_workers()
            if not endpoints:
                print("No workers. Start `tandem worker --host ADDRESS --allow THIS-MACHINE` on another machine, "
                      "then: tandem pool add ADDRESS:50052")
            for ep in endpoints:
                try:
                    print(f"{ep}  {describe(network.probe(ep, refresh=True))}")
                except network.WorkerUnreachable as err:
                    print(f"{ep}  not answering: {err}")
        else:
            if not store.delete_pool_worker(args.endpoint):
                print(f"tandem: error: {args.endpoint} is not registered; see `tandem pool list`.", file=sys.stderr)
                return 1
            print(f"Removed {args.endpoint}.")
        return 0
    finally:
        store.close()


def describe(link) -> str:
    served = link.info.get("served") or []
    devs = ", ".join(f"{d.get('name')} {int(d.get('free_bytes') or 0) >> 20} MiB free" for d in served) or "no devices"
    return (f"{devs}; round trip {link.rtt_s * 1000:.2f} ms, {link.bandwidth_bps * 8 / 1e6:.0f} Mbit/s, "
            f"{link.info.get('physical_cores')} cores at {link.info.get('read_gbps')} GB/s")
