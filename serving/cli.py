"""``ssl-zoo serve`` and ``ssl-zoo export-onnx``."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
import urllib.error
import urllib.request

from zoo.cli import Command, add_image_limit_arguments, image_limits

HOSTS = ("127.0.0.1", "0.0.0.0", "::")
KB, MB = 1024, 1024 * 1024
# flag, its field of serving.config.Limits, the bytes in one unit of the flag's value, help; the defaults are
# the dataclass's own. The image limits are zoo.cli's IMAGE_LIMIT_FLAGS, shared with `ssl-zoo embed`.
LIMIT_FLAGS = (
    ("--max-images", "max_images", 1, "images per request"),
    ("--max-body-mb", "max_body_bytes", MB, "request body size limit"),
    ("--max-inflight-mb", "max_inflight_bytes", MB, "request bodies one HTTP process holds at once (429 beyond)"),
    ("--body-timeout", "body_timeout", 1, "seconds to receive a request's body"),
    ("--request-timeout", "request_timeout", 1, "seconds from a request's start to its answer (504 after)"),
    ("--max-header-kb", "max_header_bytes", KB, "request line and headers size limit"),
    ("--header-timeout", "header_timeout", 1, "seconds a connection has to send a request's headers"),
    ("--keep-alive", "keep_alive", 1, "seconds an idle keep-alive connection stays open"),
    ("--max-connections", "max_connections", 1, "concurrent connections and requests (503 beyond)"),
    ("--max-client-connections", "max_client_connections", 1, "concurrent connections from one client address "
     "(503 beyond)"),
)


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """``ssl-zoo serve``'s arguments."""
    p.add_argument("model", nargs="+", help="one or more models: registry name, hf-hub:owner/name[@revision], or "
                   "a local path (./dir, /abs/dir); requests choose one by name (?model=, OpenAI's \"model\"), the "
                   "first by default")
    p.add_argument("--host", default="127.0.0.1", choices=HOSTS, help="127.0.0.1 (this machine), or all interfaces")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default="torch",
                   help="onnx-int8: the graph quantised to int8, checked against fp32 before use (weighted k-NN may "
                   "drop at most 0.5 points; `ssl-zoo export-onnx --quantize int8` reports both)")
    p.add_argument("--onnx-file", help="with --backend onnx: serve this `ssl-zoo export-onnx` file (its metadata "
                   "must match the model) instead of exporting once into the cache")
    p.add_argument("--index", metavar="DIR", help="also answer POST /search (images in, nearest rows out) from DIR, an "
                   "`ssl-zoo embed` output indexed by `ssl-zoo index` with this model")
    p.add_argument("--search-k", type=int, default=10, help="neighbours per image on /search without ?k=")
    p.add_argument("--max-search-k", type=int, default=100, help="largest ?k= a /search request may ask")
    p.add_argument("--absolute-paths", action="store_true", help="/search answers the files' absolute paths on "
                   "this machine (default: paths relative to the collection's folder)")
    p.add_argument("--max-batch-size", type=int, default=16, help="requests merged into one model call")
    p.add_argument("--batch-timeout", type=float, default=0.05,
                   help="longest wait, in seconds from its first request, to fill a batch")
    p.add_argument("--batch-gap", type=float, default=0.008,
                   help="start the batch once no request has come for this many seconds")
    p.add_argument("--workers", type=int, default=1, help="inference workers per device")
    for flag, field, unit, help_text in LIMIT_FLAGS:
        default = _limit_default(field)
        shown = default / unit if unit > 1 else default  # in the flag's unit: 32 (MB), not 33554432
        p.add_argument(flag, type=type(default) if unit == 1 else float, help=help_text,
                       default=int(shown) if shown == int(shown) else shown)
    add_image_limit_arguments(p)
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn access log)")
    p.add_argument("--metrics-public", action="store_true", help="GET /metrics without the API key (for a "
                   "Prometheus that scrapes without one)")
    p.add_argument("--drain-seconds", type=float, default=5.0, help="on SIGTERM, answer /ready 503 for this long "
                   "while serving what comes, then stop (load balancers see it leave first; Ctrl-C stops at once)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--api-key-file", help="require the key in this file (first line) as 'Authorization: Bearer KEY' "
                   "or 'X-API-Key: KEY' on every route but /health; or set $SSL_ZOO_API_KEY")
    p.add_argument("--api-key", help="the same, given on the command line (visible in `ps`: prefer "
                   "--api-key-file or $SSL_ZOO_API_KEY)")
    p.set_defaults(func=_serve)


def _port(text: str) -> int:
    port = int(text)
    if not 1024 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be from 1024 to 65535, got {port}")
    return port


