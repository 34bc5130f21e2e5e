"""Operator dispatches per training step: cifar_ablate's step against the bare loop's, counted on the CPU.

On a GPU each dispatched operator is at least one kernel launch, and for models as small as LeNet the
host's dispatch time most likely sets the step time (docs/performance.md); this count is its
CPU-measurable proxy. Counts the top-level aten operators (those not called from inside another aten
operator) that torch.profiler records over --steps steps of LeNet at batch 64, for (b) the bare loop and
(c) the Lightning step, both as `bench/loop_overhead.py` runs them.

    python bench/op_count.py --root data --steps 100
"""
import argparse
import collections

from torch.profiler import ProfilerActivity, profile

from loop_overhead import bare_loop, lenet_setup, lightning_fit


def top_level_ops(prof) -> collections.Counter:
    counts = collections.Counter()
    for event in prof.events():
        parent = event.cpu_parent
        if event.name.startswith("aten::") and not (parent is not None and parent.name.startswith("aten::")):
            counts[event.name] += 1
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--top", type=int, default=12, help="list the most frequent operators of each")
    args = parser.parse_args()
    cfg, datamodule, images, labels = lenet_setup(args.root, args.steps)

    train = bare_loop(cfg, images, labels, args.steps)
    with profile(activities=[ProfilerActivity.CPU]) as bare:
        train()
    lightning = profile(activities=[ProfilerActivity.CPU])
    lightning_fit(cfg, datamodule, around=lightning)

    for label, prof in (("(b) bare loop", bare), ("(c) cifar_ablate", lightning)):
        counts = top_level_ops(prof)
        print(f"{label}: {sum(counts.values()) / args.steps:.1f} operators per step")
        for name, n in counts.most_common(args.top):
            print(f"  {n / args.steps:6.2f} {name}")


if __name__ == "__main__":
    main()
