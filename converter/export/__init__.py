"""``convert export``: a PyTorch module → a checked ONNX model, with torch's outputs as the reference.

    spec.py         load ``package.module:factory`` (and an optional state dict)
    inputs.py       ``--input name:shape:dtype[:low..high]`` and seeded sample data
    exporter.py     torch.onnx.export, the dynamo or the TorchScript exporter, dynamic batch
    opset_check.py  the opset written, repair of opset-18 Split in older opsets, the ONNX checker
    verify.py       torch vs ONNX Runtime on the same inputs at several batch sizes
    golden_case.py  a golden case whose reference outputs are torch's
    job.py          the flow, atomic outputs
    then.py         ``--then``: continue with the main flow (passes → backend → golden check)

torch is an optional dependency: nothing here imports it at module level except ``exporter``,
``verify`` and ``job``, which the CLI imports only after :func:`converter.export.torch_env.require_torch`.
"""