def _limit_default(field: str) -> int | float:
    """The default of a ``LIMIT_FLAGS`` field, read from ``Limits()``."""
    from .config import Limits

    obj = Limits()
    for name in field.split("."):
        obj = getattr(obj, name)
    return obj


def _limit_value(field: str, value: float) -> int | float:
    """A flag's value in its field's unit and type (bytes are whole)."""
    return int(value) if isinstance(_limit_default(field), int) else float(value)


def _serve(args: argparse.Namespace) -> None:
    from .auth import read_api_key

    try:
        api_key = read_api_key(args.api_key, args.api_key_file)
    except ValueError as e:
        sys.exit(f"ssl-zoo serve: {e}")
    if args.api_key is not None and args.api_key_file is None:
        print("ssl-zoo serve: warning: --api-key is visible to every user in `ps`; use --api-key-file or "
              "$SSL_ZOO_API_KEY", file=sys.stderr)
    _check_port_free(args.host, args.port)
    from . import metrics

    samples = metrics.start()  # before any process of the server starts: they all write their samples there
    try:
        server, limits = _build(args, api_key)
        _run(server, limits, args, api_key is not None)
    except KeyboardInterrupt:  # Ctrl-C while the model was being fetched or exported
        sys.exit("ssl-zoo serve: interrupted")
    finally:
        metrics.stop(samples)


def _build(args: argparse.Namespace, api_key: str | None) -> tuple:
    from zoo import HashMismatchError

    from .api import build_server
    from .config import Limits

    values = {field: _limit_value(field, getattr(args, flag[2:].replace("-", "_")) * unit)
              for flag, field, unit, _ in LIMIT_FLAGS}
    limits = Limits(image=image_limits(args), **values)
    try:
        server = build_server(args.model, backend=args.backend, max_batch_size=args.max_batch_size,
                              batch_timeout=args.batch_timeout, batch_gap=args.batch_gap, workers=args.workers,
                              limits=limits, accelerator=args.accelerator, api_key=api_key, onnx_file=args.onnx_file,
                              index=args.index, search_k=args.search_k, max_search_k=args.max_search_k,
                              absolute_paths=args.absolute_paths, metrics_public=args.metrics_public)
    except (ValueError, LookupError, OSError, HashMismatchError) as e:  # a bad model source, file or option
        sys.exit(f"ssl-zoo serve: {e}")
    return server, limits


def _run(server, limits, args: argparse.Namespace, keyed: bool) -> None:
    from .api import uvicorn_options
    from .litserve_compat import request_shutdown
    from .worker import STOPPING

    stop = threading.Event()  # ends the readiness watch, before the shutdown makes /ready fail

    def shut_down(*_) -> None:
        stop.set()
        request_shutdown(server)

    def drain_then_shut_down(*_) -> None:  # SIGTERM (systemd, Kubernetes): not ready first, then stop
        STOPPING.set()
        threading.Timer(args.drain_seconds, shut_down).start()

    signal.signal(signal.SIGINT, shut_down)  # Ctrl-C: at once, without tracebacks
    signal.signal(signal.SIGTERM, drain_then_shut_down)
    threading.Thread(target=_announce, args=(server.model_metadata, args, keyed, stop), daemon=True).start()
    try:
        server.run(host=args.host, port=args.port, generate_client_file=False, log_level="error",
                   **uvicorn_options(limits, args.access_log))
    except RuntimeError as e:  # LitServe: a worker failed to start (its traceback is above)
        sys.exit(f"ssl-zoo serve: {e}")
    finally:
        stop.set()
    print("ssl-zoo serve: stopped", flush=True)


