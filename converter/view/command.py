"""``convert view MODEL [--source [SOURCE]]``: open a model in netron, served on this machine until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from converter import reporting
from converter.artifacts import read_manifest
from converter.backend_api import manifest_path_for
from converter.command_api import Command
from converter.errors import EXIT_INTERNAL, EXIT_OK, UsageError
from converter.model_io import sha256_of_files
from converter.plugin_manager import Plugins
from converter.view.serve import (
    INSTALL_HINT,
    Server,
    StopSignals,
    is_loopback,
    model_files,
    open_browser,
    require_netron,
    server_alive,
    start_server,
    start_server_process,
    stop_server,
)

DESCRIPTION = """Open MODEL in netron (the viewer of netron.app), served by netron's own Python server on this machine.

Prints 'serving MODEL at URL' (with --json, a report with the URLs) and serves until Ctrl-C
(SIGINT) or SIGTERM, then stops and exits 0. The page is served on 127.0.0.1 by default; the
server hands out the model (and its external-data files) only: they are hard-linked into a
private temporary folder that netron serves (or the model is served from memory).

With --source, the model an artifact was converted from is served too, on a second port
(--port N + 1, or any free port), for a side-by-side view in two tabs: SOURCE if given, else
the source_model recorded in the artifact's manifest (MODEL.manifest.json), which must still
have the sha256 recorded there. Write --source after MODEL (or as --source=SOURCE).

Note: netron's page itself may contact the internet (ipinfo.io, usage telemetry) when a browser
opens it; the model is never sent anywhere by it. Needs the netron package: """ + INSTALL_HINT

EPILOG = """examples:
  convert view model.onnx                       open it in a browser (where one can be opened)
  convert view model.onnx --no-browser --port 0 serve on a free port; open the printed URL yourself
  convert view out/model.int8.onnx --source     the artifact and the model it was converted from
  ssh -L 8080:127.0.0.1:8080 HOST               then open http://127.0.0.1:8080 here (remote machine)

exit codes: 0 stopped by Ctrl-C or SIGTERM, 2 bad model, port in use, missing or changed source,
3 netron not installed (""" + INSTALL_HINT + """), 4 internal error."""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0-65535; 0 = any free port)")
    return value


def resolve_source(model: Path, given: str) -> tuple[list[Path], str | None]:
    """The source model's files (model first) for ``--source [given]``, and a note for stderr, if any.

    Without ``given``, the manifest beside ``model`` must name an existing ``source_model`` whose sha256
    (with its external data, as ``convert`` computed it) is the recorded ``source_model_sha256``.
    """
    mp = manifest_path_for(model)
    manifest = read_manifest(model)
    recorded_sha = str((manifest or {}).get("source_model_sha256") or "")
    if given:
        files = model_files(Path(given))
        if recorded_sha and sha256_of_files(files) != recorded_sha:
            return files, f"{given} is not the model {model} was converted from (its sha256 differs from the one in {mp})"
        return files, None
    hint = "; name the source model: --source SOURCE.onnx"
    if manifest is None:
        raise UsageError(f"--source without a path needs the artifact's manifest, and {mp} does not exist{hint}")
    recorded = manifest.get("source_model")
    if not recorded:
        raise UsageError(f"{mp} records no source_model (made by an older converter?){hint}")
    if not recorded_sha:
        raise UsageError(f"{mp} records no source_model_sha256, so the source model {recorded} cannot be checked{hint}")
    path = Path(str(recorded))
    if not path.is_file():
        raise UsageError(f"the source model recorded in {mp} is not found: {path} (moved or deleted?){hint}")
    files = model_files(path)
    if sha256_of_files(files) != recorded_sha:
        raise UsageError(f"the source model {path} has changed since {model} was made (its sha256 differs from the one recorded in {mp}){hint}")
    return files, None


def _note(text: str) -> None:
    print(f"convert view: note: {text}", file=sys.stderr, flush=True)


def _announce(servers: list[Server], as_json: bool) -> None:
    if as_json:
        reporting.emit("view", {"servers": [s.to_json() for s in servers]})
    else:
        for s in servers:
            print(f"serving {s.model} at {s.url}", flush=True)
    for s in servers:
        if s.exposed is not None:
            _note(f"{s.model}'s external data could not be linked into a private folder, so {s.url}/data/ serves every file below {s.exposed}")
    if servers and not is_loopback(servers[0].host):
        _note(f"serving on {servers[0].host}: anyone who can reach this machine on these ports can fetch the model")


class ViewCommand(Command):
    name = "view"
    help = "open a model (and an artifact's source model) in netron, served locally until Ctrl-C"
    description = DESCRIPTION
    epilog = EPILOG

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.add_argument("model", type=Path, metavar="MODEL", help="the .onnx model or artifact to view (only read)")
        parser.add_argument("--port", type=_port, default=None, help="port to serve on (default: netron's choice, 8080 if free; 0 = any free port)")
        parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1, this machine only)")
        parser.add_argument("--no-browser", action="store_true", help="do not open a browser; just print the URL")
        parser.add_argument("--source", nargs="?", const="", default=None, metavar="SOURCE",
                            help="also serve the source model on a second port: SOURCE, else the one the artifact's manifest records (checked by sha256)")

    def run(self, args: argparse.Namespace, plugins: Plugins) -> int:
        netron = require_netron()
        files = model_files(args.model)
        source: list[Path] | None = None
        if args.source is not None:
            source, note = resolve_source(args.model, args.source)
            if note:
                _note(note)
        source_port = args.port
        if source is not None and args.port:
            if args.port == 65535:
                raise UsageError("--source serves on --port + 1, and 65535 is the last port; pick a lower --port")
            source_port = args.port + 1
        servers: list[Server] = []
        with StopSignals() as signals:  # from here on, Ctrl-C stops the servers cleanly
            try:
                servers.append(start_server(netron, files, role="model", host=args.host, port=args.port))
                if source is not None:
                    servers.append(start_server_process(source, role="source", host=args.host, port=source_port))
                _announce(servers, args.json)
                if not args.no_browser:
                    for note in dict.fromkeys(n for n in (open_browser(s.url) for s in servers) if n):
                        _note(note)
                print("convert view: press Ctrl-C to stop", file=sys.stderr, flush=True)
                why = signals.wait(lambda: all(server_alive(netron, s) for s in servers))
            finally:
                for s in servers:
                    stop_server(netron, s)
        print(f"convert view: stopped ({why})", file=sys.stderr, flush=True)
        return EXIT_INTERNAL if why == "a server stopped unexpectedly" else EXIT_OK
