"""Where a densessl step runs on one core while the other idles.

Reads `perf script -F comm,tid,time,ip,sym` output of a run on 2 threads (the main thread
and one rayon worker) and counts the main thread's samples that no other thread's sample
lies within WINDOW seconds of: work done while the worker had nothing to do. Prints their
share of the main thread's samples and the callers they fall under (the first frame from
the leaf that names densessl, burn's optimiser or its autodiff runtime).

    perf record -F 199 --call-graph dwarf,32768 -o perf.data densessl bench train-step ...
    perf script -i perf.data -F comm,tid,time,ip,sym > stacks.txt
    python3 bench/serial_share.py stacks.txt

Samples before the first one under a pretext method's step or the supervised bench step
(network initialisation, for one) are left out.
"""
import bisect
import collections
import sys

WINDOW = 0.003  # seconds; 199 Hz sampling puts a busy thread's samples about 5 ms apart
STEP_FRAMES = ("PretextMethod>::step", "densessl::bench::supervised_step::{{closure}}")
CALLER_FRAMES = ("densessl::", "burn_optim::", "burn_autodiff::runtime")


def read(path):
    samples, current = [], None
    for line in open(path, errors="replace"):
        if not line.strip():
            if current:
                samples.append(current)
            current = None
        elif not line[0].isspace():
            fields = line.split()
            current = (int(fields[1]), float(fields[2].rstrip(":")), [])
        elif current:
            parts = line.strip().split(" ", 1)
            if len(parts) > 1:
                current[2].append(parts[1])
    if current:
        samples.append(current)
    return samples


def caller(frames):
    for frame in frames:
        if any(name in frame for name in CALLER_FRAMES) and "densessl::main" not in frame:
            return frame[:110]
    return "(no densessl or burn frame)"


def main(path):
    samples = read(path)
    main_tid = min(tid for tid, _, _ in samples)
    starts = [t for tid, t, frames in samples if tid == main_tid and any(n in f for f in frames for n in STEP_FRAMES)]
    if not starts:
        sys.exit(f"{path}: no sample under a training step")
    steps = [s for s in samples if s[1] >= min(starts)]
    others = sorted(t for tid, t, _ in steps if tid != main_tid)
    main_samples = [s for s in steps if s[0] == main_tid]
    serial = []
    for tid, t, frames in main_samples:
        i = bisect.bisect_left(others, t - WINDOW)
        if not (i < len(others) and others[i] <= t + WINDOW):
            serial.append(frames)
    print(f"main thread: {len(main_samples)} samples, other threads: {len(others)}")
    print(f"main thread alone: {len(serial)} samples, {100 * len(serial) / max(len(main_samples), 1):.1f} % of its samples")
    print("| caller | samples | share of the main thread's |")
    print("|---|---:|---:|")
    for name, count in collections.Counter(caller(f) for f in serial).most_common(15):
        print(f"| `{name}` | {count} | {100 * count / len(main_samples):.1f} % |")


if __name__ == "__main__":
    main(sys.argv[1])
