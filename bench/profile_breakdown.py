"""Sorts `perf script -F comm,tid,ip,sym` stacks into categories of a training step.

Each sample goes to the first category whose pattern matches any frame of its stack, so the
order below decides overlaps: the kernels' transposes and im2col rows are their own rows
before the convolution passes that call them. Rayon worker stacks start at the closure of
the kernel that spawned them (`forward_nhwc::{{closure}}`, ...), not at its caller, so on the
worker thread the stride-1 data gradient (a forward pass of the flipped kernel) counts as
forward. Usage: python3 bench/profile_breakdown.py STACKS
"""
import collections
import re
import sys

CATEGORIES = [
    ("data loader thread (decode, augment)", r"densessl::data|Prefetcher|densessl-loader"),
    ("view drawing (crops, colour, patches)", r"densessl::views"),
    ("evaluation (val mIoU, kNN monitor)", r"densessl::seg::eval|evaluate|KnnMonitor"),
    ("parameter init (before the timed steps)", r"TensorData::random"),
    ("conv: transposes (NCHW <-> NHWC, kernel reorders)", r"transpose_each_image"),
    ("conv: im2col rows, col2im", r"im2col_rows|add_rows_to_image"),
    ("conv: data gradient, densessl kernel", r"data_gradient"),
    ("conv: weight gradient, densessl kernel", r"weight_gradient"),
    ("conv: forward, densessl kernel", r"conv2d_forward|forward_nhwc|pointwise::(forward|per_image)"),
    ("conv: burn's (conv3d / conv_transpose3d)", r"conv_transpose|conv3d|burn_flex::ops::conv"),
    ("gradient sums at a block's input", r"gradient_sum|Gradients::register"),
    ("batch norm (+ ReLU, residual)", r"batch_norm|BatchNorm"),
    ("max-pool", r"max_pool"),
    ("other pooling", r"pool"),
    ("optimiser (burn's SGD)", r"burn_optim"),
    ("momentum update of a key encoder", r"momentum_update"),
    ("resize (bilinear up-sampling)", r"interpolat|resize_bilinear"),
    ("losses (InfoNCE, softmax, cross-entropy)", r"pretext::losses|product_logsumexp|softmax|cross_entropy"),
    # Not a bare `slice`: `core::slice` iterators are in every element-wise loop.
    ("layout copies (permute, slice, cat)", r"copy_2d_tiled|permute|contiguous|ops::slice|slice_assign|::cat"),
    ("matmul outside conv (linear, logits)", r"gemm|matmul"),
    ("element-wise and reductions", r"zip_|binary_op|scalar_op|unary_op|reduce|sum|mean|macerator|relu|mask"),
    ("allocation, page faults", r"malloc|memset|free|page|memcpy|mmap|kmem|munmap"),
    ("thread scheduling, waiting", r"sched|futex|task_switch|wait_until|park|spin|yield"),
]


def samples(path):
    stack = []
    for line in open(path, errors="replace"):
        frame = re.match(r"\s+[0-9a-f]+ (.*)", line)
        if frame:
            stack.append(frame.group(1))
        elif stack:
            yield stack
            stack = []
    if stack:
        yield stack


def main():
    counts, total = collections.Counter(), 0
    for stack in samples(sys.argv[1]):
        total += 1
        text = "\n".join(stack)
        name = next((name for name, pattern in CATEGORIES if re.search(pattern, text)), "other")
        counts[name] += 1
    if total == 0:
        sys.exit("profile_breakdown: no samples (did perf record run?)")
    print(f"| where | share of CPU samples |\n|---|---:|")
    for name, count in counts.most_common():
        print(f"| {name} | {100 * count / total:.1f} % |")
    print(f"\n{total} samples")


if __name__ == "__main__":
    main()
