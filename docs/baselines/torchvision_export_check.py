"""Loads a trunk written by `sce-train export` into torchvision and compares its embeddings with
those `sce-train embed` wrote for the same images (docs/export.md):

    python docs/baselines/torchvision_export_check.py EXPORT.safetensors EMBEDDINGS.safetensors IMAGE_DIR

EXPORT.json (written beside the export) says how to build the torchvision module and how to
normalise inputs. The images must already be input_size × input_size and the run's
`eval.crop_fraction` 1.0, so that sce-train's evaluation transform is only the normalisation
(otherwise the two resizers differ and so do the embeddings).
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision  # noqa: F401  (used by the builder line)
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

export, embeddings, images = (Path(a) for a in sys.argv[1:4])
info = json.loads(export.with_suffix(".json").read_text())
if info["torchvision"] is None:
    sys.exit(f"no torchvision ResNet matches width {info['width']}")
scope = {"torch": torch, "torchvision": torchvision}
exec(info["torchvision"], scope)
model = scope["model"]
state = load_file(export)
model.load_state_dict(state, strict=True)
model.eval()
print(f"load_state_dict(strict=True): {len(state)} tensors accepted")

with safe_open(embeddings, "pt") as f:
    ours = f.get_tensor("embeddings")
    names = json.loads(f.metadata()["names"])

mean = torch.tensor(info["normalization"]["mean"]).view(-1, 1, 1)
std = torch.tensor(info["normalization"]["std"]).view(-1, 1, 1)
mode = "L" if info["in_channels"] == 1 else "RGB"
batch = []
for name in names:
    # `embed` names each image by its path under IMAGE_DIR.
    image = Image.open(images / name).convert(mode)
    assert image.size == (info["input_size"],) * 2, f"{name} is {image.size}"
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    pixels = pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1)
    batch.append((pixels - mean) / std)
with torch.no_grad():
    theirs = torch.nn.functional.normalize(model(torch.stack(batch)), dim=1)
diff = (theirs - ours).abs().max().item()
print(f"{len(names)} images: max |torchvision - sce-train embed| = {diff:.3g}")
sys.exit(0 if diff < 1e-4 else 1)
