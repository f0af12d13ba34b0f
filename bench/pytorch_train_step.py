#!/usr/bin/env python3
"""The PyTorch reference for `densessl bench train-step`: the identical step, timed the same way.

Supervised: torchvision ResNet (weights=None) with its 1000-way fc, SGD (lr 0.1, momentum 0.9,
weight decay 1e-4), BN in training mode, cross-entropy on random labels, random N(0,1)-ish
inputs. `--method moco-v2`: MoCo v2 (query encoder + MLP projector, momentum key encoder,
queue of 65,536 128-d keys, InfoNCE at tau 0.2) on two random views per image; the image
augmentation densessl runs inside its step is not reproduced here (inputs are ready tensors),
which favours PyTorch slightly.

Prints one JSON object: median_s_per_step, images_per_s, peak_rss_mb, step_s.
    python bench/pytorch_train_step.py --arch resnet18 --batch 32 --size 96
"""
import argparse
import json
import resource
import sys
import time

import torch
import torch.nn.functional as F
import torchvision


def resnet(arch, width):
    if width != 64:
        sys.exit("torchvision builds only width 64; use --base-width 64")
    return getattr(torchvision.models, arch)(weights=None)


def supervised(args):
    model = resnet(args.arch, args.base_width)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g) * 4 - 2
    y = torch.randint(0, 1000, (args.batch,), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def moco_v2(args):
    def encoder():
        net = resnet(args.arch, args.base_width)
        c5 = net.fc.in_features
        net.fc = torch.nn.Sequential(torch.nn.Linear(c5, c5), torch.nn.ReLU(), torch.nn.Linear(c5, 128))
        return net

    q, k = encoder(), encoder()
    k.load_state_dict(q.state_dict())
    for p in k.parameters():
        p.requires_grad = False
    queue = F.normalize(torch.randn(65536, 128), dim=1)
    opt = torch.optim.SGD(q.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(args.batch, 3, args.size, args.size, generator=g)
    x2 = torch.rand(args.batch, 3, args.size, args.size, generator=g)
    state = {"ptr": 0}

    def step():
        opt.zero_grad(set_to_none=True)
        qv = F.normalize(q(x1), dim=1)
        with torch.no_grad():
            for pk, pq in zip(k.parameters(), q.parameters()):
                pk.mul_(0.999).add_(pq.detach(), alpha=0.001)
            # Split-batch BN, as densessl's default key_bn_groups = 2.
            perm = torch.randperm(args.batch)
            half = args.batch // 2
            keys = torch.cat([k(x2[perm[:half]]), k(x2[perm[half:]])])
            keys = F.normalize(keys[torch.argsort(perm)], dim=1)
        pos = (qv * keys).sum(1, keepdim=True)
        neg = qv @ queue.t()
        logits = torch.cat([pos, neg], 1) / 0.2
        loss = F.cross_entropy(logits, torch.zeros(args.batch, dtype=torch.long))
        loss.backward()
        opt.step()
        p = state["ptr"]
        queue[p:p + args.batch] = keys
        state["ptr"] = (p + args.batch) % queue.shape[0]
        return loss.item()

    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--base-width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--method", default=None, choices=[None, "moco-v2"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="accepted for symmetry: output is always JSON")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.device != "cpu":
        torch.set_default_device(args.device)
    step = moco_v2(args) if args.method == "moco-v2" else supervised(args)
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        step()
        if args.device != "cpu":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    s = sorted(times)
    n = len(s)
    median = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print(json.dumps({"median_s_per_step": median, "images_per_s": args.batch / median,
                      "peak_rss_mb": peak_mb, "step_s": times, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
