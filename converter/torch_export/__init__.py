"""``convert export``: a PyTorch module → a checked ONNX model, with torch's outputs as the reference.

    spec.py         load ``package.module:factory`` (and an optional state dict)
    inputs.py       ``--input name:shape:dtype[:low..high]`` and seeded sample data
    dynamic.py      ``--dynamic NAME:AXIS=SYMBOL,...`` (default: dim 0 is the batch), trace and check sizes
    exporter.py     torch.onnx.export, the dynamo or the TorchScript exporter, dynamic axes
    dim_names.py    the written dim names are the user's symbols
    opset_check.py  the opset written, repair of opset-18 Split in older opsets, the ONNX checker
    verify.py       torch vs ONNX Runtime on the same inputs at several sizes of the dynamic axes
    golden_case.py  a golden case whose reference outputs are torch's
    job.py          the flow, atomic outputs
    then.py         ``--then``: continue with the main flow (passes → backend → golden check)
    command.py      the ``convert export`` subcommand (registered by this package)

torch is an optional dependency: no module here imports it at import time. The CLI calls
:func:`converter.torch_export.torch_env.require_torch` (exit 2 with the install line when it is missing)
and the torch module is passed to the functions that need it.
"""

from converter.command_api import CommandRegistry
from converter.hookspecs import hookimpl
from converter.torch_export.command import ExportCommand


@hookimpl
def converter_register_commands(registry: CommandRegistry) -> None:
    registry.add(ExportCommand)
