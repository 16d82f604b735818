"""Every artifact keeps the model's interface; the ort backend keeps IR-3 style weight inputs working.

The classic model-zoo CNNs that the onnx wheel ships as "light" models (AlexNet ... ZFNet-512, IR 3,
every weight listed as a graph input with an initializer default) came out of `-b ort` requiring
hundreds of inputs: ONNX Runtime's saved optimized model drops initializers it folded but keeps them as
graph inputs. Now such weights become plain initializers before ONNX Runtime sees them, and the
interface is checked after every emit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from converter.backend_api import TensorSpec
from converter.interface import interface_changes, plain_initializers
from tests.conftest import TINY_TEXT, Cli, parse

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
ZOO = sorted(p.name.removeprefix("light_").removesuffix(".onnx") for p in LIGHT.glob("light_*.onnx"))


def test_the_light_zoo_is_there() -> None:
    assert len(ZOO) == 9, ZOO


@pytest.mark.parametrize("name", ["bvlc_alexnet", "squeezenet", "resnet50"])
def test_zoo_cnn_keeps_its_interface_through_ort(cli: Cli, tmp_path: Path, name: str) -> None:
    src = LIGHT / f"light_{name}.onnx"
    model = onnx.load(str(src))
    inits = {t.name for t in model.graph.initializer}
    assert model.ir_version == 3 and sum(vi.name in inits for vi in model.graph.input) > 10, "weights are overridable inputs"
    out = tmp_path / "m.onnx"
    res = cli(src, "-b", "ort", "-o", out)
    assert res.returncode == 0, res.stderr
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    required = [i.name for i in sess.get_inputs()]
    assert required == [vi.name for vi in model.graph.input if vi.name not in inits]
    source = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in source.get_inputs()[0].shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ref = source.run(None, {required[0]: x})[0]
    got = sess.run(None, {required[0]: x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * float(np.abs(ref).max()))


def test_plain_initializers_drops_weight_inputs_and_bumps_ir() -> None:
    model = onnx.load(str(LIGHT / "light_squeezenet.onnx"))
    dropped = plain_initializers(model)
    assert len(dropped) == len(model.graph.initializer) and len(model.graph.input) == 1 and model.ir_version == 4
    onnx.checker.check_model(model)


def test_interface_changes_are_named() -> None:
    model = parse(TINY_TEXT)  # x: float[N, 4] -> y: float[N, 3]
    ok = [TensorSpec("x", "float32", ("N", 4))], [TensorSpec("y", "float32", ("batch", 3))]
    assert interface_changes(model, *ok) == []
    bad_inputs = [TensorSpec("x", "float16", ("N", 4)), TensorSpec("w", "float32", (4, 3))]
    changes = interface_changes(model, bad_inputs, [TensorSpec("y", "float32", (2, 3))])
    assert "input 'x' changed dtype float32 → float16" in changes
    assert "input 'w' is new (the model had no such input)" in changes
    assert "output 'y' dim 0 changed [N, 3] → [2, 3]" in changes
    assert interface_changes(model, [TensorSpec("x", "float32", ("N",))], ok[1]) == ["input 'x' changed rank [N, 4] → [N]"]
