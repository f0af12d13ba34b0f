"""PyTorch's side of `cargo run --release --example segmentation_loss`: the segmentation
cross-entropy (ignore label 255, about a tenth of the pixels ignored) forward, and forward +
backward, at the same shapes, the fastest of 9 calls after a warm-up, on 2 threads.

    python bench/segmentation_loss.py
"""
import time, torch, torch.nn.functional as F
torch.set_num_threads(2)
for name, b, k, s in [("mini 16x11x48x48", 16, 11, 48), ("mini 16x11x64x64", 16, 11, 64), ("voc 8x21x128x128", 8, 21, 128)]:
    x = torch.randn(b, k, s, s) * 2
    y = torch.randint(0, k, (b, s, s)); y[torch.rand(b, s, s) < 0.1] = 255
    def fastest(f):
        f(); t = []
        for _ in range(9):
            a = time.perf_counter(); f(); t.append(time.perf_counter() - a)
        return min(t) * 1e3
    fwd = fastest(lambda: F.cross_entropy(x, y, ignore_index=255).item())
    def both():
        xx = x.clone().requires_grad_(); F.cross_entropy(xx, y, ignore_index=255).backward(); xx.grad.numpy()
    print(f"{name:20} fwd {fwd:7.2f} ms  fwd+bwd {fastest(both):7.2f} ms")
