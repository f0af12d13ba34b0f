"""PyTorch reference for rotation prediction on FashionScenes (not a test fixture): does a
from-scratch ResNet-18 of width 16 learn which way an unlabeled scene was turned? Global
average pool + a 4-way linear layer, batch 32 scenes, SGD lr 0.05 with cosine decay,
momentum 0.9, weight decay 1e-4, horizontal flips. Either each scene gets one random turn
(`--turns random`) or all four turns of each scene are in the batch (`--turns all`, as
RotNet and densessl's `method.copies = 4`).

    densessl data fashion-scenes --out /tmp/fs48 --size 48 --train 1000 --val 200
    python tools/reference/rotation_fashion_scenes.py --root /tmp/fs48 --steps 300 --turns all

Prints the loss and the mean training accuracy of the last 50 steps every 50 steps.
"""
import argparse
import glob
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
from resnet_weights import BasicBlock, ResNet  # noqa: E402

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--turns", choices=["random", "all"], default="random")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    files = sorted(glob.glob(f"{args.root}/unlabeled/*"))
    x = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    x = (torch.tensor(x).float().permute(0, 3, 1, 2) / 255 - MEAN[:, None, None]) / STD[:, None, None]
    encoder, classifier = ResNet(BasicBlock, [2, 2, 2, 2], 16), nn.Linear(128, 4)
    optimizer = torch.optim.SGD(list(encoder.parameters()) + list(classifier.parameters()), lr=args.lr,
                                momentum=0.9, weight_decay=1e-4)
    accuracies, start, b = [], time.time(), args.batch
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        scenes = x[torch.randint(0, len(x), (b,))]
        if torch.rand(1).item() < 0.5:
            scenes = scenes.flip(-1)
        if args.turns == "all":
            views = torch.cat([torch.rot90(scenes, k, (2, 3)) for k in range(4)])
            labels = torch.arange(4).repeat_interleave(b)
        else:
            labels = torch.randint(0, 4, (b,))
            views = torch.stack([torch.rot90(scenes[i], int(labels[i]), (1, 2)) for i in range(b)])
        logits = classifier(encoder.features(views)[3].mean((2, 3)))
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracies.append((logits.argmax(1) == labels).float().mean().item())
        if (step + 1) % 50 == 0:
            print(f"step {step + 1} loss {loss.item():.3f} acc(last 50) {sum(accuracies[-50:]) / 50:.3f} "
                  f"elapsed {time.time() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
