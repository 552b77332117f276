"""Repack the PyPI `sal-detectron2` wheel into a pure-Python detectron2 wheel for any CPython 3.

Detectron2 is not on PyPI under its own name and its official install builds from source on
GitHub. `sal-detectron2==0.7.2` ships the full upstream Python package (with the model-zoo
configs) but only as a cp310 wheel whose `_C` extension was built for torch 2.3.1. Faster R-CNN
inference and region-feature extraction need none of `_C` (NMS and ROIAlign come from
torchvision), so we drop it and fix the metadata:

- delete `detectron2/_C*.so` and the stray top-level `tools/` package;
- mark the wheel pure (`py3-none-any`);
- drop `numpy<2` (clashes with pandas 3) and declare fvcore/iopath, which detectron2 imports;
- resolve model-zoo config paths from the module file instead of the removed `pkg_resources`.

Usage: python repack_detectron2.py IN.whl OUT_DIR   → OUT_DIR/sal_detectron2-0.7.2-py3-none-any.whl
"""

import base64
import hashlib
import os
import sys
import zipfile

DIST_INFO = "sal_detectron2-0.7.2.dist-info"
ADDED_REQUIREMENTS = ["fvcore>=0.1.5,<0.1.6", "iopath>=0.1.7,<0.1.10"]
PKG_RESOURCES_CALL = (
    'pkg_resources.resource_filename(\n        "detectron2.model_zoo", os.path.join("configs", config_path)\n    )'
)
FILE_RELATIVE_CALL = 'os.path.join(os.path.dirname(__file__), "configs", config_path)'


def keep(name: str) -> bool:
    if name.startswith("tools/"):
        return False
    if name.startswith("detectron2/_C") and name.endswith(".so"):
        return False
    return name != f"{DIST_INFO}/RECORD"


def patch(name: str, data: bytes) -> bytes:
    text = None
    if name == f"{DIST_INFO}/WHEEL":
        text = data.decode()
        text = text.replace("Root-Is-Purelib: false", "Root-Is-Purelib: true")
        text = text.replace("Tag: cp310-cp310-linux_x86_64", "Tag: py3-none-any")
    elif name == f"{DIST_INFO}/METADATA":
        lines = [ln for ln in data.decode().splitlines() if ln.strip() != "Requires-Dist: numpy<2"]
        # Unconditional requirements go before the first extra's section.
        at = next(i for i, ln in enumerate(lines) if ln.startswith("Provides-Extra:"))
        lines[at:at] = [f"Requires-Dist: {req}" for req in ADDED_REQUIREMENTS]
        text = "\n".join(lines) + "\n"
    elif name == f"{DIST_INFO}/top_level.txt":
        text = "detectron2\n"
    elif name == "detectron2/model_zoo/model_zoo.py":
        text = data.decode()
        if PKG_RESOURCES_CALL not in text:
            raise SystemExit("model_zoo.py does not look as expected; refusing to patch blindly")
        text = text.replace("import pkg_resources\n", "").replace(PKG_RESOURCES_CALL, FILE_RELATIVE_CALL)
    return data if text is None else text.encode()


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def main(argv=None) -> None:
    src, out_dir = argv if argv is not None else sys.argv[1:]
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "sal_detectron2-0.7.2-py3-none-any.whl")
    tmp = out + ".tmp"
    records = []
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.is_dir() or not keep(info.filename):
                continue
            data = patch(info.filename, zin.read(info))
            zout.writestr(info.filename, data)
            records.append(record_line(info.filename, data))
        records.append(f"{DIST_INFO}/RECORD,,")
        zout.writestr(f"{DIST_INFO}/RECORD", "\n".join(records) + "\n")
    os.replace(tmp, out)
    print(out)


if __name__ == "__main__":
    main()
