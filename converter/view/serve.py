"""Serving models with netron's own Python server (``netron.serve`` / ``netron.stop`` / ``netron.status``).

netron's server answers ``/`` (its page, told which file to open) and ``/data/PATH``: the model
itself and, for a model with external data, any other file below the *model's folder* (the page
asks for the external-data files by their relative location). So that a viewed model does not
expose its neighbours, each server is given a private temporary folder holding hard links to the
model and its external-data files only; where linking is impossible (another file system), a model
without external data is served from memory instead, and only a model with external data falls
back to netron serving its own folder, which is then said on stderr.

Nothing here knows about argparse; :mod:`converter.view.command` is the command line.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import webbrowser
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, Self

import onnx
from google.protobuf.message import DecodeError

from converter.errors import BackendUnavailable, ConverterError, ModelError, UsageError, describe_exception
from converter.external_data import check_external_data
from converter.staging import owned_folder

INSTALL_HINT = "pip install 'converter[view]'"

log = logging.getLogger("converter.view")


class NetronMissing(BackendUnavailable):
    """``convert view`` needs the ``netron`` package (exit 3)."""


def require_netron() -> ModuleType:
    """The ``netron`` module, or :class:`NetronMissing` saying how to install it."""
    try:
        import netron
    except ImportError:
        raise NetronMissing(f"convert view needs netron, which is not installed here; install it with: {INSTALL_HINT}") from None
    return netron


def model_files(path: Path) -> list[Path]:
    """Check cheaply that ``path`` is a readable ONNX model; return it and its external-data files (each once).

    The model is parsed without its external data (which is only checked: inside the model's folder,
    present, large enough); nothing is validated further, since a viewer should show broken models too.
    """
    if not path.exists():
        raise ModelError(f"model file not found: {path}; check the path")
    if not path.is_file():
        raise ModelError(f"{path} is not a file; pass the path of an .onnx file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{path} is not an ONNX model (protobuf parse failed: {describe_exception(exc, 120)})") from exc
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelError(f"{path} does not contain an ONNX graph; pass a model exported to .onnx")
    return [path, *check_external_data(proto, path)]


@dataclass
class Server:
    """One running netron server: which model, where, and what it can hand out."""

    model: Path
    role: str
    host: str
    port: int
    folder: Path | None = None
    """The private folder made for this server (removed by :func:`stop_server`)."""
    exposed: Path | None = None
    """The model's own folder, when netron serves it directly (external data that could not be linked)."""
    process: Any = None
    """For a server in a child process (:func:`start_server_process`): the process, and ``conn`` its pipe."""
    conn: Any = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def to_json(self) -> dict[str, str]:
        return {"model": str(self.model), "url": self.url, "role": self.role}


@dataclass
class _Staged:
    file: Path
    data: bytearray | None
    folder: Path | None
    exposed: Path | None


def _link_all(files: Sequence[Path], folder: Path) -> bool:
    """Hard-link the model and its external data into ``folder`` at their relative places; False if any link fails."""
    base = files[0].parent
    try:
        for f in files:
            target = folder / f.relative_to(base)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(f, target)
    except (OSError, ValueError):
        return False
    return True


def _stage(files: Sequence[Path], role: str) -> _Staged:
    """What to hand netron so that it can serve these files and no others (see the module docstring)."""
    model = files[0]
    folder = owned_folder(Path(tempfile.gettempdir()))  # removed on stop; after a SIGKILL, by the next run (its owner is dead)
    served = folder / model.name
    if _link_all(files, folder):
        return _Staged(served, None, folder, None)
    if len(files) == 1:
        try:
            data = bytearray(model.read_bytes())  # a bytearray: netron treats other objects as in-memory models to convert
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise ModelError(f"cannot read {model}: {exc.strerror or exc}") from exc
        return _Staged(served, data, folder, None)
    shutil.rmtree(folder, ignore_errors=True)
    return _Staged(model, None, None, model.resolve().parent)


@contextmanager
def _quiet_netron_logging() -> Iterator[None]:
    """netron.serve calls ``logging.basicConfig`` when the root logger has no handler; leave the root logger alone."""
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)
    try:
        yield
    finally:
        root.removeHandler(guard)


def start_server(netron: ModuleType, files: Sequence[Path], *, role: str, host: str, port: int | None) -> Server:
    """Serve ``files[0]`` (with its external data ``files[1:]``) on ``host:port``; ``port`` None is netron's choice, 0 any free port.

    Raises :class:`UsageError` when the address cannot be bound (port in use, unknown host).
    """
    staged = _stage(files, role)
    if staged.exposed is not None:
        log.info("%s: netron serves %s from its own folder %s", role, files[0], staged.exposed)
    else:
        log.info("%s: netron serves %s through the private folder %s%s", role, files[0], staged.folder, " (from memory)" if staged.data is not None else "")
    try:
        with _quiet_netron_logging():
            bound = netron.serve(str(staged.file), staged.data, address=(host, port), browse=False)
    except (OSError, OverflowError, ValueError) as exc:
        if staged.folder is not None:
            shutil.rmtree(staged.folder, ignore_errors=True)
        where = f"{host}:{port}" if port else host
        hint = " (the port is in use: pick another with --port, or --port 0 for any free one)" if getattr(exc, "errno", None) == errno.EADDRINUSE else ""
        raise UsageError(f"cannot serve {files[0]} on {where}: {describe_exception(exc, 160)}{hint}") from exc
    return Server(model=files[0], role=role, host=host, port=int(bound[1]), folder=staged.folder, exposed=staged.exposed)


