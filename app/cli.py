"""The `tandem` command: desktop window (default), browser, headless server, benchmark."""

from __future__ import annotations

import argparse
import os
import json
import logging
import signal
import sys
import webbrowser
from pathlib import Path

from tandem.app import __version__
from tandem.app.config import Settings
from tandem.app.errors import TandemError
from tandem.runtime.errors import RuntimeFailure


def build_parser() -> argparse.ArgumentParser:
    # SUPPRESS: an option given before the subcommand (tandem --data-dir X serve) is not reset by
    # the subcommand's own default.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
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
    # The packaged app's smoke test: print the window's title and the page's once it is ready.
    parser.add_argument("--smoke-test", action="store_true", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", parents=[common], help="run the server without opening a window")
    bench = sub.add_parser("bench", parents=[common], help="measured against predicted: the plan, the sweep, the defaults")
    bench.add_argument("target", nargs="?", help="a .gguf path or an installed model id (default: the built-in model)")
    bench.add_argument("--paths", action="store_true", help="compare llama-cpp-python, Tandem's engine, its HTTP API and a bare llama_decode loop")
    bench.add_argument("--context", action="store_true",
                       help="conversations past the context under each policy, and returning to a saved one")
    bench.add_argument("--ctx", type=int, help="context length for --context (default 1024)")
    bench.add_argument("--spec", action="store_true",
                       help="plain against speculative decoding (prompt lookup, a draft model) on a copy-heavy "
                            "and a free-form task")
    bench.add_argument("--draft", help="with --spec: a draft model (.gguf path or installed model id)")
    bench.add_argument("--serve", action="store_true",
                       help="the serving core through a real server: stop latency, abandoned requests, 16 "
                            "concurrent clients, two models under a memory budget")
    bench.add_argument("--hardware", type=Path, help="a saved hardware profile to plan for")
    bench.add_argument("--tokens", type=int, default=128, help="tokens to generate per run")
    bench.add_argument("--runs", type=int, default=3, help="runs per path (best and median are shown)")
    hw = sub.add_parser("hardware", parents=[common], help="what this machine has: CPU, memory, GPUs, engine build")
    hw.add_argument("--json", action="store_true", help="print the profile as JSON")
    hw.add_argument("--raw", action="store_true", help="print the raw readings (for bug reports and test fixtures)")
    hw.add_argument("--remeasure", action="store_true",
                    help="measure the memory bandwidth and time llama.cpp's decode again")
    inspect = sub.add_parser("inspect", parents=[common], help="what a model file holds and needs")
    inspect.add_argument("target", help="a .gguf path or the id of an installed model")
    inspect.add_argument("--json", action="store_true", help="print as JSON")
    plan = sub.add_parser("plan", parents=[common], help="how Tandem would run a model here, and why")
    plan.add_argument("target", nargs="?", help="a .gguf path or an installed model id (default: the built-in model)")
    plan.add_argument("--ctx", type=int, help="context length to plan for (default: TANDEM_N_CTX or 4096; 0: the longest that costs no speed)")
    plan.add_argument("--hardware", type=Path, help="plan for another machine: a saved `tandem hardware --json` or --raw file")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--no-dry-run", action="store_true", help="skip the check through llama.cpp")
    search = sub.add_parser("search", parents=[common], help="find GGUF models on the Hugging Face hub")
    search.add_argument("query", help="words in the repo name, e.g. 'llama 3.2 instruct'")
    search.add_argument("--sort", choices=["downloads", "likes", "recent", "trending"], default="downloads")
    search.add_argument("--limit", type=int, default=20)
    search.add_argument("--json", action="store_true", help="print as JSON")
    pull = sub.add_parser("pull", parents=[common],
                          help="download a model from the hub (how it runs here first, then a progress bar)")
    pull.add_argument("spec", metavar="REPO[:QUANT|FILE]",
                      help="e.g. bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M; without a quant: the repo's files "
                           "with their verdicts, and the one recommended here is downloaded")
    pull.add_argument("--json", action="store_true", help="print the finished download as JSON")
    models = sub.add_parser("models", parents=[common], help="installed models: size, quant, where, how they run here")
    models.add_argument("--json", action="store_true", help="print as JSON")
    rm = sub.add_parser("rm", parents=[common], help="remove a model (its files only when Tandem downloaded them)")
    rm.add_argument("model_id", help="an installed model id (see `tandem models`)")
    imp = sub.add_parser("import", parents=[common], help="register GGUF models already on this machine, where they are")
    imp.add_argument("path", nargs="?", type=Path, help="a .gguf file or a folder holding some")
    imp.add_argument("--from", dest="source", choices=["lmstudio", "ollama", "hf-cache"],
                     help="import from LM Studio's models folder, Ollama's store or the Hugging Face cache")
    remote = sub.add_parser("remote", parents=[common], help="other OpenAI-compatible servers whose models Tandem serves")
    rsub = remote.add_subparsers(dest="remote_command", required=True)
    radd = rsub.add_parser("add", parents=[common], help="register a server (its models become NAME/model)")
    radd.add_argument("name", help="a short name: lower-case letters, digits, - or _")
    radd.add_argument("url", help="its OpenAI base URL, e.g. http://192.168.1.20:8742/v1")
    radd.add_argument("--key", help="its API key (or set TANDEM_REMOTE_KEY, which keeps it out of the shell history)")
    rsub.add_parser("list", parents=[common], help="registered servers, their models and whether they answer")
    rrm = rsub.add_parser("rm", parents=[common], help="forget a server")
    rrm.add_argument("name")
    from tandem.app.pool_cli import add_parsers

    add_parsers(sub, common)
    sub.add_parser("api-key", parents=[common],
                   help="make a new API key for other devices (printed once; the previous key stops working)")
    return parser


def run_remote(settings: Settings, args: argparse.Namespace) -> int:
    from tandem.app.remote import RemoteService
    from tandem.app.store import Store

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.db_path)
    try:
        remotes = RemoteService(store, settings.remote_timeout_s)
        if args.remote_command == "add":
            r = remotes.add(args.name, args.url, getattr(args, "key", None) or os.environ.get("TANDEM_REMOTE_KEY"))
            print(f"{r['name']}: {r['url']}, {len(r['models'])} model(s): {', '.join(r['models']) or 'none'}")
        elif args.remote_command == "list":
            rows = remotes.list(fresh=True)
            if not rows:
                print("No remote servers. Add one with: tandem remote add NAME URL [--key KEY]")
            for r in rows:
                state = "answers" if r["status"] == "ok" else f"not answering: {r['error']}"
                key = ", with a key" if r["has_key"] else ""
                print(f"{r['name']}  {r['url']}{key}  {state}")
                for m in r["models"]:
                    print(f"    {m}")
        else:
            remotes.remove(args.name)
            print(f"Removed {args.name}.")
        return 0
    finally:
        store.close()


