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
