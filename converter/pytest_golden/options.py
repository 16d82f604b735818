"""The plugin's command-line and ini options, and the session state they turn into.

Nothing here imports the converter: a pytest run that names no golden folder pays for
three option definitions and one ``None`` check per collected directory, nothing more.

Which folders are collected:

- every ``--golden-dir DIR`` (relative to the invocation folder), always;
- every ``golden_dirs`` ini line (relative to the ini file's folder), when pytest was started
  without positional arguments (like ``testpaths``: ``pytest tests/test_x.py`` runs that file only);
- a case folder given as a positional argument (``pytest golden/NAME``) when it lies in one of
  those folders. A golden folder that overlaps a positional argument is not added again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MANIFEST = "manifest.json"


@dataclass
class GoldenState:
    """What this session was asked for; kept in ``config.stash`` (one per process, so per xdist worker)."""

    roots: list[Path]
    update: bool
    backends: frozenset[str] | None
    """``--golden-backend`` names: only checks on these backends are collected (None: all)."""
    recorded: list[tuple[str, str]] = field(default_factory=list)
    """(node id, note) of each re-recorded case, gathered from the reports (xdist sends them to the controller)."""
    _plugins: Any = None

    def covers(self, path: Path) -> bool:
        p = Path(os.path.abspath(path))
        return any(p == r or r in p.parents for r in self.roots)

    def converter_plugins(self) -> Any:
        """The converter's passes and backends (built-ins and entry points), loaded once per process."""
        if self._plugins is None:
            from converter.plugin_manager import load_plugins

            self._plugins = load_plugins()
        return self._plugins


STATE = pytest.StashKey[GoldenState]()


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("golden", "golden cases (converter)")
    group.addoption("--golden-dir", action="append", default=[], dest="golden_dirs", metavar="DIR",
                    help="a golden case folder (with manifest.json), or a folder searched for them; repeatable")
    group.addoption("--golden-update", action="store_true", dest="golden_update",
                    help="re-record the reference outputs of the selected golden cases on ONNX Runtime (one test per case)")
    group.addoption("--golden-backend", action="append", default=[], dest="golden_backends", metavar="NAME",
                    help="collect only golden checks on this backend (name without options); repeatable")
    parser.addini("golden_dirs", "golden case folders, relative to the ini file (collected when no test paths are given)", type="linelist", default=[])


def _absolute(base: Path, text: str) -> Path:
    return Path(os.path.abspath(base / os.path.expanduser(text)))


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def _arg_path(config: pytest.Config, arg: str) -> Path:
    return _absolute(config.invocation_params.dir, arg.split("::", 1)[0])


def configure(config: pytest.Config) -> None:
    """Resolve the golden folders; without any, leave the session untouched."""
    cli = [_absolute(config.invocation_params.dir, d) for d in config.getoption("golden_dirs") or []]
    base = config.inipath.parent if config.inipath is not None else config.rootpath
    ini = [_absolute(base, d) for d in config.getini("golden_dirs") or []]
    update, backends = config.getoption("golden_update"), config.getoption("golden_backends")
    if not cli and not ini:
        if update or backends:
            flag = "--golden-update" if update else "--golden-backend"
            raise pytest.UsageError(f"{flag} needs golden case folders: pass --golden-dir DIR or set golden_dirs in the ini file")
        return
    for where, dirs in (("--golden-dir", cli), ("golden_dirs (ini)", ini)):
        for d in dirs:
            if not d.is_dir():
                raise pytest.UsageError(f"{where}: {d} is not a folder")
    roots = list(dict.fromkeys([*cli, *ini]))
    config.stash[STATE] = GoldenState(roots, bool(update), frozenset(backends) if backends else None)
    explicit = config.args_source == pytest.Config.ArgsSource.ARGS
    taken = [_arg_path(config, a) for a in config.args]
    for root in list(dict.fromkeys([*cli, *([] if explicit else ini)])):
        if not any(_overlaps(root, t) for t in taken):
            config.args.append(str(root))
            taken.append(root)
    config.addinivalue_line("markers", "golden: a golden case check (converter.pytest_golden)")
    for precision in ("fp32", "fp16", "int8"):
        config.addinivalue_line("markers", f"precision_{precision}: golden check judged by the {precision} tolerances")


def state_of(config: pytest.Config) -> GoldenState | None:
    return config.stash.get(STATE, None)
