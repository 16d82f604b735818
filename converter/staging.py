"""Where everything is written before it is committed: staging folders, side files, the commit itself.

The promises (README, "Nothing lost, nothing leaked"): nothing is written outside a staging
folder until the final commit; the commit renames staged files into place with signals
held back, manifest last (so a reader that finds a manifest finds the files it hashes); a
failed, interrupted (SIGINT/SIGTERM) or killed run leaves nothing behind. A killed
(SIGKILL) run cannot clean up after itself, so each staging folder carries an owner file
(pid and process start time) and the next run in that folder removes those of dead owners.

Side files are files a pass writes besides the artifact (a calibration cache): the pass
declares them on ``ctx.side_files``; they are checked when declared (never the input model,
its data, or the artifact; an existing file only when the pass recognises it as its own)
and committed with the artifact, only when the run succeeds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from converter.errors import UsageError

PREFIX = ".converter-tmp-"
OWNER = ".owner"


def _start_time(pid: int) -> str:
    """The process's start time (Linux /proc), '' where unknown: tells a reused pid from the owner."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not started or _start_time(pid) in ("", started)


def remove_stale(directory: Path) -> list[Path]:
    """Remove staging folders and temp files in ``directory`` whose owning process is gone."""
    removed = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if not entry.name.startswith(PREFIX):
            continue
        owner = entry / OWNER if entry.is_dir() else None
        try:
            text = owner.read_text() if owner else entry.name[len(PREFIX):].split(".", 1)[0].replace("-", " ", 1)
            pid_text, _, started = text.strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            continue  # not ours, or another run is creating it right now
        if pid != os.getpid() and not _alive(pid, started):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _missing_parents(directory: Path) -> list[Path]:
    missing = []
    d = directory
    while not d.exists():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    return missing


@contextlib.contextmanager
def staging_folder(directory: Path) -> Iterator[Path]:
    """A fresh staging folder inside ``directory`` (created, parents too, if needed).

    On any exit the folder is removed; on failure, so are the parent folders this call created.
    """
    created = _missing_parents(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {directory}: {exc.strerror or exc}") from exc
    remove_stale(directory)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=PREFIX, dir=directory))
    except OSError as exc:
        _remove_dirs(created)
        raise UsageError(f"cannot write in the output folder {directory}: {exc.strerror or exc}") from exc
    ok = False
    try:
        (tmp / OWNER).write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
        yield tmp
        ok = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not ok:
            _remove_dirs(created)


def owned_folder(directory: Path) -> Path:
    """A new folder in ``directory`` (which must exist) marked with this process as its owner, for a caller that removes it
    itself; folders there whose owners died (a SIGKILL) are removed first, as the next run does for staging folders."""
    remove_stale(directory)
    tmp = Path(tempfile.mkdtemp(prefix=PREFIX, dir=directory))
    (tmp / OWNER).write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    return tmp


def _remove_dirs(created: Sequence[Path]) -> None:
    for d in created:  # deepest first
        with contextlib.suppress(OSError):
            d.rmdir()


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block ends (the renames of a commit are not cut in half)."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@dataclass(frozen=True)
class SideFile:
    path: Path
    data: bytes
    what: str


@dataclass
class SideFiles:
    """Files passes write besides the artifact, held until the commit."""

    protected: list[Path] = field(default_factory=list)
    """The input model, its external data, the artifact and its manifest: never a side file."""
    files: list[SideFile] = field(default_factory=list)

    def check(self, path: str | Path, what: str, replace_ok: Callable[[Path], bool]) -> Path:
        """Refuse (UsageError, exit 2) a path that must not be written; returns it absolute."""
        p = Path(path).absolute()
        if p.is_dir():
            raise UsageError(f"{what} {path} is a folder; give a file path")
        for q in self.protected:
            if _same(p, q):
                raise UsageError(f"{what} {path} is {q}, a file this run reads or writes; choose another path")
        if p.exists() and not replace_ok(p):
            raise UsageError(f"{what} {path} exists and is not a {what}; refusing to overwrite it (delete it or choose another path)")
        if p.parent.exists() and not p.parent.is_dir():
            raise UsageError(f"{what} {path}: {p.parent} is not a folder")
        return p

    def add(self, path: str | Path, data: bytes, what: str, replace_ok: Callable[[Path], bool]) -> None:
        self.files.append(SideFile(self.check(path, what, replace_ok), data, what))

    def stage(self) -> list[tuple[Path, Path]]:
        """Write each side file to a temp file beside its target; returns (staged, final) pairs."""
        pairs = []
        try:
            for f in self.files:
                f.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f"{PREFIX}{os.getpid()}-{_start_time(os.getpid())}.", dir=f.path.parent)
                pairs.append((Path(tmp), f.path))
                with os.fdopen(fd, "wb") as fh:
                    fh.write(f.data)
        except OSError as exc:
            discard(pairs)
            raise UsageError(f"cannot write {f.what} {f.path}: {exc.strerror or exc}") from exc
        return pairs


def discard(pairs: Sequence[tuple[Path, Path]]) -> None:
    for staged, _ in pairs:
        staged.unlink(missing_ok=True)


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def commit_files(pairs: Sequence[tuple[Path, Path]]) -> None:
    """Rename staged files onto their targets in order, with SIGINT/SIGTERM held until all are in place."""
    with signals_held():
        for staged, final in pairs:
            os.replace(staged, final)
