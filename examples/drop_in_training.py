"""Drop-in: your own training loop, with pruning events and quantization-aware training interleaved.

    python examples/drop_in_training.py --steps 40

The bundled Fashion-MNIST ResNet-18 is pruned (gradual structured pruning to a parameter target,
optionally with unstructured sparsity) and trained with int8 fake-quant, all in one loop that you
own: your optimizer, your LR scheduler, your loss (here distillation from the unpruned model).
edgeslim's :class:`~edgeslim.pipelines.alternating.AlternatingSchedule` decides when to prune and
when to switch to QAT; the two things to remember are in the loop below:

* forward ``sched.model`` (it becomes a QAT graph at ``--qat-from``, and a new one at each pruning
  event after that);
* keep stepping *your* optimizer: the schedule re-points it at the current parameters (momentum
  sliced and carried), so your LR scheduler keeps working.

At the end it converts to int8, reports parameters and top-1 on real test images, saves the model
safely and checks that the reloaded file computes the same outputs.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

import edgeslim
from edgeslim.data import evaluate, fashion_mnist_loader
from edgeslim.pipelines.alternating import AlternatingSchedule
from edgeslim.plugin.pruning import Method, PruneConfig, Target
from edgeslim.plugin.pruning.finetune import distillation_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps in all")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--target", default="params=0.5", help="structural target (params=, macs=, ratio=)")
    ap.add_argument("--sparsity", type=float, default=0.0, help="unstructured sparsity on top (hybrid)")
    ap.add_argument("--events", type=int, default=3, help="pruning events")
    ap.add_argument("--qat-from", type=int, default=None, help="step at which QAT starts (default: steps // 3)")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--eval-images", type=int, default=1000, help="real test images for top-1")
    ap.add_argument("--out", default="drop_in_int8.pt")
    args = ap.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()

    teacher = edgeslim.load_model("resnet18-fmnist").eval()  # distil from the unpruned model
    model = edgeslim.load_model("resnet18-fmnist").train()
    x = torch.randn(1, 3, 32, 32)
    qat_from = args.qat_from if args.qat_from is not None else max(1, args.steps // 3)
    every = max(1, (args.steps * 6 // 10) // args.events)  # events over the first 60 % of the run

    # your optimizer and LR scheduler, built once
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    lrs = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    method = Method.HYBRID if args.sparsity > 0 else Method.STRUCTURED
    sched = AlternatingSchedule(
        model, x, PruneConfig(method=method, target=Target.parse(args.target), sparsity=args.sparsity), "int8",
        optimizer=opt, total_steps=args.steps, qat_from=qat_from, prune_steps=args.events, prune_every=every,
    )
    train = fashion_mnist_loader("train", batch_size=args.batch_size, augment=True)
    batches = itertools.chain.from_iterable(itertools.repeat(train))

    for step in range(1, args.steps + 1):
        xb, yb = next(batches)
        out = sched.model(xb)  # NOT `model`: after --qat-from the current model is a QAT graph
        with torch.no_grad():
            soft = teacher(xb)
        loss = distillation_loss(out, soft, yb, alpha=0.7, label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()  # the same optimizer all along: the schedule re-points it
        lrs.step()
        sched.step(loss)
        rec = sched.history[-1]
        if rec.events:
            size = f" -> {rec.params:,} params" if rec.params else ""
            print(f"step {step}: {', '.join(rec.events)}{size} (loss {rec.loss:.3f})", flush=True)

    result = sched.finish()
    before, after = result.prune.before.params, result.prune.after.params
    print(f"params: {before:,} -> {after:,} ({100 * after / before:.1f} %), sparsity {100 * result.prune.sparsity:.1f} %")
    test = fashion_mnist_loader("test", batch_size=250, limit=args.eval_images)
    top_float, top_q = evaluate(teacher, test), evaluate(result.quant.model, test)
    print(f"top-1 on {args.eval_images} test images: float {100 * top_float:.2f} %, pruned + int8 {100 * top_q:.2f} %")

    path = edgeslim.save(result.quant, args.out)
    reloaded = edgeslim.load(path)
    xb, _ = next(iter(test))
    with torch.no_grad():
        same = bool(torch.allclose(result.quant.model(xb), reloaded(xb), atol=1e-4))
    print(f"saved {path} ({path.stat().st_size / 2**20:.2f} MiB); reloaded outputs match: {same}")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
