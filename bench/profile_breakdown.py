"""Sorts `perf script -F comm,tid,ip,sym` stacks into categories of a training step.

Each sample goes to the first category whose pattern matches any frame of its stack, so the
order below decides overlaps (a gemm inside a convolution counts as convolution). Rayon
worker stacks do not reach the op that spawned them, so convolution forward and its weight
gradient (both run burn_flex's conv3d_impl) share one row; the data gradient runs
conv_transpose3d_impl and has its own. Usage: python3 bench/profile_breakdown.py STACKS
"""
import collections
import re
import sys

CATEGORIES = [
    ("data loader thread (decode, augment)", r"densessl::data|Prefetcher|densessl-loader"),
    ("view drawing (crops, colour, patches)", r"densessl::views"),
    ("evaluation (val mIoU, kNN monitor)", r"densessl::seg::eval|evaluate|KnnMonitor"),
    ("conv: data gradient, densessl kernel (flipped-kernel forward)", r"conv_cpu::(conv2d_)?data_gradient"),
    ("conv: weight gradient, densessl kernel", r"conv_cpu::(conv2d_)?weight_gradient"),
    ("conv: forward, densessl kernel", r"conv_cpu::conv2d_forward"),
    ("conv: data gradient (conv_transpose3d)", r"conv_transpose"),
    ("conv: forward + weight gradient (conv3d im2col + gemm)", r"conv3d|conv2d"),
    ("batch norm", r"batch_norm|BatchNorm"),
    ("pooling", r"pool"),
    ("resize (bilinear up-sampling)", r"interpolat|resize_bilinear"),
    ("softmax / cross-entropy", r"softmax|cross_entropy"),
    ("layout copies (permute, slice, cat)", r"copy_2d_tiled|permute|contiguous|slice|::cat"),
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
