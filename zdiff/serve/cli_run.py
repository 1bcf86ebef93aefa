"""`zdiff serve`: load a checkpoint into the decode engine and serve it over HTTP (uvicorn)."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading

from ..checkpoint.store import SPEC_FILE, resolve_checkpoint
from ..errors import ZdiffError
from ..generation.cli_run import checkpoint_tokenizer, device_and_backend, resolve_dtype, stop_tokens_of
from ..spec import load_spec


def _import_server_packages():
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise ZdiffError(f"zdiff serve needs {exc.name}: pip install 'zdiff[serve]'") from None
    return uvicorn


def run_serve(args) -> int:
    uvicorn = _import_server_packages()
    from ..generation.engine import Engine
    from .app import ServedModel, build_app
    from .chat_template import ChatTemplate
    from .protocol import guarded_protocol
    from .schemas import SamplerDefaults

    _Server = _uvicorn_server_class()

    if args.api_key is not None and not args.api_key.strip():
        raise ZdiffError("--api-key is empty: every request would be refused; give a key, or leave the flag out")
    device, backend = device_and_backend(args)  # the same refusals as zdiff generate (triton on a CPU, ...)
    sock = bind_socket(args.host, args.port)  # a busy port is one line before minutes of loading
    checkpoint, note = resolve_checkpoint(args.checkpoint)  # a run directory: its final/ or latest checkpoint
    if note:
        print(f"zdiff: note: {note}", file=sys.stderr)
    chat_template = ChatTemplate.from_checkpoint(checkpoint, override=args.chat_template)  # before the weights load
    engine = Engine.from_checkpoint(
        checkpoint,
        backend=backend,
        device=device,
        dtype=resolve_dtype(args.dtype, device),
        max_slots=args.max_slots,
        max_len=args.max_len,
        proposals=args.proposals,
        verify_lengths=args.verify_lengths,
        expert_budgets=args.expert_budgets,
    )
    spec = load_spec(checkpoint / SPEC_FILE)
    tokenizer = checkpoint_tokenizer(checkpoint, spec)
    served = ServedModel(
        name=args.served_model_name or args.checkpoint,
        tokenizer=tokenizer,
        defaults=SamplerDefaults.from_spec(spec),
        stop_tokens=stop_tokens_of(checkpoint, tokenizer),
        max_len=args.max_len,
        chat_template=chat_template,
    )
    server = None

    def engine_died(message: str) -> None:
        logging.getLogger("uvicorn.error").error("the engine cannot serve any more requests (%s); shutting down",
                                                 message)
        server.should_exit = True  # uvicorn polls this flag; the exit status says the engine failed

    app = build_app(served, engine, max_queue=args.max_queue, api_key=args.api_key, on_engine_death=engine_died)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        http=guarded_protocol(args.header_timeout, args.body_timeout),
        timeout_keep_alive=args.keep_alive_timeout,
        h11_max_incomplete_event_size=args.max_header_bytes,
        timeout_graceful_shutdown=args.drain_timeout + 30.0,  # a backstop: the drain below ends requests first
    )
    server = _Server(config, app.state.worker, args.drain_timeout)
    # uvicorn drains on SIGTERM / SIGINT, then re-raises the signal to whatever handler was
    # there before it: with the default one the process would die by the signal after a clean
    # drain. These handlers make a drained shutdown exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    logging.getLogger("uvicorn.error").info("serving %s as model %r", checkpoint, served.name)
    try:
        server.run(sockets=[sock])
    finally:  # whatever ended the server, the engine thread ends here, not at interpreter exit
        for sig in (signal.SIGTERM, signal.SIGINT):  # the server has stopped: a late signal must not kill the
            signal.signal(sig, signal.SIG_IGN)  # exit (at finalization Python would restore the default handler)
        if not app.state.worker.abort(timeout=60.0):
            logging.getLogger("uvicorn.error").error("the engine thread did not stop within 60 s")
    return 0 if engine_healthy(app) else 1


def _uvicorn_server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """The first SIGTERM / SIGINT drains: requests in flight get `drain` seconds, then the engine cancels
        them, so every stream still ends with a last chunk. A second signal cancels them at once. Never
        uvicorn's forced exit: it abandons the engine thread and the open streams mid-step."""

        def __init__(self, config, worker, drain: float):
            super().__init__(config)
            self.worker, self.drain = worker, drain

        def handle_exit(self, sig, frame) -> None:
            self._captured_signals.append(sig)
            if self.should_exit:
                logging.getLogger("uvicorn.error").info("second signal: cancelling the requests in flight")
                self.worker.cancel_all()
                return
            self.should_exit = True
            timer = threading.Timer(self.drain, self.worker.cancel_all)
            timer.daemon = True
            timer.start()

    return Server


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket uvicorn serves on, bound here so that a taken address is a ZdiffError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ZdiffError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err}); "
                         "pick another --port, or stop what holds it") from None
    sock.set_inheritable(True)
    return sock


def engine_healthy(app) -> bool:
    return app.state.worker.dead is None
