"""Training throughput (images/s) of three pipelines on the same images and the same model (resnet18-6, mse).

1. seed: the seed project's pipeline: a Dataset that opens each JPEG with PIL per item, RandomResizedCrop and
   RandomHorizontalFlip (torchvision), float64 `skimage.color.rgb2lab` per image, batched by a DataLoader
   (`--workers`, default 0: in the training process, as the seed did), and the seed's training step (contiguous
   NCHW model; autocast when the row is bf16).
2. colorbench: `colorbench.train.fit` end to end (images from the decode-once cache, seeded shuffle, random crop
   (`crop` 0.5) and flip on uint8 tensors on the device, batched Lab on the device, channels_last model, Adam step);
   the rate is fit's own per-epoch `train_images_per_s`, which leaves out the per-epoch validation.
3. bound: the model alone: colorbench's step (forward, loss, backward, Adam) on one batch already on the device.

The three are measured in interleaved rounds (`--rounds`): after each of fit's epochs (the first warms up) the bound
and the seed are measured once, so a drift of the machine's speed hits a round's three figures alike. Printed: each
pipeline's median rate, each round's ratios and their medians; the cost of building the cache (decoding every file
once) against loading it and against a later epoch; peak RSS of the process and, on CUDA, each pipeline's peak
allocation. The last lines read `ratio device=... precision=... vs_seed=2/1 vs_bound=2/3` (medians of the rounds'
ratios) at the batch its target names: the small batch on a CPU (16), the large batch on CUDA (256).

    python benchmarks/train_throughput.py [--data ../shared/data] [--limit 64] [--size 256] [--batch 16] [--large-batch 64]
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20
T = TypeVar("T")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SeedStyle(torch.utils.data.Dataset):
    """The seed's per-item data path: PIL decode, RandomResizedCrop, flip, float64 skimage Lab; index i reads file i mod n."""

    def __init__(self, files: list[Path], size: int, length: int) -> None:
        from torchvision import transforms

        self.files, self.length = files, length
        self.transform = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image
        from skimage.color import rgb2lab

        with Image.open(self.files[i % len(self.files)]) as img:
            rgb = np.asarray(self.transform(img.convert("RGB")))
        lab = torch.from_numpy(rgb2lab(rgb).transpose(2, 0, 1)).float()
        return lab[:1], lab[1:]


class Step:
    """One training step: forward under autocast, fp32 loss, backward, Adam; loss summed on the device.

    `channels_last` as colorbench trains (its default) or not, as the seed did.
    """

    def __init__(self, device: torch.device, precision: str, compile_model: bool, channels_last: bool) -> None:
        from colorbench.backbones import build_model
        from colorbench.losses import LOSSES
        from colorbench.train import autocast_dtype

        torch.manual_seed(0)
        self.device, self.amp = device, autocast_dtype(precision, device)
        self.objective = LOSSES.build("mse", {})
        self.model = build_model("resnet18-6", {}, 2).to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=3e-4)
        self.total = torch.zeros((), dtype=torch.float64, device=device)

    def __call__(self, L: torch.Tensor, ab: torch.Tensor) -> None:
        from colorbench.train import autocast

        with autocast(self.device, self.amp):
            pred = self.forward(L)
        loss = self.objective(pred.float(), ab)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.total += loss.detach().double()


def timed(run: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """`run()`'s result and the seconds it took, the device's queued work included."""
    sync(device)
    started = time.perf_counter()
    result = run()
    sync(device)
    return result, time.perf_counter() - started


def images_per_s(run: Callable[[], int], device: torch.device) -> float:
    """Images per second of `run()`, which returns how many images it went through."""
    images, seconds = timed(run, device)
    return images / seconds


class Timed:
    """A pipeline measured in rounds: `measure()` trains `steps` batches and returns images/s (after one warm-up batch)."""

    def __init__(self, step: Step, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], batch: int, steps: int) -> None:
        self.step, self.batches, self.images, self.steps = step, batches, batch * steps, steps
        self.run(1)

    def run(self, n: int) -> int:
        for _ in range(n):
            L, ab = next(self.batches)
            self.step(L.to(self.step.device, non_blocking=True), ab.to(self.step.device, non_blocking=True))
        self.step.total.item()
        return self.images

    def measure(self) -> float:
        return images_per_s(lambda: self.run(self.steps), self.step.device)


class DataOnly:
    """A data path alone: `measure()` draws one set of batches from `batches()` onto the device and returns images/s."""

    def __init__(self, batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], device: torch.device) -> None:
        self.batches, self.device = batches, device

    def run(self) -> int:
        images = 0
        for L, ab in self.batches():
            L.to(self.device, non_blocking=True), ab.to(self.device, non_blocking=True)
            images += len(L)
        return images

    def measure(self) -> float:
        return images_per_s(self.run, self.device)