def _serve_in_child(files: list[Path], role: str, host: str, port: int | None, conn: Any) -> None:
    """The child process of :func:`start_server_process`: serve, report the port, stop when told (or when the parent is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    try:
        netron = require_netron()
        server = start_server(netron, files, role=role, host=host, port=port)
    except ConverterError as exc:
        conn.send(("error", str(exc), exc.exit_code))
        return
    try:
        conn.send(("ok", server.port, server.folder, server.exposed))
        conn.recv()  # "stop"; EOFError when the parent died
    except (EOFError, OSError):
        pass
    finally:
        stop_server(netron, server)


def start_server_process(files: Sequence[Path], *, role: str, host: str, port: int | None, timeout: float = 60.0) -> Server:
    """:func:`start_server` in a child process: one process serves one model only.

    netron's server keeps what it serves on its request-handler *class*, shared by every server of a
    process, so a second ``netron.serve`` in the same process would make the first one serve the second model.
    """
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that already runs server threads
    conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=_serve_in_child, args=(list(files), role, host, port, child_conn), name=f"convert-view-{role}", daemon=True)
    proc.start()
    child_conn.close()
    try:
        reply = conn.recv() if conn.poll(timeout) else None
    except EOFError:
        reply = None
    if reply is None or reply[0] != "ok":
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
        conn.close()
        if reply is None:
            raise UsageError(f"could not start the server for {files[0]} (its process ended with code {proc.exitcode}; see the messages above)")
        error = UsageError(reply[1])
        error.exit_code = reply[2]
        raise error
    _, bound, folder, exposed = reply
    return Server(model=files[0], role=role, host=host, port=bound, folder=folder, exposed=exposed, process=proc, conn=conn)


def server_alive(netron: ModuleType, server: Server) -> bool:
    if server.process is not None:
        return bool(server.process.is_alive())
    return bool(netron.status(server.address))


def stop_server(netron: ModuleType, server: Server, timeout: float = 3.0) -> None:
    """Stop the server (its port is closed on return), wait for its thread or process, remove its private folder."""
    if server.process is not None:
        try:
            server.conn.send("stop")
        except OSError:
            pass
        server.process.join(timeout)
        if server.process.is_alive():
            server.process.terminate()
            server.process.join(timeout)
        server.conn.close()
        if server.folder is not None:
            shutil.rmtree(server.folder, ignore_errors=True)
        return
    with _quiet_netron_logging():
        netron.stop(server.address)
        deadline = time.monotonic() + timeout
        while netron.status(server.address) and time.monotonic() < deadline:
            time.sleep(0.02)
    if server.folder is not None:
        shutil.rmtree(server.folder, ignore_errors=True)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def browser_likely() -> bool:
    """A graphical browser can probably be opened: macOS, Windows, a display on Linux, or ``$BROWSER`` set."""
    if os.environ.get("BROWSER"):
        return True
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_browser(url: str, *, opener: Callable[[str], bool] | None = None, timeout: float = 5.0) -> str | None:
    """Open ``url`` in a browser without ever hanging or raising; returns a note when none was opened.

    ``webbrowser`` may fall back to a console browser that holds the call until it exits, so it runs
    in a daemon thread that is waited for ``timeout`` seconds at most.
    """
    if not browser_likely():
        return "no display found, so no browser was opened; open the URL yourself (from another machine: ssh -L PORT:127.0.0.1:PORT HOST)"
    open_url = opener or (lambda u: webbrowser.open(u, new=2))
    opened: list[bool] = []
    failed: list[BaseException] = []

    def target() -> None:
        try:
            opened.append(bool(open_url(url)))
        except Exception as exc:  # noqa: BLE001  webbrowser.Error, OSError from a broken $BROWSER: a note, not a failure
            failed.append(exc)

    thread = threading.Thread(target=target, name="convert-view-browser", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return None  # still starting (or a console browser that holds the call): carry on serving
    if failed:
        return f"could not open a browser ({describe_exception(failed[0], 120)}); open {url} yourself"
    if not (opened and opened[0]):
        return f"no browser found; open {url} yourself"
    return None


class StopSignals:
    """SIGINT and SIGTERM set an event instead of raising, from ``__enter__`` on, so none is lost between start-up and waiting.

    Outside the main thread (embedded use) signals cannot be caught; then Ctrl-C still ends the wait as KeyboardInterrupt.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: str | None = None
        self._old: dict[int, object] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name
        self.event.set()

    def __enter__(self) -> Self:
        try:
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not the main thread
            self._restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old.clear()

    def wait(self, alive: Callable[[], bool], poll: float = 0.2) -> str:
        """Block until a signal arrives or ``alive()`` turns false; returns what ended the wait."""
        try:
            while not self.event.wait(poll):
                if not alive():
                    return "a server stopped unexpectedly"
        except KeyboardInterrupt:
            return "SIGINT"
        return self.received or "a signal"