def run_api_key(settings: Settings) -> int:
    """A new key, saved as its hash: this is the only time it is shown."""
    from tandem.app.services.settings import key_settings, new_api_key
    from tandem.app.store import Store

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = new_api_key()
    store = Store(settings.db_path)
    try:
        store.save_settings(key_settings(key))
    finally:
        store.close()
    print(key)
    print("This is the only time the key is shown: copy it now. Other devices send it as "
          "'Authorization: Bearer KEY'. Start Tandem with --host 0.0.0.0 (or turn on network access on the "
          "Settings page) to serve them; a running Tandem uses the new key from its next start.", file=sys.stderr)
    return 0


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "model": getattr(args, "model", None),
        "data_dir": getattr(args, "data_dir", None),
        "n_ctx": getattr(args, "n_ctx", None),
        "hardware_profile": getattr(args, "hardware", None),
    }
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_pool-host"]:  # the process a pooled model runs in (the packaged app has no -m)
        from tandem.runtime.pool.host import main as pool_host

        return pool_host()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="tandem: %(message)s")
    if args.command == "worker":  # its --host and --port are the worker's, not the server's settings
        from tandem.app.pool_cli import run_worker

        return run_worker(args)
    try:
        settings = settings_from(args)
        if args.command == "bench":
            from tandem.app.bench import run_bench

            target = resolve_target(settings, args.target) if args.target else None
            if args.spec:
                from tandem.app.bench_spec import run_spec_bench
                from tandem.runtime import embedded

                draft = resolve_target(settings, args.draft) if args.draft else None
                return run_spec_bench(settings, target or settings.model or embedded.default_model_path(), draft,
                                      tokens=args.tokens if args.tokens != 128 else 256, runs=args.runs)
            if args.serve:
                from tandem.app.bench_serve import run_serve_bench

                return run_serve_bench(settings)
            if args.context:
                from tandem.app.bench_context import run_context_bench
                from tandem.runtime import embedded

                return run_context_bench(settings, target or settings.model or embedded.default_model_path(), args.ctx)
            return run_bench(settings, target, tokens=args.tokens, runs=args.runs, paths=args.paths)
        if args.command == "hardware":
            return run_hardware(settings, as_json=args.json, raw=args.raw, remeasure=args.remeasure)
        if args.command == "inspect":
            return run_inspect(settings, args.target, as_json=args.json)
        if args.command == "plan":
            return run_plan(settings, args.target, args.ctx, as_json=args.json, dry_run=not args.no_dry_run)
        if args.command in ("search", "pull", "models", "rm", "import"):
            return run_hub_command(settings, args)
        if args.command == "serve":
            return run_server(settings)
        if args.command == "api-key":
            return run_api_key(settings)
        if args.command == "remote":
            return run_remote(settings, args)
        if args.command == "pool":
            from tandem.app.pool_cli import run_pool

            return run_pool(settings, args)
        return run_app(settings, browser=args.browser, smoke_test=args.smoke_test)
    except (TandemError, RuntimeFailure) as err:
        print(f"tandem: error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # settings validation
        print(f"tandem: error: {_first_line(err)}", file=sys.stderr)
        return 2


def run_hub_command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        return _hub_command(settings, args)
    except KeyboardInterrupt:  # a download under way was paused already; nothing else to keep
        print("tandem: stopped.", file=sys.stderr)
        return 130


def _hub_command(settings: Settings, args: argparse.Namespace) -> int:
    from tandem.app.hub import commands

    if args.command == "search":
        return commands.run_search(settings, args.query, args.sort, args.limit, args.json)
    if args.command == "pull":
        return commands.run_pull(settings, args.spec, args.json)
    if args.command == "models":
        return commands.run_models(settings, args.json)
    if args.command == "rm":
        return commands.run_rm(settings, args.model_id)
    if (args.path is None) == (args.source is None):
        print("tandem: error: give a PATH or --from lmstudio|ollama|hf-cache, not both or neither.", file=sys.stderr)
        return 2
    return commands.run_import(settings, args.path, args.source)


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return " ".join(lines[:3]) if lines else type(err).__name__


def _start(settings: Settings):
    from tandem.app.server import ServerThread

    server = ServerThread(settings).start()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    return server


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _claim_data_dir(settings: Settings):
    """(lock, None) when this process may serve the data folder, (None, running) when a Tandem
    serving it answers already."""
    from tandem.app.instance import InstanceLock

    def waiting(pid: int) -> None:
        print(f"tandem: Tandem is starting in another process (pid {pid}); waiting for it.", file=sys.stderr, flush=True)

    lock = InstanceLock(settings.data_dir)
    running = lock.acquire(on_wait=waiting)
    return (lock, None) if running is None else (None, running)


def run_server(settings: Settings) -> int:
    lock, running = _claim_data_dir(settings)
    if running is not None:
        explicit = "port" in settings.model_fields_set
        if not explicit or settings.port == running.port:
            print(f"tandem: error: Tandem is already running at {running.url}/ (pid {running.pid}). Use it, "
                  "stop it first, or give --port to run a second server on the same data.", file=sys.stderr)
            return 1
        # A second server on purpose (another port): the running one keeps the lock.
    try:
        server = _start(settings)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    try:
        if lock is not None:
            lock.publish(server.url)
        print(f"Tandem is running at {server.url}/  (Ctrl-C to stop)", flush=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if lock is not None:
            lock.release()
    return 0


def run_app(settings: Settings, browser: bool = False, smoke_test: bool = False) -> int:
    from tandem.app import desktop

    lock, running = _claim_data_dir(settings)
    if running is not None:
        return _use_running(settings, running, browser)
    window_closed = False
    try:
        server = _start(settings)
    except BaseException:
        lock.release()
        raise
    try:
        lock.publish(server.url)
        if not browser and desktop.display_available():
            try:
                _run_window(settings, server, smoke_test)
                window_closed = True
                return 0
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
        lock.release()
        if window_closed:
            _end_after_window()


def _end_after_window() -> None:
    """The window is closed, the server stopped and the data folder released: end the process now.
    Qt WebEngine's teardown at interpreter exit can hang on a loaded machine, leaving a process
    behind that the person cannot see."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _run_window(settings: Settings, server, smoke_test: bool) -> None:
    from tandem.app import desktop
    from tandem.app.api import window as window_api
    from tandem.app.hub.downloads import ACTIVE

    def active_downloads() -> int:
        return len(server.services.store.list_downloads(ACTIVE))

    shell = desktop.Shell(server.url + "/", data_dir=settings.data_dir, active_downloads=active_downloads,
                          report_loaded=smoke_test)
    window_api.set_focus_handler(shell.focus)
    try:
        shell.run()
    finally:
        window_api.set_focus_handler(None)


def _use_running(settings: Settings, running, browser: bool) -> int:
    """Another Tandem serves this data folder: bring its window forward (or open its page)."""
    from tandem.app import desktop
    from tandem.app.instance import post

    url = running.url + "/"
    if browser:
        opened = desktop.display_available() and webbrowser.open(url)
        done = "opened it in the browser" if opened else "open that address in a browser"
        print(f"Tandem is already running at {url}; {done}.", flush=True)
        return 0
    try:
        status, body = post(running.url + "/api/app/focus")
    except OSError as err:
        print(f"tandem: error: Tandem is running at {url} (pid {running.pid}) but did not answer ({err}). "
              "Try again in a moment, or stop that process.", file=sys.stderr)
        return 1
    if status == 200:
        print(f"Tandem is already running at {url}; its window was brought forward.", flush=True)
        return 0
    if status == 409 and desktop.display_available():
        # It runs without a window (tandem serve): show one on it rather than a second server.
        print(f"Tandem is already running at {url} without a window; opening one on it.", flush=True)
        try:
            desktop.Shell(url, data_dir=settings.data_dir).run()
            return 0
        except desktop.DesktopUnavailable as err:
            print(f"tandem: {err}; opening the browser instead.", file=sys.stderr)
            webbrowser.open(url)
            return 0
    if status == 409:
        print(f"Tandem is already running at {url}; open that address in a browser.", flush=True)
        return 0
    message = (body.get("error") or {}).get("message") if isinstance(body.get("error"), dict) else None
    print(f"tandem: error: Tandem is running at {url} but refused to show its window (HTTP {status}"
          f"{': ' + message if message else ''}).", file=sys.stderr)
    return 1


def run_hardware(settings: Settings, as_json: bool, raw: bool, remeasure: bool) -> int:
    from tandem.app.report import hardware_text
    from tandem.app.services.hardware import HardwareService
    from tandem.runtime.hardware import collect_raw

    if raw:
        print(json.dumps(collect_raw(settings.data_dir), indent=1))
        return 0
    profile = HardwareService(settings).profile(remeasure=remeasure)
    if as_json:
        print(profile.to_json(indent=1))
        return 0
    from tandem.runtime.hardware import energy

    sources = energy.meter().sources
    print(hardware_text(profile))
    print("Energy    " + (f"counted by {', '.join(sources)}" if sources else
                          "not counted (no readable RAPL package counter or NVML energy counter)"))
    return 0


def run_inspect(settings: Settings, target: str, as_json: bool) -> int:
    from tandem.app.report import model_text
    from tandem.runtime.model_info import inspect_model

    path = resolve_target(settings, target)
    info = inspect_model(path)
    print(info.to_json(indent=1) if as_json else model_text(info))
    return 0


def installed_model_path(settings: Settings, model_id: str) -> Path:
    from tandem.app.errors import NotFound
    from tandem.runtime import embedded

    if model_id == embedded.MODEL_ID:
        return embedded.default_model_path()
    if settings.db_path.exists():
        from tandem.app.store import Store

        store = Store(settings.db_path)
        try:
            return Path(store.get_model(model_id)["path"])
        finally:
            store.close()
    raise NotFound(f"No model file or installed model named {model_id!r}. Give the path of a .gguf file.")


def resolve_target(settings: Settings, target: str) -> Path:
    """A model named on the command line: a file path, or the id of an installed model."""
    path = Path(target).expanduser()
    if not path.exists() and "/" not in target and not target.endswith(".gguf"):
        return installed_model_path(settings, target)
    return path


def run_plan(settings: Settings, target: str | None, n_ctx: int | None, as_json: bool, dry_run: bool) -> int:
    """The plan the app would load the model with (calibrated from this machine's measurements)."""
    from tandem.app.report import plan_text
    from tandem.app.services.hardware import HardwareService
    from tandem.app.services.models import ModelService, model_id_for
    from tandem.app.store import Store
    from tandem.runtime import embedded
    from tandem.runtime.model_info import inspect_model

    path = resolve_target(settings, target) if target else (settings.model or embedded.default_model_path())
    info = inspect_model(path)
    store = Store(settings.db_path)
    try:
        models = ModelService(settings, store, HardwareService(settings).profile)
        # a dry run checks this machine's llama.cpp: not meaningful for another machine's profile
        plan = models.plan_for({"id": model_id_for(path), "path": str(path)}, n_ctx, info,
                               dry_run=dry_run and settings.hardware_profile is None)
    finally:
        store.close()
    print(plan.to_json(indent=1) if as_json else plan_text(plan, info))
    return 0
