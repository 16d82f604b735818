from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from converter.errors import UsageError
from converter.options import build_options, option_infos
from converter.pipeline_text import Step, parse_pipeline


def test_pipeline_parses_names_and_options() -> None:
    steps = parse_pipeline('fold_constants, dynamic_batch{dim=1,name=batch},qdq{calibrator=entropy,ops=[Conv,Gemm],note="a,b"}')
    assert steps == [
        Step("fold_constants"),
        Step("dynamic_batch", {"dim": "1", "name": "batch"}),
        Step("qdq", {"calibrator": "entropy", "ops": "[Conv,Gemm]", "note": "a,b"}),
    ]


@pytest.mark.parametrize("text", ["a,,b", "a{x=1", "a{x}", "a}b", "a{x=1,x=2}", "9bad", 'a{x="1}'])
def test_pipeline_rejects_malformed_text(text: str) -> None:
    with pytest.raises(UsageError):
        parse_pipeline(text)


def test_empty_pipeline() -> None:
    assert parse_pipeline("") == [] and parse_pipeline(None) == []


@dataclass(frozen=True)
class Opts:
    count: int = field(default=3, metadata={"help": "how many"})
    ratio: float = 0.5
    flag: bool = False
    mode: Literal["fast", "exact"] = "fast"
    names: tuple[str, ...] = ()
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must be >= 0")


def test_options_are_typed() -> None:
    o = build_options(Opts, {"count": "7", "ratio": "0.25", "flag": "yes", "mode": "exact", "names": "[a,b]", "limit": "none"}, "pass 'x'")
    assert o == Opts(7, 0.25, True, "exact", ("a", "b"), None)
    assert build_options(Opts, {"names": "a|b|c"}, "x").names == ("a", "b", "c")
    assert build_options(Opts, {}, "x") == Opts()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"cout": "1"}, "unknown option 'cout'; valid options: count, flag, limit, mode, names, ratio"),
        ({"count": "many"}, "'many' is not an integer"),
        ({"flag": "maybe"}, "not a boolean"),
        ({"mode": "slow"}, "'slow' is not one of fast, exact"),
        ({"count": "-1"}, "count must be >= 0"),
    ],
)
def test_bad_options_name_the_problem(raw: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("|", r"\|")):
        build_options(Opts, raw, "pass 'x'")


def test_option_infos_document_fields() -> None:
    infos = {i.name: i for i in option_infos(Opts)}
    assert infos["count"].help == "how many" and infos["count"].default == 3
    assert infos["mode"].type_text == "fast|exact"
    assert infos["limit"].type_text == "int | none"


def test_every_builtin_numeric_option_has_a_range() -> None:
    """DESIGN: every numeric option has a documented range (shown by `convert passes`, enforced when parsed)."""
    import dataclasses
    from typing import get_type_hints

    from converter.options import _numeric
    from converter.plugin_manager import load_plugins

    plugins = load_plugins(entry_points_enabled=False)
    missing = []
    for entry in [*plugins.passes.entries(), *plugins.backends.entries()]:
        hints = get_type_hints(entry.cls.Options)
        for f in dataclasses.fields(entry.cls.Options):
            if _numeric(hints[f.name]) is not None and "range" not in f.metadata:
                missing.append(f"{entry.cls.name}.{f.name}")
    assert not missing, f"numeric options without a range: {missing}"


@pytest.mark.parametrize("text, message", [
    ("ort{threads=1000000}", "threads': 1000000 is outside its range [0, 256]"),
    ("ort{threads=99999999999999999999999999999999}", "is outside its range [0, 256]"),
    ("ort{threads=-1}", "is outside its range"),
])
def test_out_of_range_backend_options_are_usage_errors(cli, tiny_path, tmp_path, text: str, message: str) -> None:  # noqa: ANN001
    res = cli(tiny_path, "-b", text, "-o", tmp_path / "o.onnx")
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("pipeline", ["qdq{percentile=nan}", "qdq{samples=0}", "fold_constants{size_limit_mib=inf}", "fp16{max_finite_val=1e9}"])
def test_out_of_range_pass_options_are_usage_errors(pipeline: str) -> None:
    from converter.pass_manager import build_passes
    from converter.pipeline_text import parse_pipeline
    from converter.plugin_manager import load_plugins

    with pytest.raises(UsageError, match="range|finite"):
        build_passes(parse_pipeline(pipeline), load_plugins(entry_points_enabled=False).passes)


def test_long_user_text_is_clipped_in_messages(cli) -> None:  # noqa: ANN001
    res = cli("model.onnx", "-p", "x" * 100_000)
    assert res.returncode == 2 and len(res.stderr) < 600, len(res.stderr)
