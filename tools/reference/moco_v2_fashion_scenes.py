"""PyTorch reference for MoCo v2 on FashionScenes (not a test fixture): does a from-scratch
ResNet-18 of width 16 learn features that a kNN vote can use? The settings of
`configs/pretrain/moco-v2-mini.toml` at 48 px: batch 64, MLP projector 128-128-128, queue 256,
τ 0.2, key momentum 0.99, SGD lr 0.03 cosine, momentum 0.9, weight decay 1e-4, MoCo v2's
augmentation (crop 0.2-1, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, greyscale p 0.2, blur
σ 0.1-2 scaled by 48/224 p 0.5, flip), key BN over two shuffled halves of the batch.

    densessl data fashion-scenes --out /tmp/fs48 --size 48 --train 1000 --val 200
    python tools/reference/moco_v2_fashion_scenes.py --root /tmp/fs48 --steps 1000

kNN as densessl's monitor: pooled C5 in eval mode, L2-normalised, weighted 20-NN
(exp(s / 0.07)); bank = the train scenes, queries = the val scenes, each labelled by its
dominant item class. Printed at step 0 (the untrained encoder) and every --knn-every steps.
`--pixels` prints the same vote on raw pixels instead (RGB, and greyscale minus its mean).
"""
import argparse
import copy
import glob
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
from resnet_weights import BasicBlock, ResNet  # noqa: E402
from finetune_fashion_scenes import load_split  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def labelled(root, split):
    """Normalised images of a split's scenes that show an item, and their dominant class."""
    x, y = load_split(root, split)
    counts = torch.stack([torch.bincount(mask.flatten(), minlength=256) for mask in y])
    counts[:, 0] = counts[:, 255] = 0
    keep = counts.amax(1) > 0
    return x[keep], counts.argmax(1)[keep]


class Net(nn.Module):
    """Encoder and MoCo v2's projector."""

    def __init__(self):
        super().__init__()
        self.encoder = ResNet(BasicBlock, [2, 2, 2, 2], 16)
        self.projector = nn.Sequential(nn.Linear(128, 128), nn.ReLU(inplace=True), nn.Linear(128, 128))

    def pooled(self, x):
        return self.encoder.features(x)[3].mean((2, 3))

    def forward(self, x):
        return F.normalize(self.projector(self.pooled(x)), dim=1)


def knn_vote(bank, bank_labels, queries, query_labels, k=20, temperature=0.07):
    """Top-1 accuracy of the weighted kNN vote of L2-normalised features."""
    b, q = F.normalize(bank.flatten(1), dim=1), F.normalize(queries.flatten(1), dim=1)
    sims, idx = (q @ b.T).topk(k, dim=1)
    votes = torch.zeros(len(q), 256).scatter_add_(1, bank_labels[idx], (sims / temperature).exp())
    return (votes.argmax(1) == query_labels).float().mean().item()


@torch.no_grad()
def knn_accuracy(net, bank, queries):
    net.eval()
    b = torch.cat([net.pooled(c) for c in bank[0].split(64)])
    q = torch.cat([net.pooled(c) for c in queries[0].split(64)])
    net.train()
    return knn_vote(b, bank[1], q, queries[1])


def centred_grey(images):
    grey = images.mean(1)
    return grey - grey.mean((1, 2), keepdim=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--knn-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pixels", action="store_true", help="only print the vote on raw pixels (RGB, centred grey)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    size, batch, queue_size, tau, m, lr = 48, 64, 256, 0.2, 0.99, 0.03
    bank, queries = labelled(args.root, "train"), labelled(args.root, "val")
    if args.pixels:
        print(f"pixels: RGB {knn_vote(bank[0], bank[1], queries[0], queries[1]):.3f}, centred grey "
              f"{knn_vote(centred_grey(bank[0]), bank[1], centred_grey(queries[0]), queries[1]):.3f}")
        return
    files = sorted(glob.glob(f"{args.root}/unlabeled/*"))
    scenes = torch.tensor(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])).permute(0, 3, 1, 2)
    augment = T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(0.2),
        T.RandomApply([T.GaussianBlur(3, sigma=(0.1 * size / 224, 2.0 * size / 224))], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(MEAN, STD),
    ])
    query_net = Net()
    key_net = copy.deepcopy(query_net).requires_grad_(False)
    queue = F.normalize(torch.randn(queue_size, 128), dim=1)
    optimizer = torch.optim.SGD(query_net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    print(f"step 0 knn {knn_accuracy(query_net, bank, queries):.3f}", flush=True)
    start, losses, hits, ptr = time.time(), [], [], 0
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        chosen = scenes[torch.randint(0, len(scenes), (batch,))]
        v1 = torch.stack([augment(s) for s in chosen])
        v2 = torch.stack([augment(s) for s in chosen])
        q = query_net(v1)
        with torch.no_grad():
            for pk, pq in zip(key_net.parameters(), query_net.parameters()):
                pk.mul_(m).add_(pq.detach(), alpha=1 - m)
            order = torch.randperm(batch)
            k = torch.cat([key_net(c) for c in v2[order].chunk(2)])[order.argsort()]
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / tau
        loss = F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        queue[ptr:ptr + batch] = k
        ptr = (ptr + batch) % queue_size
        losses.append(loss.item())
        hits.append((logits.argmax(1) == 0).float().mean().item())
        if (step + 1) % 50 == 0:
            print(f"step {step + 1} loss(last 50) {np.mean(losses[-50:]):.3f} acc1 {np.mean(hits[-50:]):.3f} "
                  f"elapsed {time.time() - start:.0f} s", flush=True)
        if (step + 1) % args.knn_every == 0 or step + 1 == args.steps:
            print(f"step {step + 1} knn {knn_accuracy(query_net, bank, queries):.3f}", flush=True)


if __name__ == "__main__":
    main()
