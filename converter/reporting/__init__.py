"""Report documents: the versioned JSON every command can print, and the HTML page made from it.

    document.py           SCHEMA_ID, document(), emit() (``--json``), schema(), validate()
    page.py               --report: add_report_flag(), check_report_path(), write_page(); any output: check_output_path(), write_atomic()
    report-1.schema.json  the JSON Schema of ``converter.report/1``
"""

from __future__ import annotations

from converter.reporting.document import SCHEMA_ID, document, emit, schema, to_text, validate
from converter.reporting.page import add_report_flag, check_output_path, check_report_path, write_atomic, write_page

__all__ = ["SCHEMA_ID", "add_report_flag", "check_output_path", "check_report_path", "document", "emit", "schema", "to_text", "validate", "write_atomic", "write_page"]
