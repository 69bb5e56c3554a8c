"""`stylerig serve`: run the engine server (docs/protocol.md)."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the engine server for the Blender add-on (local socket, token-protected)",
        description="Serve the engine on 127.0.0.1 (and a Unix socket where available). Prints one JSON line "
        'on stdout when listening: {"event": "listening", "host", "port", "unix", '
        '"token_file", "pid", "protocol", "server"}. Stops on SIGINT/SIGTERM or a shutdown request.',
    )
    p.add_argument(
        "--generator",
        default="synthetic",
        help="synthetic | random:RES | a weights name or PATH (stylegan2.load_generator) | "
        "py:MODULE:FUNCTION (default: synthetic)",
    )
    p.add_argument(
        "--rignet", metavar="DIR", help="trained DFR + RigNets (enables fit and rig-driven renders)"
    )
    p.add_argument(
        "--allow-generator-mismatch",
        action="store_true",
        help="serve a --rignet trained for another generator with the same W+ shape (experts: its edits are "
        "probably meaningless); refused by default",
    )
    p.add_argument(
        "--model", metavar="NAME|PATH", help="face model (default: the generator's, else ICT default)"
    )
    p.add_argument(
        "--oracle-fit",
        action="store_true",
        help="fit with the generator's exact ground truth (synthetic world only; for testing the add-on)",
    )
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; anything else exposes the engine to the network)",
    )
    p.add_argument(
        "--port", type=int, default=0, help="TCP port (default 0: any free port, printed on stdout)"
    )
    p.add_argument("--no-tcp", action="store_true", help="listen on the Unix socket only")
    p.add_argument(
        "--unix", metavar="PATH", help="Unix socket path (default: in the private runtime directory)"
    )
    p.add_argument("--no-unix", action="store_true", help="no Unix socket")
    p.add_argument(
        "--token-file",
        metavar="PATH",
        help="where to write this run's token (0600; default: in the private runtime directory)",
    )
    p.add_argument("--max-batch", type=int, default=8, help="most images per generator call (default 8)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--max-connections", type=int, default=64)
    p.add_argument("--max-payload-mb", type=int, default=256, help="largest request payload accepted (MiB)")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    import socket

    import torch
    from stylerig_addon import protocol as P

    from stylerig_engine.engine import EngineError, build_engine

    from .service import EngineServer, default_paths
    from .worker import WorkerConfig

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: binding {args.host}: the engine is reachable from the network (token-protected)",
            file=sys.stderr,
        )
    token_file, unix_path = default_paths()
    token_file = args.token_file or token_file
    if args.unix:
        unix_path = args.unix
    if args.no_unix or not hasattr(socket, "AF_UNIX"):
        unix_path = None
    if args.no_tcp and unix_path is None:
        print("error: --no-tcp needs a Unix socket", file=sys.stderr)
        return 2
    try:
        engine = build_engine(
            args.generator,
            rignet=args.rignet,
            model=args.model,
            device=device,
            oracle_fit=args.oracle_fit,
            max_batch=args.max_batch,
            allow_generator_mismatch=args.allow_generator_mismatch,
        )
    except (EngineError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    server = EngineServer(
        engine,
        host=args.host,
        port=None if args.no_tcp else args.port,
        unix_path=unix_path,
        token_file=token_file,
        max_connections=args.max_connections,
        limits=P.Limits(max_header=1 << 20, max_payload=args.max_payload_mb << 20),
        worker_config=WorkerConfig(max_batch=args.max_batch),
    )
    try:
        info = server.start()
    except OSError as e:
        print(f"error: cannot listen: {e}", file=sys.stderr)
        return 1

    def stop(signum, _frame):
        threading.Thread(target=server.shutdown, name="stylerig-signal-shutdown", daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(json.dumps(info), flush=True)
    while not server.wait(0.5):  # a short wait keeps the main thread responsive to signals
        pass
    print(json.dumps({"event": "stopped"}), flush=True)
    return 0
