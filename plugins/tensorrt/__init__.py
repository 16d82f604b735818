"""The ``tensorrt`` backend: engines with optimization profiles; precision comes from the graph.

Public contract: the backend and its options, the profile helpers (pure, tested without a
GPU), and :data:`SHAPE_FLAGS`, the trtexec-style flags this plugin adds to ``convert``
(``--min-shapes``/``--opt-shapes``/``--max-shapes``/``--batch`` become the backend's options).
TensorRT and cuda-python are imported only when an engine is built or run.
"""

from converter.flags import BackendFlag
from converter.plugins.tensorrt._backend import SUPPORTED_MAJORS, TensorRTBackend, TensorRTOptions, engine_manifest
from converter.plugins.tensorrt._profiles import (
    InputRange,
    Profile,
    build_profiles,
    parse_batch,
    parse_shape_list,
    profiles_from_json,
    profiles_to_json,
    select_profile,
)

_SHAPES = "shapes for engine backends (trtexec style; they become backend options)"
SHAPE_FLAGS = (
    BackendFlag("min_shapes", "--min-shapes", "e.g. 'x:1x3x224x224,mask:1x128'; ';' separates profiles", "SHAPES", _SHAPES),
    BackendFlag("opt_shapes", "--opt-shapes", "opt shapes, same syntax as --min-shapes", "SHAPES", _SHAPES),
    BackendFlag("max_shapes", "--max-shapes", "max shapes, same syntax as --min-shapes", "SHAPES", _SHAPES),
    BackendFlag("batch", "--batch", "profile for a model whose only dynamic dim is the batch, e.g. 1..8..32", "MIN..OPT..MAX", _SHAPES),
)

__all__ = [
    "SHAPE_FLAGS",
    "SUPPORTED_MAJORS",
    "InputRange",
    "Profile",
    "TensorRTBackend",
    "TensorRTOptions",
    "build_profiles",
    "engine_manifest",
    "parse_batch",
    "parse_shape_list",
    "profiles_from_json",
    "profiles_to_json",
    "select_profile",
]
