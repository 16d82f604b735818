"""Each case's model, found once per case in the driver, and the bytes that travel to Ray workers.

The driver resolves a case's model (its manifest's source: a file, a path, an installed package)
and checks it is the model the case was recorded from (sha256 of the model and its external-data
files, as ``convert golden record`` wrote it) once per case, not once per check. A case whose model
cannot be found or differs gives every one of its checks an ``error`` verdict without running them.

Local workers get the model's path (one file system). Ray workers may be other machines: the
driver packs each distinct model (by sha256) and each case folder's manifest and data sets once,
``ray.put``s them, and every task writes them into its own temporary folder (:func:`unpack`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converter.errors import ConverterError
from converter.golden import MANIFEST, load_case, recorded_files
from converter.golden_manifest import data_set_folders
from converter.model_io import sha256_of_files
from converter.zoo.cases import Unit

Files = dict[str, bytes]
"""Relative path -> content."""


@dataclass(frozen=True)
class Source:
    """Where a case's model is (``model``), or why it cannot be used (``error``, one line)."""

    model: Path | None
    files: tuple[Path, ...] = ()
    """The model file first, then its external-data files (all in the model's folder)."""
    sha256: str = ""
    error: str | None = None


def resolve(case_name: str, case_dir: Path) -> Source:
    """The case's model, checked against the sha256 its manifest recorded."""
    try:
        case = load_case(case_dir)
        model = case.model_path()
        files = recorded_files(model)
        digest = sha256_of_files(files)
    except ConverterError as exc:
        return Source(None, error=str(exc).removeprefix(f"golden case {case_name}: "))
    except OSError as exc:
        return Source(None, error=f"cannot read the model of {case_dir}: {exc}")
    recorded = case.manifest.get("model", {}).get("sha256")
    if recorded and digest != recorded:
        return Source(None, error=f"{model} is not the model this case was recorded from (sha256 differs); if it changed on purpose, "
                                  "re-record the case ('convert golden record ... --force', or 'pytest --golden-update')")
    return Source(model, tuple(files), digest)


def pack_model(source: Source) -> Files:
    """The model file and its external data, by path relative to the model's folder."""
    assert source.model is not None
    base = source.model.parent
    return {str(f.relative_to(base)): f.read_bytes() for f in source.files}


def pack_case(case_dir: Path) -> Files:
    """What :func:`converter.golden.load_case` reads: the manifest and the data set folders."""
    out = {MANIFEST: (case_dir / MANIFEST).read_bytes()}
    for folder in data_set_folders(case_dir):
        for f in sorted(folder.iterdir()):
            if f.is_file():
                out[f"{folder.name}/{f.name}"] = f.read_bytes()
    return out


def _write(folder: Path, files: Files) -> None:
    for rel, data in files.items():
        target = (folder / rel).resolve()
        if not target.is_relative_to(folder.resolve()):
            raise ValueError(f"refusing to write {rel!r} outside {folder}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def unpack(tmp: Path, model_name: str, model: Files, case: Files, case_name: str) -> tuple[Path, Path]:
    """Write a packed model and case under ``tmp``; returns (model path, case folder)."""
    model_dir, case_dir = tmp / "model", tmp / case_name
    _write(model_dir, model)
    _write(case_dir, case)
    return model_dir / model_name, case_dir


def safe_name(text: str) -> str:
    """A folder name for a case (its name may hold anything a manifest can)."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip(".")
    return cleaned[:60] or "case"



def resolve_all(units: list[Unit]) -> dict[str, Source]:
    """Each case's :class:`Source`, resolved once (by case folder) for all its checks."""
    out: dict[str, Source] = {}
    for unit in units:
        if unit.check is not None and unit.case_dir not in out:
            out[unit.case_dir] = resolve(unit.case, Path(unit.case_dir))
    return out
