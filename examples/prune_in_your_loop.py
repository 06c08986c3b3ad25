"""Drop-in: gradual (AGP) structural pruning inside your own training loop.

    python examples/prune_in_your_loop.py --steps 300

Prunes the bundled Fashion-MNIST ResNet-18 to half its parameters over the first 2/3 of the
steps while training with your optimizer, then reports top-1 on the real test set and saves the
model safely (reload with ``edgeslim.load``).
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

import edgeslim
from edgeslim.data import evaluate, fashion_mnist_loader
from edgeslim.plugin.pruning import Allocation, PruneConfig, Target


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="pruned_in_loop.pt")
    args = ap.parse_args()

    model = edgeslim.load_model("resnet18-fmnist").train()
    x = torch.randn(1, 3, 32, 32)
    train = fashion_mnist_loader("train", batch_size=128, augment=True)
    test = fashion_mnist_loader("test", batch_size=500)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    events = 5
    sched = edgeslim.PruningSchedule(
        model, x, PruneConfig(criterion="l1", target=Target.parse("params=0.5"), allocation=Allocation.SENSITIVITY),
        optimizer=opt, data=fashion_mnist_loader("train", batch_size=128, seed=1), kind="agp", total_steps=events, every=max(1, (2 * args.steps) // (3 * events)),
    )
    step = 0
    while step < args.steps:
        for xb, yb in train:
            loss = F.cross_entropy(model(xb), yb, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched.step():  # pruned at this step; `opt` already holds the new parameters
                print(f"step {step}: {sched.history[-1]['params']:,} params")
            step += 1
            if step >= args.steps:
                break
    print(f"top-1 {100 * evaluate(model, test):.2f} %")
    edgeslim.save(model, args.out)


if __name__ == "__main__":
    main()
