"""``convert view``: netron served on loopback, started as a subprocess, fetched over loopback, stopped by a signal."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter import reporting
from converter.cli import main
from converter.view import serve
from converter.view.command import resolve_source

pytest.importorskip("netron")

TIMEOUT = 30.0


def _model(path: Path, op: str = "Relu", *, external: str | None = None) -> Path:
    """A one-node model; with ``external``, an Add whose constant is stored in that file beside it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    if external:
        w = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(1, 4), "w")
        graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [w])
    else:
        graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=external, size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def _sha(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def _artifact(tmp_path: Path, source: Path, sha: str) -> Path:
    (tmp_path / "out").mkdir()
    art = _model(tmp_path / "out" / "model.ort.onnx", "Sigmoid")
    manifest = {"backend": "ort", "source_model": str(source.resolve()), "source_model_sha256": sha}
    (art.parent / (art.name + ".manifest.json")).write_text(json.dumps(manifest))
    return art


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


class Viewer:
    """``convert view ...`` in a subprocess; its stdout read line by line on a thread, so reads can time out."""

    def __init__(self, *args: object, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")}
        self.proc = subprocess.Popen([sys.executable, "-m", "converter.cli", "view", *map(str, args)], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def report(self) -> dict:
        """The --json report: lines up to the closing brace of the document."""
        text, deadline = "", time.monotonic() + TIMEOUT
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"convert view ended before serving: rc={self.proc.wait()} {self.proc.stderr.read() if self.proc.stderr else ''}")
            text += line
            if line.rstrip("\n") == "}":
                doc = json.loads(text)
                reporting.validate(doc)  # the versioned document, as every --json
                return doc

    def stop(self, sig: int = signal.SIGINT, *, group: bool = False) -> tuple[int, str]:
        """Send ``sig`` to convert (or, as Ctrl-C in a terminal does, to its whole process group); its exit code and stderr."""
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()


@pytest.fixture
def viewers() -> Iterator[list[Viewer]]:
    started: list[Viewer] = []
    yield started
    for v in started:
        v.kill()


def test_serves_page_and_model_on_loopback_and_stops_on_sigint(tmp_path: Path, viewers: list[Viewer]) -> None:
    model = _model(tmp_path / "m.onnx")
    before = model.read_bytes()
    (tmp_path / "secret.txt").write_text("not for netron")
    v = Viewer("m.onnx", "--no-browser", "--port", "0", "--json", cwd=tmp_path)
    viewers.append(v)
    doc = v.report()
    assert doc["command"] == "view"
    [server] = doc["servers"]
    assert server["role"] == "model" and server["model"] == "m.onnx"
    url = server["url"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
    status, page = _get(url + "/")
    assert status == 200 and b"netron" in page.lower() and b'<meta name="file" content="/data/m.onnx">' in page
    status, data = _get(url + "/data/m.onnx")
    assert status == 200 and data == before
    assert _get(url + "/data/secret.txt")[0] == 404  # only the model, not its folder
    folder = _private_folder(page)
    assert folder.is_dir() and folder != tmp_path
    rc, err = v.stop(signal.SIGINT)
    assert rc == 0, err
    assert err.strip().splitlines()[-1] == "convert view: stopped (SIGINT)"
    assert "Traceback" not in err
    assert _port_closed(int(url.rsplit(":", 1)[1]))
    assert not folder.exists()
    assert model.read_bytes() == before


def _private_folder(page: bytes) -> Path:
    """The folder netron was given (named in the page), which holds links to the served files only."""
    found = re.search(rb'<meta name="name" content="([^"]+)">', page)
    assert found, page[:500]
    return Path(found.group(1).decode()).parent


@pytest.mark.parametrize(("sig", "group"), [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["sigterm", "ctrl-c-to-group"])
def test_source_serves_both_models_side_by_side(tmp_path: Path, viewers: list[Viewer], sig: int, group: bool) -> None:
    source = _model(tmp_path / "src.onnx", external="src.weights")
    art = _artifact(tmp_path, source, _sha(source, tmp_path / "src.weights"))
    v = Viewer(art, "--source", "--no-browser", "--port", "0", "--json", cwd=tmp_path)
    viewers.append(v)
    servers = {s["role"]: s for s in v.report()["servers"]}
    assert set(servers) == {"model", "source"} and servers["model"]["url"] != servers["source"]["url"]
    assert servers["source"]["model"] == str(source.resolve())
    pages = {role: _get(s["url"] + "/") for role, s in servers.items()}
    assert pages["model"][0] == 200 and b'content="/data/model.ort.onnx"' in pages["model"][1]
    assert pages["source"][0] == 200 and b'content="/data/src.onnx"' in pages["source"][1]
    assert _get(servers["model"]["url"] + "/data/model.ort.onnx") == (200, art.read_bytes())
    assert _get(servers["source"]["url"] + "/data/src.onnx") == (200, source.read_bytes())
    assert _get(servers["source"]["url"] + "/data/src.weights") == (200, (tmp_path / "src.weights").read_bytes())  # external data
    assert _get(servers["model"]["url"] + "/data/model.ort.onnx.manifest.json")[0] == 404
    folders = [_private_folder(page) for _, page in pages.values()]
    rc, err = v.stop(sig, group=group)
    assert rc == 0, err
    assert err.strip().splitlines()[-1] == f"convert view: stopped ({signal.Signals(sig).name})", err
    assert "Traceback" not in err
    assert all(_port_closed(int(s["url"].rsplit(":", 1)[1])) for s in servers.values())
    assert not any(f.exists() for f in folders)


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int, pattern: str) -> None:
    rc = main(["view", *argv, "--no-browser", "--port", "0"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == code, err
    assert len(lines) == 1 and lines[0].startswith("convert: error: "), err
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize(("name", "pattern"), [
    ("missing.onnx", "model file not found"),
    ("folder", "is not a file"),
    ("text.onnx", "is not an ONNX model|does not contain an ONNX graph"),
    ("empty.onnx", "does not contain an ONNX graph"),
])
def test_bad_model_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, pattern: str) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "text.onnx").write_text("this is not a model\n" * 10)
    (tmp_path / "empty.onnx").write_bytes(b"")
    _one_line_error(capsys, [str(tmp_path / name)], 2, pattern)


def test_source_sha_mismatch_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _model(tmp_path / "src.onnx")
    art = _artifact(tmp_path, source, "0" * 64)
    _one_line_error(capsys, [str(art), "--source"], 2, r"the source model .*src\.onnx has changed .*sha256 differs.*--source SOURCE\.onnx")


@pytest.mark.parametrize(("manifest", "pattern"), [
    (None, r"needs the artifact's manifest, and .*manifest\.json does not exist"),
    ({"backend": "ort", "source_model_sha256": "0" * 64}, "records no source_model"),
    ({"backend": "ort", "source_model": "/nonexistent/src.onnx", "source_model_sha256": "0" * 64}, "is not found: /nonexistent/src.onnx"),
])
def test_source_from_manifest_missing_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], manifest: dict | None, pattern: str) -> None:
    art = _model(tmp_path / "a.onnx")
    if manifest is not None:
        (tmp_path / "a.onnx.manifest.json").write_text(json.dumps(manifest))
    _one_line_error(capsys, [str(art), "--source"], 2, pattern)


def test_explicit_source_that_differs_is_a_note(tmp_path: Path) -> None:
    source = _model(tmp_path / "src.onnx")
    art = _artifact(tmp_path, source, _sha(source))
    other = _model(tmp_path / "other.onnx", "Tanh")
    files, note = resolve_source(art, str(other))
    assert files == [other] and note and "not the model" in note
    assert resolve_source(art, str(source)) == ([source], None)


def test_netron_missing_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "netron", None)  # import netron -> ImportError
    _one_line_error(capsys, [str(_model(tmp_path / "m.onnx"))], 3, r"needs netron.*pip install 'converter\[view\]'")


