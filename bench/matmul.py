"""PyTorch's float32 matmul and 3×3 convolution (forward, weight and data gradients) on the shapes of conv_weight_grad_probe (issue 9): median of 7
runs, in ms and GFLOP/s, 2 threads by default. Compare with
`cargo run --release --example conv_weight_grad_probe`.
    python bench/matmul.py [--threads N]
"""
import argparse
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=2)
torch.set_num_threads(parser.parse_args().threads)
print("| matmul M×K×N | PyTorch | GFLOP/s |\n|---|---:|---:|")
for m, k, n in [(1024, 1024, 1024), (64, 576, 18432), (128, 1152, 4608), (512, 4608, 288)]:
    a, b = torch.randn(m, k), torch.randn(k, n)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    t = sorted(times)[3]
    print(f"| {m}×{k}×{n} | {t * 1e3:.1f} ms | {2 * m * k * n / t / 1e9:.1f} |")

print("\n| 3×3 conv, batch 32 | forward | weight gradient | data gradient |\n|---|---:|---:|---:|")
for name, cin, cout, side, stride in [("layer1 conv", 64, 64, 24, 1), ("layer2.0 conv1 (stride 2)", 64, 128, 24, 2),
                                      ("layer2 conv", 128, 128, 12, 1), ("layer3 conv", 256, 256, 6, 1),
                                      ("layer4 conv", 512, 512, 3, 1)]:
    x, w = torch.randn(32, cin, side, side), torch.randn(cout, cin, 3, 3) * 0.1
    out = (side + 2 - 3) // stride + 1
    g = torch.randn(32, cout, out, out)

    def median_ms(f):
        times = []
        for _ in range(7):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
        return sorted(times)[3] * 1e3

    forward = median_ms(lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=1))
    weight_grad = median_ms(lambda: torch.nn.grad.conv2d_weight(x, w.shape, g, stride=stride, padding=1))
    data_grad = median_ms(lambda: torch.nn.grad.conv2d_input(x.shape, w, g, stride=stride, padding=1))
    print(f"| {name}: {cin}→{cout}, {side}² | {forward:.1f} ms | {weight_grad:.1f} ms | {data_grad:.1f} ms |")
