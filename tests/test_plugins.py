from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest

from converter.errors import PluginError, UsageError
from converter.hookspecs import hookimpl
from converter.pass_api import Pass, PassContext, PassResult
from converter.plugin_manager import load_plugins
from converter.registry import PassRegistry
from tests.conftest import Cli


@dataclass(frozen=True)
class _NoOpts:
    pass


class _Noop(Pass[_NoOpts]):
    name = "noop"
    summary = "does nothing"
    Options = _NoOpts

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        return PassResult(model, False)


def test_builtins_register_through_hooks() -> None:
    plugins = load_plugins(entry_points_enabled=False)
    assert {"infer_shapes", "cleanup"} <= set(plugins.passes.names())
    assert {"ort", "onnx", "tensorrt"} <= set(plugins.backends.names())
    assert all(e.source == "builtin" for e in plugins.passes.entries())


def test_registry_rejects_duplicates_and_non_passes() -> None:
    reg = PassRegistry()
    reg.add(_Noop)
    with pytest.raises(PluginError, match="already registered"):
        reg.add(_Noop)
    with pytest.raises(PluginError, match="not a Pass subclass"):
        reg.add(int)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="unknown pass 'nope'; available: noop"):
        reg.get("nope")


def test_failing_plugin_hook_is_isolated() -> None:
    class Bad:
        @hookimpl
        def converter_register_passes(self, registry: PassRegistry) -> None:
            registry.add(_Noop)
            raise RuntimeError("boom")

    plugins = load_plugins(entry_points_enabled=False, extra={"bad": Bad()})
    assert "noop" not in plugins.passes, "a failed plugin's partial registrations are rolled back"
    assert plugins.failures[0].name == "bad" and "boom" in plugins.failures[0].error


def test_third_party_plugin_is_listed(cli_with_plugin: Cli) -> None:
    res = cli_with_plugin("plugins", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    passes = {p["name"]: p for p in data["passes"]}
    backends = {b["name"]: b for b in data["backends"]}
    assert passes["strip_docs"]["source"] == "example"
    assert passes["strip_docs"]["options"][0]["name"] == "metadata"
    assert backends["reference"]["available"] is True and backends["reference"]["source"] == "example"
    failed = {f["name"]: f["error"] for f in data["failed_plugins"]}
    assert "fails to import on purpose" in failed["broken"]
    assert "already registered by 'builtin'" in failed["duplicate"]
    assert passes["cleanup"]["source"] == "builtin"


def test_third_party_pass_and_backend_are_used_by_convert(cli_with_plugin: Cli, tiny_path: Path, tmp_path: Path) -> None:
    m = onnx.load(str(tiny_path))
    m.graph.node[0].doc_string = "exported by hand"
    onnx.save_model(m, str(tiny_path))
    out = tmp_path / "ref.onnx"
    golden = tmp_path / "golden"
    rec = cli_with_plugin("golden", "record", tiny_path, "--random-inputs", "--input-shapes", "x:5x4", "-o", golden)
    assert rec.returncode == 0, rec.stderr
    res = cli_with_plugin(tiny_path, "-p", "strip_docs,cleanup", "-b", "reference", "-o", out, "--golden", golden, "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["passes"][0]["name"] == "strip_docs" and report["passes"][0]["facts"]["doc_strings_removed"] == 1
    assert report["artifact"]["backend"] == "reference" and report["golden"]["passed"]
    assert not any(n.doc_string for n in onnx.load(str(out)).graph.node)
    check = cli_with_plugin("golden", "check", out, golden)
    assert check.returncode == 0, check.stderr


def test_third_party_subcommand_and_flag(cli_with_plugin: Cli, tiny_path: Path, tmp_path: Path) -> None:
    """The example plugin adds `convert opcount` and `--strip-docs-keep` without touching the core."""
    help_text = cli_with_plugin("--help").stdout
    assert "convert opcount" in help_text and "--strip-docs-keep" in help_text
    res = cli_with_plugin("opcount", tiny_path, "--top", "1", "--json")
    assert res.returncode == 0, res.stderr
    counts = json.loads(res.stdout)
    assert len(counts) == 1 and all(isinstance(v, int) and v > 0 for v in counts.values())
    bad = cli_with_plugin("opcount", tiny_path, "--top", "x")
    assert bad.returncode == 2 and bad.stderr.startswith("convert: error:") and len(bad.stderr.strip().splitlines()) == 1
    m = onnx.load(str(tiny_path))
    m.graph.node[0].doc_string = "KEEP me"
    m.graph.doc_string = "drop me"
    onnx.save_model(m, str(tiny_path))
    out = tmp_path / "kept.onnx"
    res = cli_with_plugin(tiny_path, "-p", "strip_docs", "--strip-docs-keep", "KEEP", "-b", "onnx", "-o", out, "--json")
    assert res.returncode == 0, res.stderr
    result = onnx.load(str(out))
    assert result.graph.node[0].doc_string == "KEEP me" and result.graph.doc_string == ""
    listed = json.loads(cli_with_plugin("plugins", "--json").stdout)
    assert {"name": "opcount", "help": OPCOUNT_HELP, "source": "example"} in listed["commands"]
    assert any(f["flag"] == "--strip-docs-keep" for f in listed["flags"])


OPCOUNT_HELP = "count the ops of a model (an example plugin's subcommand)"


def test_core_flags_cannot_be_taken_by_plugins() -> None:
    from converter.convert_args import convert_parser
    from converter.flags import OptionRegistry, PassInput

    class Greedy:
        @hookimpl
        def converter_add_options(self, registry: OptionRegistry) -> None:
            registry.add_pass_input(PassInput(key="seed2", flag="--seed", default=None, help="clash"))

    plugins = load_plugins(entry_points_enabled=False, extra={"greedy": Greedy()})
    with pytest.raises(PluginError, match="--seed, which convert already has"):
        convert_parser(plugins)
