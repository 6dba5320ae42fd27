"""The `tandem` command: desktop window (default), browser, headless server, benchmark."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import webbrowser
from pathlib import Path

from app import __version__
from app.config import Settings
from app.errors import TandemError
from runtime.errors import RuntimeFailure


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", help="address to listen on (default 127.0.0.1: this machine only)")
    common.add_argument("--port", type=int, help="port to listen on; 0 picks a free port")
    common.add_argument("--model", type=Path, help="a GGUF file to chat with instead of the built-in model")
    common.add_argument("--data-dir", type=Path, help="where conversations are stored")
    common.add_argument("--n-ctx", type=int, help="context length in tokens")

    parser = argparse.ArgumentParser(
        prog="tandem", parents=[common], description="Tandem: a local AI assistant on this machine."
    )
    parser.add_argument("--version", action="version", version=f"tandem {__version__}")
    parser.add_argument("--browser", action="store_true", help="open in the web browser instead of a window")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", parents=[common], help="run the server without opening a window")
    bench = sub.add_parser("bench", parents=[common], help="measure decode speed: engine, library, HTTP API")
    bench.add_argument("--tokens", type=int, default=256, help="tokens to generate per run")
    bench.add_argument("--runs", type=int, default=3, help="runs per path (best and median are shown)")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        "host": args.host,
        "port": args.port,
        "model": args.model,
        "data_dir": args.data_dir,
        "n_ctx": args.n_ctx,
    }
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="tandem: %(message)s")
    try:
        settings = settings_from(args)
        if args.command == "bench":
            from app.bench import run_bench

            return run_bench(settings, tokens=args.tokens, runs=args.runs)
        if args.command == "serve":
            return run_server(settings)
        return run_app(settings, browser=args.browser)
    except (TandemError, RuntimeFailure) as err:
        print(f"tandem: error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # settings validation
        print(f"tandem: error: {_first_line(err)}", file=sys.stderr)
        return 2


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return " ".join(lines[:3]) if lines else type(err).__name__


def _start(settings: Settings):
    from app.server import ServerThread

    server = ServerThread(settings).start()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    return server


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_server(settings: Settings) -> int:
    server = _start(settings)
    print(f"Tandem is running at {server.url}/  (Ctrl-C to stop)", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def run_app(settings: Settings, browser: bool = False) -> int:
    from app import desktop

    server = _start(settings)
    try:
        if not browser and desktop.display_available():
            try:
                desktop.open_window(server.url + "/")
                return 0  # the window was closed
            except desktop.DesktopUnavailable as err:
                print(f"tandem: {err}; opening the browser instead.", file=sys.stderr)
        opened = desktop.display_available() and webbrowser.open(server.url + "/")
        verb = "Opened" if opened else "Open"
        print(f"{verb} {server.url}/ to chat with Tandem  (Ctrl-C to stop)", flush=True)
        server.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
