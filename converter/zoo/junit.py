"""``--junit-xml PATH``: the zoo check as JUnit XML, for CI test reports (Jenkins, GitLab, GitHub actions).

One ``<testsuite name="zoo check">`` (its ``<properties>``: roots, mode, workers, backend) in a
``<testsuites>`` root; one ``<testcase classname="zoo.CASE" name="CHECK" time="SECONDS">`` per unit, in
discovery order, holding ``<failure>`` (the per-output table), ``<error>`` or ``<skipped>`` as its verdict
says. Elements and attributes are those of the common JUnit schema (Jenkins' junit-10.xsd, which GitLab
and GitHub reporters read). Text is stripped of the characters XML 1.0 cannot hold. The file is written
beside PATH and renamed into place.
"""

from __future__ import annotations

import io
import re
import socket
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

from converter.reporting import check_output_path, write_atomic
from converter.zoo.report import ZooReport
from converter.zoo.runner import ERROR, FAILED, SKIPPED

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: str) -> str:
    return _NOT_XML.sub("?", text)


def check_path(path: Path | None) -> None:
    """Refuse, before any work, a path that is a folder or has no folder to go in."""
    check_output_path(path, "--junit-xml", "zoo.xml")


def to_xml(report: ZooReport) -> ET.ElementTree:
    counts = report.counts()
    totals = {"tests": str(len(report.results)), "failures": str(counts[FAILED]), "errors": str(counts[ERROR]), "time": f"{report.wall_seconds:.3f}"}
    root = ET.Element("testsuites", {"name": "zoo check", **totals})
    suite = ET.SubElement(root, "testsuite", {"name": "zoo check", **totals, "skipped": str(counts[SKIPPED]), "hostname": socket.gethostname(),
                                              "timestamp": datetime.now(UTC).replace(microsecond=0).isoformat()})
    properties = ET.SubElement(suite, "properties")
    for name, value in (("roots", " ".join(report.roots)), ("mode", report.mode), ("workers", str(report.workers)), ("backend", report.backend or "")):
        ET.SubElement(properties, "property", {"name": name, "value": _clean(value)})
    for r in report.ordered():
        case = ET.SubElement(suite, "testcase", {"classname": _clean(f"zoo.{r['case']}"), "name": _clean(r["check"]), "time": f"{r['seconds']:.3f}"})
        if r["verdict"] == FAILED:
            node = ET.SubElement(case, "failure", {"message": _clean(r["note"]), "type": "GoldenMismatch" if r["golden"] else "CheckFailed"})
            node.text = _clean(r["details"] or r["note"])
        elif r["verdict"] == ERROR:
            node = ET.SubElement(case, "error", {"message": _clean(r["note"]), "type": "CaseError"})
            node.text = _clean(r["details"] or r["note"])
        elif r["verdict"] == SKIPPED:
            ET.SubElement(case, "skipped", {"message": _clean(r["note"])})
    ET.indent(root)
    return ET.ElementTree(root)


def write(path: Path, report: ZooReport) -> Path:
    """Write the XML to ``path`` atomically (temporary file + rename); returns the path."""
    check_path(path)
    data = io.BytesIO()
    to_xml(report).write(data, encoding="utf-8", xml_declaration=True)
    return write_atomic(path, data.getvalue())