def _check_port_free(host: str, port: int) -> None:
    """Exit with one line if ``host:port`` cannot be listened on (before the model is loaded)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as e:
            sys.exit(f"ssl-zoo serve: cannot listen on {host}:{port}: {e.strerror}. Another server is probably "
                     f"using port {port}: stop it, or choose another port with --port")


def _announce(info: dict, args: argparse.Namespace, keyed: bool, stop: threading.Event) -> None:
    """Print one line when /ready first answers 200 (workers loaded and warm, index open, HTTP listening), then
    one per change."""
    loopback = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(args.host, args.host)
    url = f"http://{loopback}:{args.port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    announced = ready = False
    while not stop.is_set():
        try:
            ok = opener.open(f"{url}/ready", timeout=2).status == 200
        except (urllib.error.URLError, OSError):
            ok = False
        if stop.is_set():  # shutting down: /ready fails now, and that is no news
            return
        if ok and not announced:
            print(_ready_line(info, args, url, keyed), flush=True)
            announced = True
        elif announced and ok != ready:
            print("ssl-zoo serve: ready again" if ok else "ssl-zoo serve: not ready: /ready answers 503 until the "
                  "inference worker is back (restarting after a crash?)", file=sys.stderr, flush=True)
        ready = ok
        stop.wait(1.0 if announced else 0.2)


def _ready_line(info: dict, args: argparse.Namespace, url: str, keyed: bool) -> str:
    def described(model: dict) -> str:
        source = model.get("source") or "?"
        if model.get("revision"):
            source += f"@{model['revision'][:12]}"
        if model.get("sha256"):
            source += f", sha256 {model['sha256'][:12]}"
        return f"{model['model']} ({source}), {model['dim']}-d"

    where = "" if args.host == "127.0.0.1" else f" (listening on all interfaces, {args.host})"
    search = (("POST", "/search"),) if info.get("index") else ()
    routes = ", ".join(f"{m} {url}{p}" for m, p in (("POST", "/embed"), *search, ("POST", "/v1/embeddings"),
                                                      ("GET", "/v1/models"), ("GET", "/health"), ("GET", "/ready"),
                                                      ("GET", "/metrics"), ("GET", "/info")))
    open_routes = "/health, /ready" + (", /metrics" if args.metrics_public else "")
    return (f"ssl-zoo serve: ready: {'; '.join(described(m) for m in info['models'])}, backend {info['backend']}, "
            f"{args.workers} worker(s){where}; {routes}" + (f"; API key required except on {open_routes}" if keyed
                                                            else ""))


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """``ssl-zoo export-onnx``'s arguments."""
    p.add_argument("model", help="registry name, hf-hub:owner/name[@revision], or a local path")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--data", help="CIFAR-10 root for the parity check (default: as everywhere else)")
    p.add_argument("--quantize", choices=["int8"], help="write the graph quantised to int8 (onnxruntime static, "
                   "calibrated on CIFAR-10 training images, weights per channel), after checking its accuracy")
    p.add_argument("--max-accuracy-drop", type=float, default=0.5, help="with --quantize: points of weighted k-NN "
                   "the int8 graph may lose against fp32, else nothing is written (default %(default)s)")
    p.add_argument("--full-protocol", action="store_true", help="with --quantize: measure on the model-card "
                   "protocol (50,000 / 10,000 images) rather than the 5,000 / 1,000 check subset")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> None:
    import zoo
    from zoo.onnx import OPSET, check_parity, export_onnx, onnx_session

    encoder = zoo.load(args.model)
    if args.quantize:
        import tempfile
        from pathlib import Path

        from zoo.quantize import SETTINGS, quantize_int8, record_in_card

        with tempfile.TemporaryDirectory(prefix="ssl-zoo-export-") as tmp:
            fp32 = export_onnx(encoder, Path(tmp) / "fp32.onnx")
            report = quantize_int8(fp32, args.output, encoder, max_drop=args.max_accuracy_drop,
                                   full_protocol=args.full_protocol, data=args.data)
        protocol = report["protocol"]
        source = encoder.info.get("source", "")
        card = Path(source.removeprefix("local-dir:")) / "README.md"
        if source.startswith("local-dir:") and card.is_file():  # a model folder's card gets the numbers too
            record_in_card(card, report)
            print(f"recorded both numbers in {card}")
        print(f"wrote {args.output} (int8: {SETTINGS['weights']} weights, {SETTINGS['activations']} activations, "
              f"{SETTINGS['calibration']}); weighted k-NN (k=200, T=0.1, normalised; {protocol['train_images']} bank, "
              f"{protocol['test_images']} test images): fp32 {100 * report['knn200_fp32']:.2f} %, int8 "
              f"{100 * report['knn200_int8']:.2f} %; both in the file's metadata")
        return
    path = export_onnx(encoder, args.output)
    images = encoder.preprocess(zoo.load_cifar10("test", args.data).per_class(10).images)
    diff = check_parity(encoder, onnx_session(path), images)
    print(f"wrote {path} (opset {OPSET}, dynamic batch; preprocessing and provenance in its metadata); "
          f"onnx.checker passed; max |torch - onnxruntime| on {len(images)} CIFAR-10 test images: {diff:.2e}")


COMMANDS = {
    "serve": Command("serve a zoo encoder over HTTP (LitServe): /embed, OpenAI's /v1/embeddings, /search with --index",
                     "serving.cli:add_serve_arguments"),
    "export-onnx": Command("export a zoo encoder to ONNX and verify it against torch", "serving.cli:add_export_arguments"),
}
