"""torchvision baseline for `sce-train bench augment` (docs/benchmarks.md).

Runs the same recipes as sce-data on one CPU thread and prints one JSON line with
`images_per_s` (source images through all views per second):

  cifar-asym       torchvision.transforms.v2 on uint8 CIFAR-sized images (weak + strong view)
  imagenet-2crop   torchvision.transforms (v1) on PIL images decoded from JPEG files, both
                   views including the GPU-stage ops of the reference code run on the CPU

usage: python torchvision_augment.py --pipeline cifar-asym [--images DIR] [--seconds 10]
needs: torch, torchvision, pillow, numpy
"""

import argparse
import glob
import io
import json
import os
import time

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T1
from torchvision.transforms import v2 as T2

torch.set_num_threads(1)
CIFAR = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def cifar_asym():
    weak = T2.Compose([
        T2.RandomResizedCrop(32, scale=(0.2, 1.0), antialias=True),
        T2.RandomHorizontalFlip(),
        T2.ToDtype(torch.float32, scale=True),
        T2.Normalize(*CIFAR),
    ])
    strong = T2.Compose([
        T2.RandomResizedCrop(32, scale=(0.2, 1.0), antialias=True),
        T2.RandomApply([T2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T2.RandomGrayscale(p=0.2),
        T2.RandomApply([T2.GaussianBlur(13, sigma=(0.1, 2.0))], p=0.5),
        T2.RandomHorizontalFlip(),
        T2.ToDtype(torch.float32, scale=True),
        T2.Normalize(*CIFAR),
    ])
    return lambda img: (weak(img), strong(img))


def imagenet_2crop():
    def view(blur_p, solarize_p):
        return T1.Compose([
            T1.RandomResizedCrop(224, scale=(0.2, 1.0)),
            T1.RandomApply([T1.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T1.RandomGrayscale(p=0.2),
            T1.RandomApply([T1.GaussianBlur(23, sigma=(0.1, 2.0))], p=blur_p),
            T1.RandomSolarize(128, p=solarize_p),
            T1.RandomHorizontalFlip(),
            T1.ToTensor(),
            T1.Normalize(*IMAGENET),
        ])
    v0, v1 = view(1.0, 0.0), view(0.1, 0.2)

    def apply(encoded):
        img = Image.open(io.BytesIO(encoded)).convert("RGB")
        return v0(img), v1(img)
    return apply


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pipeline", choices=["cifar-asym", "imagenet-2crop"], required=True)
    p.add_argument("--images")
    p.add_argument("--seconds", type=float, default=10.0)
    a = p.parse_args()
    if a.pipeline == "cifar-asym":
        files = sorted(glob.glob(os.path.join(a.images or "", "cifar10_*.png"))) if a.images else []
        if files:
            arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        else:
            arrays = [np.random.randint(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(64)]
        sources = [torch.from_numpy(x).permute(2, 0, 1).contiguous() for x in arrays]
        fn = cifar_asym()
    else:
        files = sorted(glob.glob(os.path.join(a.images, "*.jpg")))
        sources = [open(f, "rb").read() for f in files]
        fn = imagenet_2crop()
    for s in sources[:4]:
        fn(s)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < a.seconds:
        fn(sources[n % len(sources)])
        n += 1
    seconds = time.perf_counter() - start
    print(json.dumps({"baseline": "torchvision " + __import__("torchvision").__version__,
                      "pipeline": a.pipeline, "images_per_s": n / seconds, "threads": 1,
                      "images": n, "seconds": seconds}))


if __name__ == "__main__":
    main()
