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
from typing import Any, ClassVar, Generic, Literal, TypeVar

import onnx

from converter.options import NoOptions

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


@dataclass
class PassContext:
    """What a pass may use besides the model: a logger, a seed, a work folder."""

    log: logging.Logger
    seed: int = 0
    model_dir: str | None = None
    calib_data: str | None = None
    """``--calib-data``: an .npz, a folder of images with a preprocessing spec, or ``module:function``."""
    calib_random: bool = False
    """``--calib-random``: the user explicitly allowed seeded random calibration data."""


class Pass(ABC, Generic[OptionsT]):
    """Base class of every pass; subclasses set ``name``, ``summary``, ``Options``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    output_precision: ClassVar[Precision | None] = None
    """Set by passes that lower precision (fp16, qdq): verification then uses that tolerance."""
    changes_batch: ClassVar[bool] = False
    """Set by passes that make the batch dimension dynamic: ``--verify`` then proves batch N == N stacked batch-1 runs."""

    def __init__(self, options: OptionsT) -> None:
        self.options = options

    @abstractmethod
    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        """Transform ``model`` (in place or not) and report what happened."""
