"""Training and evaluation speed of channels-last (NHWC) against contiguous (NCHW) models, per backbone, loss and size.

Both layouts train the same model from the same initial weights on the same random batch, interleaved step by step
so that a drift of the machine's speed hits both alike; the figure is the median of `--steps` timed steps after one
warm-up. This is what `train.channels_last` (default true) chooses between, on the device it runs on.

    python benchmarks/memory_format.py [--device auto] [--steps 6] [--threads N]
"""

from __future__ import annotations

import argparse
import functools
import statistics

import torch
from train_throughput import timed  # this folder is on sys.path when a script here runs

# (backbone, loss, image size, batch)
CASES = [
    ("resnet18-6", "mse", 64, 16),
    ("resnet18-6", "mse", 64, 64),
    ("resnet18-7", "mse", 64, 64),
    ("resnet18-8", "mse", 64, 64),
    ("resnet18-6", "ce-rebalanced", 64, 16),
    ("resnet18-6", "mse", 256, 16),
]
LAYOUTS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}


def compare(backbone: str, loss_name: str, size: int, batch: int, steps: int, device: torch.device) -> dict[str, tuple[float, float]]:
    """{layout: (training images/s, evaluation images/s)} for one case."""
    from colorbench.backbones import build_model
    from colorbench.images import lab_batch
    from colorbench.losses import LOSSES

    objective = LOSSES.build(loss_name, {})
    rgb = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(device)
    objective.prepare(rgb)
    L, ab = lab_batch(rgb)
    nets = {}
    for name, layout in LAYOUTS.items():
        torch.manual_seed(0)
        model = build_model(backbone, {}, objective.out_channels).to(device, memory_format=layout)
        nets[name] = model, torch.optim.Adam(model.parameters(), lr=3e-4)

    def train(name: str) -> None:
        model, optimizer = nets[name]
        loss = objective(model(L), ab)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def evaluate(name: str) -> None:
        model = nets[name][0].eval()
        objective.decode(model(L))
        model.train()

    seconds: dict[tuple[str, str], list[float]] = {(name, kind): [] for name in LAYOUTS for kind in ("train", "eval")}
    for step in range(steps + 1):
        for name in LAYOUTS:
            for kind, run in (("train", train), ("eval", evaluate)):
                took = timed(functools.partial(run, name), device)[1]
                if step:  # the first round warms up
                    seconds[name, kind].append(took)
    return {name: tuple(batch / statistics.median(seconds[name, kind]) for kind in ("train", "eval")) for name in LAYOUTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per layout and case (default: 6)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from colorbench.train import resolve_device

    device = resolve_device(args.device)
    print(f"device {device}; torch {torch.__version__}; {torch.get_num_threads()} CPU threads; median of {args.steps} steps\n")
    print(f"{'backbone':11s} {'loss':14s} {'size':>4s} {'batch':>5s} | train img/s NCHW  NHWC  ratio | eval img/s NCHW  NHWC  ratio")
    for backbone, loss_name, size, batch in CASES:
        rates = compare(backbone, loss_name, size, batch, args.steps, device)
        (train_nchw, eval_nchw), (train_nhwc, eval_nhwc) = rates["NCHW"], rates["NHWC"]
        print(
            f"{backbone:11s} {loss_name:14s} {size:4d} {batch:5d} | {train_nchw:16.1f} {train_nhwc:5.1f} {train_nhwc / train_nchw:6.2f}"
            f" | {eval_nchw:15.1f} {eval_nhwc:5.1f} {eval_nhwc / eval_nchw:6.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
