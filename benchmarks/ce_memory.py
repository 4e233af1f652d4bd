"""Peak memory of one forward + backward of the `ce` loss alone on (B,Q,H,W) float32 logits.

For Q = 261 and 322 bins and loss_stride 1 and 4, each case in a fresh process. Measured: on CUDA, torch's peak
allocation above the inputs; on CPU, the growth of the process's peak RSS (getrusage) over the inputs. Estimated:
the dense float32 tensors alive at once (stride 1: log-probabilities, their gradient and the logits' gradient;
stride s: the logits' full-size gradient plus those three at 1/s^2), ignoring the sparse k-neighbour targets.

    python benchmarks/ce_memory.py [--batch 32] [--size 256]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

GIB = 2**30


def estimate(batch: int, size: int, bins: int, stride: int) -> int:
    """Bytes of the dense float32 tensors the loss and its backward hold at their peak, beyond the logits."""
    full = batch * bins * size * size * 4
    sub = batch * bins * (-(-size // stride)) ** 2 * 4
    return 3 * full if stride == 1 else full + 3 * sub


def measure(batch: int, size: int, bins: int, stride: int) -> tuple[float, float, str]:
    """(peak bytes above the inputs, seconds, device) of one forward + backward."""
    import torch

    from colorbench.images import lab_batch
    from colorbench.losses import LOSSES

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    objective = LOSSES.build("ce", {"rim": bins == 322, "loss_stride": stride})
    _, ab = lab_batch(torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=device))
    objective(torch.zeros(1, bins, 8, 8, device=device, requires_grad=True), ab[:1, :, :8, :8]).backward()  # warm-up
    logits = torch.randn(batch, bins, size, size, device=device, requires_grad=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    objective(logits, ab).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return peak, time.perf_counter() - start, str(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--case", type=int, nargs=2, metavar=("BINS", "STRIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(*measure(args.batch, args.size, *args.case))
        return
    print(f"ce loss, forward + backward, batch {args.batch}, {args.size}x{args.size}, float32 logits")
    print(f"{'bins':>5} {'stride':>6} {'logits GiB':>10} {'estimate GiB':>12} {'measured GiB':>12} {'seconds':>8}  device")
    for bins in (261, 322):
        for stride in (1, 4):
            cmd = [sys.executable, __file__, "--batch", str(args.batch), "--size", str(args.size), "--case", str(bins), str(stride)]
            peak, seconds, device = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
            logits = args.batch * bins * args.size**2 * 4 / GIB
            est = estimate(args.batch, args.size, bins, stride) / GIB
            print(f"{bins:>5} {stride:>6} {logits:>10.2f} {est:>12.2f} {float(peak) / GIB:>12.2f} {float(seconds):>8.1f}  {device}")


if __name__ == "__main__":
    main()