def test_port_in_use_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _model(tmp_path / "m.onnx")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = main(["view", str(model), "--no-browser", "--port", str(port)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"127.0.0.1:{port}" in err and "port is in use" in err


def test_source_port_in_use_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _model(tmp_path / "src.onnx")
    art = _artifact(tmp_path, source, _sha(source))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        if not _port_closed(port - 1) or port - 1 < 1024:
            pytest.skip("the port below the busy one is taken")
        rc = main(["view", str(art), "--source", "--no-browser", "--port", str(port - 1)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"127.0.0.1:{port}" in err and "port is in use" in err
    assert _port_closed(port - 1)  # the model's server, started first, was stopped


def test_without_hard_links_the_model_is_served_from_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    netron = serve.require_netron()
    (tmp_path / "plain").mkdir()
    plain = _model(tmp_path / "plain" / "m.onnx")
    weighted = _model(tmp_path / "w.onnx", external="w.bin")
    (tmp_path / "plain" / "secret.txt").write_text("no")

    def no_link(*_: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(serve.os, "link", no_link)
    s1 = serve.start_server(netron, serve.model_files(plain), role="model", host="127.0.0.1", port=0)
    try:  # one server at a time: netron keeps what it serves on a class shared by the servers of a process
        assert s1.exposed is None and _get(s1.url + "/data/m.onnx") == (200, plain.read_bytes())
        assert _get(s1.url + "/data/secret.txt")[0] == 404
    finally:
        serve.stop_server(netron, s1)
    assert _port_closed(s1.port)
    assert s1.folder is not None and not s1.folder.exists()
    s2 = serve.start_server(netron, serve.model_files(weighted), role="source", host="127.0.0.1", port=0)
    try:
        assert s2.exposed == tmp_path.resolve()  # external data that cannot be linked: netron serves the model's folder
        assert _get(s2.url + "/data/w.bin") == (200, (tmp_path / "w.bin").read_bytes())
    finally:
        serve.stop_server(netron, s2)
    assert _port_closed(s2.port)


def test_browser_is_a_note_never_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(serve.sys, "platform", "linux")
    assert "no display" in (serve.open_browser("http://127.0.0.1:1") or "")
    monkeypatch.setenv("DISPLAY", ":0")

    def broken(url: str) -> bool:
        raise OSError("no such browser")

    assert "could not open a browser" in (serve.open_browser("http://127.0.0.1:1", opener=broken) or "")
    assert "no browser found" in (serve.open_browser("http://127.0.0.1:1", opener=lambda u: False) or "")
    started = time.monotonic()
    assert serve.open_browser("http://127.0.0.1:1", opener=lambda u: time.sleep(30) or True, timeout=0.2) is None
    assert time.monotonic() - started < 5


def test_a_killed_viewer_leaves_nothing_after_the_next_run(tmp_path: Path, viewers: list[Viewer]) -> None:
    """SIGKILL cannot be caught: its private folder (links only) carries its owner, and the next `convert view` removes it."""
    _model(tmp_path / "m.onnx")
    first = Viewer("m.onnx", "--no-browser", "--port", "0", "--json", cwd=tmp_path)
    viewers.append(first)
    folder = _private_folder(_get(first.report()["servers"][0]["url"] + "/")[1])
    first.proc.kill()
    first.proc.wait(timeout=10)
    assert folder.is_dir()  # left by the kill
    second = Viewer("m.onnx", "--no-browser", "--port", "0", "--json", cwd=tmp_path)
    viewers.append(second)
    second.report()
    assert not folder.exists()
    rc, err = second.stop(signal.SIGINT)
    assert rc == 0, err
