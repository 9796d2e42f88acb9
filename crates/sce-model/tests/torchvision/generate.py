"""Writes torchvision's ResNet state-dict keys and shapes (without `fc`), one per line, for the
export test in ../export_names.rs:

    python crates/sce-model/tests/torchvision/generate.py

Needs torch and torchvision; the committed lists were made with torch 2.15.0, torchvision 0.29.2.
"""
from pathlib import Path

import torchvision

HERE = Path(__file__).parent
for name in ["resnet18", "resnet50"]:
    state = getattr(torchvision.models, name)().state_dict()
    lines = [
        f"{key} {list(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"
        for key, tensor in state.items()
        if not key.startswith("fc.")
    ]
    (HERE / f"{name}.txt").write_text("\n".join(lines) + "\n")
    print(f"{name}: {len(lines)} tensors")
