"""PyTorch reference of densessl's "mini" fine-tune protocol, for learning-quality and speed
comparisons (not a test fixture): ResNet-18 of width 16 at output stride 8 (layer3 and layer4
dilated) + MoCo-FCN head (two 3x3 convs of 64 channels at dilation 2, BN, ReLU, element-wise dropout 0.1 as densessl,
1x1 classifier), FashionScenes, batch 16, SGD lr 0.1 with poly(0.9) decay, momentum 0.9,
weight decay 1e-4, random scale 0.75-1.5 + crop + flip; whole-image mIoU on the val split.

    densessl data fashion-scenes --out /tmp/fs48 --size 48 --train 1000 --val 200
    python tools/reference/finetune_fashion_scenes.py --root /tmp/fs48 --steps 1000 --seed 0

Prints the mean loss of every 100 steps with the elapsed seconds, then mIoU and per-class IoU.
"""
import argparse
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


def load_split(root, split):
    names = open(f"{root}/ImageSets/Segmentation/{split}.txt").read().split()
    x = np.stack([np.asarray(Image.open(f"{root}/JPEGImages/{n}.jpg").convert("RGB")) for n in names])
    y = np.stack([np.asarray(Image.open(f"{root}/SegmentationClass/{n}.png")) for n in names])
    x = (torch.tensor(x).float().permute(0, 3, 1, 2) / 255 - MEAN[:, None, None]) / STD[:, None, None]
    return x, torch.tensor(y).long()


class Segmenter(nn.Module):
    def __init__(self, classes, width=16, channels=64):
        super().__init__()
        self.encoder = ResNet(BasicBlock, [2, 2, 2, 2], width, (False, True, True))

        def block(cin, cout):
            conv = nn.Conv2d(cin, cout, 3, padding=2, dilation=2, bias=False)
            return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU())

        self.head = nn.Sequential(block(width * 8, channels), block(channels, channels), nn.Dropout(0.1),
                                  nn.Conv2d(channels, classes, 1))
        # densessl's (and torchvision's) init: Kaiming-normal fan-out convs, unit BN, and
        # mmsegmentation's N(0, 0.01) classifier.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.head[-1].weight, 0, 0.01)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x):
        logits = self.head(self.encoder.features(x)[3])
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)


def augmented_batch(x, y, batch, size, generator):
    xs, ys = [], []
    for i in torch.randint(0, len(x), (batch,), generator=generator):
        n = max(1, round(size * (0.75 + 0.75 * torch.rand(1, generator=generator).item())))
        xi = F.interpolate(x[i:i + 1], size=(n, n), mode="bilinear", align_corners=False)
        yi = F.interpolate(y[i:i + 1, None].float(), size=(n, n), mode="nearest").long()[:, 0]
        if n < size:
            xi, yi = F.pad(xi, (0, size - n, 0, size - n)), F.pad(yi, (0, size - n, 0, size - n), value=255)
        oy, ox = (torch.randint(0, xi.shape[2] - size + 1, (1,), generator=generator).item() for _ in range(2))
        xi, yi = xi[..., oy:oy + size, ox:ox + size], yi[..., oy:oy + size, ox:ox + size]
        if torch.rand(1, generator=generator).item() < 0.5:
            xi, yi = xi.flip(-1), yi.flip(-1)
        xs.append(xi)
        ys.append(yi)
    return torch.cat(xs), torch.cat(ys)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    (xt, yt), (xv, yv) = load_split(args.root, "train"), load_split(args.root, "val")
    classes = len(open(f"{args.root}/classes.txt").read().splitlines())
    size = xt.shape[2]
    net = Segmenter(classes)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    generator, start, window = torch.Generator().manual_seed(args.seed + 1), time.time(), []
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * (1 - step / args.steps) ** 0.9
        x, y = augmented_batch(xt, yt, args.batch, size, generator)
        loss = F.cross_entropy(net(x), y, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        window.append(loss.item())
        if (step + 1) % 100 == 0 or step == args.steps - 1:
            mean = sum(window) / len(window)
            print(f"step {step + 1} mean loss of the last {len(window)} steps {mean:.4f} elapsed {time.time() - start:.1f} s", flush=True)
            window = []
    net.eval()
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(xv), 50):
            predicted, truth = net(xv[i:i + 50]).argmax(1), yv[i:i + 50]
            keep = truth != 255
            confusion += torch.bincount(truth[keep] * classes + predicted[keep], minlength=classes ** 2).view(classes, classes)
    iou = confusion.diag().float() / (confusion.sum(0) + confusion.sum(1) - confusion.diag()).float().clamp(min=1)
    print(f"mIoU {iou.mean().item():.4f} per-class {[round(v, 3) for v in iou.tolist()]}")


if __name__ == "__main__":
    main()
