"""PyTorch eager baseline for `sce-train bench step` (docs/benchmarks.md).

The asymmetric small-dataset SCE step of the reference code, on synthetic input: the target
(ResNet-18 small stem + projector, no grad, train-mode BN) encodes the weak view, the online
branch the strong view; SCE loss against a 4096-key queue; backward; SGD (momentum 0.9,
wd 5e-4); EMA of the target (m = 0.99); enqueue. `--model resnet50`: the symmetric two-view
ImageNet step (projector 2048-4096-4096-256, predictor 256-4096-256, 224x224), plain SGD in
place of LARS. Prints one JSON line with source images per second.

usage: python torch_step.py --model resnet18-cifar --batch 64 [--steps 3] [--threads 2]
"""

import argparse
import copy
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


def mlp(dims, last_bn=False, last_bias=True):
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        bn = (not last) or last_bn
        layers.append(nn.Linear(a, b, bias=not bn and last_bias))
        if bn:
            layers.append(nn.BatchNorm1d(b, affine=not last))
        if not last:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def build(model):
    if model == "resnet18-cifar":
        trunk = torchvision.models.resnet18()
        trunk.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        trunk.maxpool = nn.Identity()
        trunk.fc = nn.Identity()
        return trunk, mlp([512, 512, 128]), None, 32, 1
    trunk = torchvision.models.resnet50()
    trunk.fc = nn.Identity()
    return trunk, mlp([2048, 4096, 4096, 256], last_bn=True, last_bias=False), \
        mlp([256, 4096, 256], last_bias=False), 224, 2


def sce(q, k, queue, tau=0.1, tau_m=0.05, lam=0.5):
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / tau
    logp = F.log_softmax(logits, 1)
    target = F.softmax(k @ queue.T / tau_m, 1)
    return -(lam * logp[:, 0] + (1 - lam) * (target * logp[:, 1:]).sum(1)).mean()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=["resnet18-cifar", "resnet50"], required=True)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    trunk, proj, pred, size, views = build(a.model)
    online = nn.Sequential(trunk, proj)
    target = copy.deepcopy(online)
    for t in target.parameters():
        t.requires_grad_(False)
    params = list(online.parameters()) + (list(pred.parameters()) if pred else [])
    opt = torch.optim.SGD(params, lr=0.03, momentum=0.9, weight_decay=5e-4)
    queue = F.normalize(torch.randn(4096 if views == 1 else 65536, proj[-1].num_features
                                    if isinstance(proj[-1], nn.BatchNorm1d) else proj[-1].out_features), dim=1)
    x = [torch.randn(a.batch, 3, size, size) for _ in range(2)]

    def step():
        with torch.no_grad():
            ks = [F.normalize(target(x[i]), dim=1) for i in range(views)]
        qs = []
        for j in (range(1, 2) if views == 1 else range(2)):
            z = online(x[j])
            qs.append(F.normalize(pred(z) if pred else z, dim=1))
        if views == 1:
            loss = sce(qs[0], ks[0], queue)
        else:
            loss = (sce(qs[1], ks[0], queue) + sce(qs[0], ks[1], queue)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pt, po in zip(target.parameters(), online.parameters()):
                pt.mul_(0.99).add_(po, alpha=0.01)
            keys = torch.cat(ks)
            queue[: keys.shape[0]] = keys
        return loss.item()

    step()
    start = time.perf_counter()
    for _ in range(a.steps):
        step()
    seconds = time.perf_counter() - start
    print(json.dumps({"baseline": "pytorch " + torch.__version__ + " eager", "model": a.model,
                      "batch": a.batch, "threads": a.threads, "steps": a.steps,
                      "images_per_s": a.steps * a.batch / seconds,
                      "seconds_per_step": seconds / a.steps}))


if __name__ == "__main__":
    main()
