"""The model's interface before and after conversion, and the artifact with its manifest (versions, hashes, pipeline).

Interfaces are ``{"inputs": [{"name", "dtype", "shape"}], "outputs": [...]}``; a dim is an int, a symbol
name, or unknown (None, -1, "?"). An input or output whose dtype or shape differs from before is marked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from converter.html_report import generic
from converter.html_report.page import Markup, badge, code, dims, esc, items, join, kv, mapping, section, table

_HEAD_KEYS = ("backend", "pipeline", "created", "converter_version")


def _spec_rows(specs: list[Any], other: Mapping[str, tuple[str, str]] | None) -> tuple[list[list[Any]], list[str]]:
    rows, marks = [], []
    for s in (mapping(x) for x in specs):
        name, dtype, shape = str(s.get("name", "?")), str(s.get("dtype", "?")), dims(s.get("shape"))
        changed = other is not None and name in other and other[name] != (dtype, shape)
        rows.append([name, dtype, shape, "changed" if changed else ("new" if other is not None and name not in other else "")])
        marks.append("warn" if changed or (other is not None and name not in other) else "")
    return rows, marks


def _specs_by_name(side: Mapping[str, Any], key: str) -> dict[str, tuple[str, str]]:
    return {str(mapping(s).get("name", "?")): (str(mapping(s).get("dtype", "?")), dims(mapping(s).get("shape"))) for s in items(side.get(key))}


def interface_tables(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> Markup:
    """Inputs and outputs, before and after side by side (after's rows marked where they differ)."""
    parts = []
    for key in ("inputs", "outputs"):
        sides = []
        for label, side, other in (("before", before, None), ("after", after, _specs_by_name(before, key) if before else None)):
            if side is None:
                continue
            rows, marks = _spec_rows(items(side.get(key)), other)
            head = ["name", "dtype", "dims"] + (["vs before"] if other is not None else [])
            rows = [r if other is not None else r[:3] for r in rows]
            sides.append(join([f"<div><h4>{esc(key)} {esc(label)}</h4>", table(head, rows, row_classes=marks), "</div>"]))
        parts.append(join(['<div class="sides">', *sides, "</div>"]))
    return join(parts)


def interface_section(doc: Mapping[str, Any], anchor: str = "interface") -> Markup | None:
    iface = mapping(doc.get("interface"))
    before, after = mapping(iface.get("before")) or None, mapping(iface.get("after")) or None
    note = "what the model takes and gives, as loaded and as the artifact runs it; ? is a dynamic or unknown dim"
    if before is None and after is None:
        manifest = mapping(mapping(doc.get("artifact")).get("manifest"))
        if not (manifest.get("inputs") or manifest.get("outputs")):
            return None
        after, note = manifest, "the artifact's inputs and outputs (from its manifest); ? is a dynamic or unknown dim"
    return section("Inputs and outputs", interface_tables(before, after), anchor, note=note)


def manifest_parts(manifest: Mapping[str, Any]) -> Markup:
    """The manifest: what made it (versions), what it is (hashes), how (pipeline), then every other key."""
    versions = {k: v for k, v in manifest.items() if k.endswith("_version") or k == "versions"}
    hashes = {k: v for k, v in manifest.items() if "sha256" in k and not isinstance(v, (Mapping, list))}
    head = {k: manifest[k] for k in _HEAD_KEYS if k in manifest and k not in versions}
    flat_versions: dict[str, Any] = {}
    for k, v in versions.items():
        if isinstance(v, Mapping):
            flat_versions.update({str(a): b for a, b in v.items()})
        else:
            flat_versions[k.removesuffix("_version")] = v
    parts = []
    if head:
        parts.append(kv({k: code(v) if k == "pipeline" else v for k, v in head.items()}))
    sides = []
    if flat_versions:
        sides.append(join(["<div><h4>Versions</h4>", kv(flat_versions), "</div>"]))
    if hashes:
        sides.append(join(["<div><h4>Hashes (sha256)</h4>", kv({k: code(v) for k, v in hashes.items()}), "</div>"]))
    if sides:
        parts.append(join(['<div class="sides">', *sides, "</div>"]))
    shown = set(versions) | set(hashes) | set(head) | {"inputs", "outputs"}
    rest = {k: v for k, v in manifest.items() if k not in shown}
    if rest:
        parts.append("<h4>Everything else the manifest records</h4>")
        parts.append(generic.obj(rest, limit=60))
    return join(parts)


def artifact_section(artifact: Mapping[str, Any], anchor: str = "artifact") -> Markup:
    files = items(artifact.get("files"))
    parts = []
    if "files" in artifact and not files:
        parts.append('<p class="verdict">' + badge(False, "NOT WRITTEN") + " the artifact was built but not written (a failed check; --keep-failed writes it anyway)</p>")
    parts.append(kv({"path": code(artifact.get("path", "?")), "backend": artifact.get("backend"),
                     "files": Markup("<br>".join(str(code(f)) for f in files)) if files else None}))
    manifest = mapping(artifact.get("manifest"))
    if manifest:
        parts.append("<h3>Manifest</h3>")
        parts.append(manifest_parts(manifest))
    return section("Artifact and manifest", join(parts), anchor, note="what was written, the versions that made it and the hashes that identify it")
