"""The Pass contract: a named, documented transformation of an ONNX model.

A pass is a class with a stable ``name`` (what users type), a one-line
``summary``, a frozen options dataclass ``Options`` and ``run(model, ctx)``.
It may change the model it receives in place and returns a :class:`PassResult`
saying whether it did, with its own facts. Passes never print: they log
through ``ctx.log``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Generic, Literal, TypeVar

import onnx

from converter.flags import PassInputs
from converter.options import NoOptions
from converter.staging import SideFiles

Precision = Literal["fp32", "fp16", "int8"]

OptionsT = TypeVar("OptionsT")


@dataclass
class PassResult:
    """What a pass did: the model after it, whether it changed, and its facts."""

    model: onnx.ModelProto
    modified: bool
    facts: dict[str, Any] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    """Things the pass chose not to do, each with its reason."""


class Effect(Enum):
    """What a pass may change besides node contents; instruments around passes are chosen by it."""

    BATCH = "batch"
    """Which dims are dynamic (the batch): ``--verify`` then proves batch N == N stacked batch-1 runs."""


@dataclass
class PassContext:
    """What a pass may use besides the model: a logger, a seed, the model's folder, user inputs."""

    log: logging.Logger
    seed: int = 0
    model_dir: str | None = None
    inputs: PassInputs = field(default_factory=PassInputs)
    """Values of the flags plugins registered (``converter_add_options``), read as ``ctx.inputs.get(MY_INPUT)``."""
    side_files: SideFiles = field(default_factory=SideFiles)
    """Files to write besides the artifact (e.g. a calibration cache): declared here, committed with the artifact
    only when the run succeeds. A pass never writes files itself."""


class Pass(ABC, Generic[OptionsT]):
    """Base class of every pass; subclasses set ``name``, ``summary``, ``Options``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    output_precision: ClassVar[Precision | None] = None
    """Set by passes that lower precision (fp16, qdq): verification then uses that tolerance."""
    effects: ClassVar[frozenset[Effect]] = frozenset()
    """What the pass changes besides node contents (e.g. ``{Effect.BATCH}``); instruments act on it."""

    def __init__(self, options: OptionsT) -> None:
        self.options = options

    @abstractmethod
    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        """Transform ``model`` (in place or not) and report what happened."""