def seed_loader(files: list[Path], args: argparse.Namespace, batch: int, batches: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`batches` batches of the seed's data path: a shuffling DataLoader over `SeedStyle`."""
    dataset = SeedStyle(files, args.size, batch * batches)
    return iter(torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=args.workers, pin_memory=device.type == "cuda"))


def seed_pipeline(files: list[Path], args: argparse.Namespace, batch: int, steps: int, device: torch.device, precision: str) -> Timed:
    """The seed's data path in a DataLoader and the seed's step (contiguous, not channels_last), in `precision`."""
    step = Step(device, precision, compile_model=False, channels_last=False)
    return Timed(step, seed_loader(files, args, batch, 1 + steps * args.rounds, device), batch, steps)


def bound_pipeline(images: np.ndarray, args: argparse.Namespace, batch: int, steps: int, device: torch.device, precision: str) -> Timed:
    """colorbench's step (channels_last) on one batch already on the device in Lab."""
    from colorbench.images import lab_batch

    step = Step(device, precision, args.compile, channels_last=True)
    L, ab = lab_batch(torch.from_numpy(images[np.arange(batch) % len(images)]).to(device))
    return Timed(step, itertools.repeat((L, ab)), batch, steps)


def measure_row(files: list[Path], images: np.ndarray, args: argparse.Namespace, batch: int, steps: tuple[int, int], device: torch.device, precision: str) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Images/s per round of the three pipelines and of the two data paths alone, interleaved: colorbench's epoch k,
    then bound, seed, colorbench's data path and the seed's data path once each.

    colorbench runs `fit` for 1 + `args.rounds` epochs on steps x batch images (its first epoch warms up); its rate
    is fit's own per-epoch `train_images_per_s`. Interleaving puts a round's measurements within the same minute, so
    a drift of the machine's speed moves them together and cancels in the round's ratios. The data paths alone give
    each pipeline's data share of a step directly (pipeline rate / data rate), which end-to-end ratios on a noisy
    machine cannot resolve when the share is a few per cent. Returns the rates by name and, on CUDA, each
    pipeline's peak allocation in MiB.
    """
    from colorbench import train
    from colorbench.backbones import build_model
    from colorbench.config import TrainConfig
    from colorbench.images import rows
    from colorbench.losses import LOSSES
    from colorbench.train import fit, stage, train_batches

    cuda = device.type == "cuda"
    torch.manual_seed(0)
    index = np.arange(batch * steps[0]) % len(images)
    if args.stream:  # rows of the host array, never moved to the device whole: each batch gathered into pinned memory and copied
        pool, train.RESIDENT_SHARE = rows(images, index), 0.0
    else:
        pool = torch.from_numpy(images[index])
    cfg = TrainConfig(
        epochs=1 + args.rounds, batch_size=batch, lr=3e-4, crop=0.5, precision=precision, channels_last=True, compile=args.compile, device=str(device)
    )
    staged, draws = stage(pool, device), torch.Generator().manual_seed(1)
    seed_data = seed_loader(files, args, batch, steps[1] * args.rounds, device)
    others = {
        "bound": bound_pipeline(images, args, batch, steps[0], device, precision),
        "seed": seed_pipeline(files, args, batch, steps[1], device, precision),
        "colorbench data": DataOnly(lambda: train_batches(staged, cfg, draws, device), device),
        "seed data": DataOnly(lambda: itertools.islice(seed_data, steps[1]), device),
    }
    rates: dict[str, list[float]] = {name: [] for name in ("colorbench", "epoch1", *others)}
    peaks: dict[str, float] = {}

    def note_peak(name: str) -> None:
        """On CUDA: fold the peak allocation since the last reset into `name`'s, and reset."""
        if cuda:
            peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated(device) / MIB)
            torch.cuda.reset_peak_memory_stats(device)

    def after_epoch(record: dict[str, float]) -> None:
        note_peak("colorbench")
        if record["epoch"] == 1:
            rates["epoch1"].append(record["train_images_per_s"])
            return
        rates["colorbench"].append(record["train_images_per_s"])
        for name, pipeline in others.items():
            rates[name].append(pipeline.measure())
            note_peak(name)

    objective = LOSSES.build("mse", {})
    model = build_model("resnet18-6", {}, objective.out_channels).to(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    fit(model, objective, pool, torch.from_numpy(np.array(images[:batch])), cfg, on_epoch=after_epoch)
    return rates, peaks


def cache_costs(files: list[Path], root: Path, size: int) -> tuple[np.ndarray, float, float]:
    """(images, seconds to build the cache entry, seconds to load it again) in a fresh temporary cache."""
    from colorbench.data import decode_cached

    started = time.perf_counter()
    decode_cached("folder", files, root, size)
    built = time.perf_counter() - started
    started = time.perf_counter()
    data = decode_cached("folder", files, root, size)
    images = np.array(data.images)  # read every page
    return images, built, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder of images, searched recursively (default: ../shared/data)")
    parser.add_argument("--limit", type=int, help="use the first N images (default: 64 on CPU, 1024 on CUDA)")
    parser.add_argument("--size", type=int, default=256, help="square training size (default: 256)")
    parser.add_argument("--batch", type=int, default=16, help="small batch (default: 16)")
    parser.add_argument("--large-batch", type=int, help="large batch (default: 64 on CPU, 256 on CUDA)")
    parser.add_argument("--steps", type=int, help="timed steps per measurement (default: 3 on CPU, 20 on CUDA)")
    parser.add_argument("--seed-steps", type=int, help="timed steps per measurement of the slow seed pipeline (default: 3 on CPU, 4 on CUDA)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurements per pipeline; medians reported (default: 3)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the seed pipeline (default: 0, as the seed)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--precision", nargs="+", help="precisions to measure (default: fp32 on CPU, fp32 and bf16 on CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (colorbench and bound)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is steadier on a busy machine)")
    parser.add_argument("--stream", action="store_true", help="colorbench streams every batch from host memory instead of holding the fold on the GPU")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from colorbench.data import find_images
    from colorbench.train import resolve_device

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    limit = args.limit or (1024 if cuda else 64)
    batches = (args.batch, args.large_batch or (256 if cuda else 64))
    steps, seed_steps = args.steps or (20 if cuda else 3), args.seed_steps or (4 if cuda else 3)
    precisions = args.precision or (["fp32", "bf16"] if cuda else ["fp32"])
    root = Path(args.data).expanduser().resolve()
    files = find_images(root, ("*",), ())[:limit]
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    print(f"device {device} ({where}); torch {torch.__version__}; {len(files)} images from {root}, {args.size} px; load {os.getloadavg()[0]:.2f}")
    print(f"steps {steps} (seed {seed_steps}) x {args.rounds} rounds; seed DataLoader workers {args.workers}; compile {args.compile}; stream {args.stream}\n")

    cache = tempfile.mkdtemp(prefix="colorbench-bench-cache-")
    os.environ["COLORBENCH_CACHE_DIR"] = cache
    try:
        images, built, loaded = cache_costs(files, root, args.size)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"cache: build (decode {len(files)} files once) {built:.2f} s, load again {loaded:.3f} s; peak RSS {peak_rss_mib():.0f} MiB")

    ratios: dict[tuple[str, int], tuple[float, float]] = {}
    for precision in precisions:
        for batch in batches:
            rates, peaks = measure_row(files, images, args, batch, (steps, seed_steps), device, precision)
            if (precision, batch) == (precisions[0], batches[0]):
                n = batch * steps
                later = statistics.median(rates["colorbench"])
                print(f"first epoch: cache build {built:.2f} s + epoch 1 {n / rates['epoch1'][0]:.2f} s; later epoch {n / later:.2f} s ({n} images)")
            median = {name: statistics.median(rates[name]) for name in ("seed", "colorbench", "bound")}
            vs_seed = [c / s for c, s in zip(rates["colorbench"], rates["seed"], strict=True)]
            vs_bound = [c / b for c, b in zip(rates["colorbench"], rates["bound"], strict=True)]
            ratios[precision, batch] = statistics.median(vs_seed), statistics.median(vs_bound)
            gpu = "; GPU peak " + " / ".join(f"{peaks.get(name, 0.0):.0f}" for name in ("colorbench", "bound", "seed")) + " MiB" if cuda else ""
            print(
                f"{precision} batch {batch:4d}: seed {median['seed']:8.1f}  colorbench {median['colorbench']:8.1f}  bound {median['bound']:8.1f} img/s"
                f"  | 2/1 {ratios[precision, batch][0]:.2f}  2/3 {ratios[precision, batch][1]:.2f}  | peak RSS {peak_rss_mib():.0f} MiB{gpu}"
            )
            print(f"    per round: seed {fmt(rates['seed'])}  colorbench {fmt(rates['colorbench'])}  bound {fmt(rates['bound'])}  2/1 {fmt(vs_seed, 2)}  2/3 {fmt(vs_bound, 2)}")
            data = {name: statistics.median(rates[f"{name} data"]) for name in ("seed", "colorbench")}
            print(
                f"    data path alone: seed {data['seed']:.1f} img/s ({median['seed'] / data['seed']:.1%} of its pipeline's time), "
                f"colorbench {data['colorbench']:.1f} img/s ({median['colorbench'] / data['colorbench']:.1%})"
            )
    print()
    for precision in precisions:
        vs_seed, vs_bound = ratios[precision, batches[1] if cuda else batches[0]]
        print(f"ratio device={device.type} precision={precision} vs_seed={vs_seed:.2f} vs_bound={vs_bound:.2f}")


def fmt(values: list[float], digits: int = 1) -> str:
    return " ".join(f"{v:.{digits}f}" for v in values)

if __name__ == "__main__":
    main()
