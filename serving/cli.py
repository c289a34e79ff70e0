"""``ssl-zoo serve`` and ``ssl-zoo export-onnx``."""

from __future__ import annotations

import argparse
import os
import signal


def register_serve(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a zoo encoder over HTTP (LitServe)")
    p.add_argument("model", help="registry name, Hub id (owner/name[@revision]) or local directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    p.add_argument("--max-batch-size", type=int, default=16, help="requests merged into one model call")
    p.add_argument("--batch-timeout", type=float, default=0.05,
                   help="longest wait, in seconds from its first request, to fill a batch")
    p.add_argument("--batch-gap", type=float, default=0.008,
                   help="start the batch once no request has come for this many seconds")
    p.add_argument("--workers", type=int, default=1, help="inference workers per device")
    p.add_argument("--max-images", type=int, default=64, help="images per request")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, help="pixels per image (decompression-bomb guard)")
    p.add_argument("--max-body-mb", type=float, default=32, help="request body size limit")
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn access log)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--api-key", help="require this key in the X-API-Key header (default: $LIT_SERVER_API_KEY; "
                   "set one for non-loopback deployments)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> None:
    if args.api_key:  # litserve reads it when imported
        os.environ["LIT_SERVER_API_KEY"] = args.api_key
    from .api import Limits, build_server

    def stop(*_):  # SIGTERM shuts down like Ctrl-C: LitServe then stops its worker processes
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)

    limits = Limits(args.max_images, args.max_pixels, int(args.max_body_mb * 1024 * 1024))
    server = build_server(args.model, backend=args.backend, max_batch_size=args.max_batch_size,
                          batch_timeout=args.batch_timeout, batch_gap=args.batch_gap, workers=args.workers,
                          limits=limits, accelerator=args.accelerator)
    try:
        server.run(host=args.host, port=args.port, generate_client_file=False, access_log=args.access_log)
    except KeyboardInterrupt:
        pass


def register_export(subparsers) -> None:
    p = subparsers.add_parser("export-onnx", help="export a zoo encoder to ONNX and verify it against torch")
    p.add_argument("model", help="registry name, Hub id or local directory")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--data", help="CIFAR-10 root for the parity check (default: as everywhere else)")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> None:
    import zoo

    from .onnx_export import OPSET, export_onnx, max_abs_diff, onnx_session

    encoder = zoo.load(args.model)
    path = export_onnx(encoder, args.output, encoder.config.input_size)
    images = encoder.preprocess(zoo.load_cifar10("test", args.data).per_class(10).images)
    diff = max_abs_diff(encoder, onnx_session(path), images)
    print(f"wrote {path} (opset {OPSET}, dynamic batch); onnx.checker passed; "
          f"max |torch - onnxruntime| on {len(images)} CIFAR-10 test images: {diff:.2e}")
    if diff >= 1e-4:
        raise RuntimeError(f"ONNX parity check failed: max abs diff {diff:.2e} >= 1e-4")
