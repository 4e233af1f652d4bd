"""How colorbench's cost grows with the data: cache build (1 worker and all workers), one training epoch and anonymous memory
at N = 2,000 and 20,000 photos, and the colorization of one 144-megapixel photo.

For each N the script makes (once, kept in `--folder`) a realistic folder of N JPEGs: random crops of the photos below
`--data` (default ../shared/data), each resized to a long side of 320-640 px and re-encoded (quality 90). Then, each in a
fresh child process with a fresh cache:
- `workers=1`: build the cache with one decoding process (`COLORBENCH_DECODE_WORKERS=1`);
- `workers=W` (all the CPUs): build it with the pool, then train one epoch of resnet18-6 + mse (batch 32, Adam) on
  every image but the last 64 (the validation fold, scored once after the epoch) from the memory map.
The parent samples the child's anonymous resident memory (`RssAnon` in /proc/PID/status, every 20 ms): pages of the
memory map are file-backed (the page cache's business) and do not count. One line per run:

    scale n=... workers=... build_img_per_s=... epoch_img_per_s=... peak_anon_mib=...

and a last line `scale ratio anon_growth=X decode_speedup=Y epoch_ratio=Z`: X = peak anon of the all-workers run at the
largest N / at the smallest, Y = all-workers build rate / 1-worker rate (at the largest N), Z = epoch rate at the largest
N / at the smallest. Targets on the 2-core machine: X <= 1.15, Y >= 1.7, Z >= 0.9.

Then it writes a 12000 x 12000 JPEG (144 MP, an upscaled photo) and colorizes it with `colorize_files` in a child process
with an untrained resnet18-6 checkpoint: `colorize mp=... peak_rss_mib=... mp_per_s=...` (peak RSS of that process from
wait4; the rate counts decoding, composition and writing the PNG). Targets: peak RSS <= 1536 MiB, >= 5 MP/s.

With `--grid`, it also runs a real `colorbench run` on each folder (one cell: resnet18-6 + mse, hold-out, one epoch, the
cache built with all workers, an MLflow store in a temporary folder) and samples that process the same way:
`grid n=... seconds=... peak_anon_mib=...`, then `grid ratio anon_growth=X` (target X <= 1.15).

    python benchmarks/data_scale.py                              # N = 2,000 and 20,000 at 64 px, then the 144-MP photo (~15 min on 2 cores)
    python benchmarks/data_scale.py --grid --colorize-mp 0       # the same scale runs, then a whole grid on each folder
    python benchmarks/data_scale.py --sizes 200 400 --colorize-mp 4   # a 1-minute smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
KIB_PER_MIB = 1024
CLI = "import sys; from colorbench.cli import main; sys.exit(main(sys.argv[1:]))"  # `colorbench ...` with this interpreter


def make_photo(job: tuple[Path, Path, int]) -> None:
    """One realistic JPEG: a random crop (40-100 % of the short side) of `source`, long side 320-640 px, quality 90."""
    from colorbench.data import open_rgb

    source, target, seed = job
    rng = np.random.default_rng(seed)
    img = open_rgb(source)
    w, h = img.size
    side_w, side_h = (int(s * rng.uniform(0.4, 1.0)) for s in (w, h))
    x, y = int(rng.integers(0, w - side_w + 1)), int(rng.integers(0, h - side_h + 1))
    long_side = int(rng.integers(320, 641))
    scale = long_side / max(side_w, side_h)
    crop = img.crop((x, y, x + side_w, y + side_h)).resize((max(16, round(side_w * scale)), max(16, round(side_h * scale))))
    crop.save(target, quality=90)


def photo_folder(root: Path, data: Path, n: int) -> Path:
    """`root/n<N>` holding N JPEGs (made once in parallel, reused when complete)."""
    from colorbench.data import find_images

    folder = root / f"n{n}"
    if folder.is_dir() and len(list(folder.rglob("*.jpg"))) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    sources = find_images(data, ("*",), ())
    jobs = []
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"  # 1,000 files a folder, as large sets are laid out
        sub.mkdir(parents=True, exist_ok=True)
        jobs.append((sources[i % len(sources)], sub / f"{i:06d}.jpg", i))
    started = time.perf_counter()
    with ProcessPoolExecutor() as pool:
        list(pool.map(make_photo, jobs, chunksize=64))
    print(f"made {n} JPEGs from {len(sources)} photos in {time.perf_counter() - started:.0f} s: {folder}", flush=True)
    return folder


def child_run(folder: str, size: int, epoch: bool) -> None:
    """In a fresh process: build the cache (workers from the environment), optionally train one epoch; print JSON."""
    import torch

    if os.environ.get("SCALE_THREADS"):
        torch.set_num_threads(int(os.environ["SCALE_THREADS"]))
    from colorbench.backbones import build_model
    from colorbench.config import TrainConfig
    from colorbench.data import SOURCES
    from colorbench.losses import LOSSES
    from colorbench.train import fit

    started = time.perf_counter()
    data = SOURCES.build("folder", {"path": folder, "image_size": size})
    result = {"build_img_per_s": len(data) / (time.perf_counter() - started), "n": len(data)}
    if epoch:
        torch.manual_seed(0)
        objective = LOSSES.build("mse", {})
        model = build_model("resnet18-6", {}, objective.out_channels)
        train, val = data.subset(np.arange(len(data) - 64)), data.subset(np.arange(len(data) - 64, len(data)))
        cfg = TrainConfig(epochs=1, batch_size=32, lr=3e-4, seed=0)
        result["epoch_img_per_s"] = fit(model, objective, train.images, val.images, cfg).history[0]["train_images_per_s"]
    print("RESULT " + json.dumps(result), flush=True)


def grid_runs(root: Path, data: Path, sizes: list[int], image_size: int) -> None:
    """A one-cell, one-epoch `colorbench run` on each folder, in a fresh process with a fresh cache and store; one `grid` line
    each, then their memory ratio."""
    peaks = {}
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="colorbench-scale-grid-") as tmp:
            grid = {
                "experiment": f"scale-n{n}",
                "data": {"source": "folder", "path": str(photo_folder(root, data, n)), "image_size": image_size},
                "train": {"epochs": 1, "batch_size": 32, "lr": 3.0e-4, "seed": 0},
                "test_fraction": 0.05,
                "grid": {"backbone": ["resnet18-6"], "loss": ["mse"], "splitter": [{"name": "holdout", "val_fraction": 0.1}]},
            }
            (Path(tmp) / "grid.yaml").write_text(json.dumps(grid))  # JSON is YAML
            command = [sys.executable, "-c", CLI, "run", str(Path(tmp) / "grid.yaml"), "--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]
            started = time.perf_counter()
            _, peaks[n], _ = measured(command, child_env(COLORBENCH_CACHE_DIR=tmp))
        print(f"grid n={n} seconds={time.perf_counter() - started:.0f} peak_anon_mib={peaks[n]:.0f}", flush=True)
    print(f"grid ratio anon_growth={peaks[max(sizes)] / peaks[min(sizes)]:.3f}", flush=True)


def rss_anon_kib(pid: int) -> int:
    """The process's anonymous resident memory (KiB), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measured(command: list[str], env: dict[str, str]) -> tuple[dict, float, float]:
    """Run `command`; return its RESULT json (if it prints one), its peak RssAnon (MiB, sampled every 20 ms) and its peak RSS (MiB, from wait4)."""
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(command, env=env, stdout=out)
        peak = 0
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, rss_anon_kib(child.pid))
            time.sleep(0.02)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if child.returncode:
        sys.exit(f"child failed ({child.returncode}): {' '.join(command)}\n{text[-2000:]}")
    result = json.loads(text.split("RESULT ", 1)[1].splitlines()[0]) if "RESULT " in text else {}
    return result, peak / KIB_PER_MIB, usage.ru_maxrss / KIB_PER_MIB


def child_colorize(checkpoint: str, photo: str, out: str) -> None:
    """In a fresh process: colorize one photo file; print the seconds it took and this process's peak RSS."""
    import resource

    from colorbench.colorize import colorize_files, load

    colorizer = load(checkpoint, device="cpu")
    started = time.perf_counter()
    written, failed = colorize_files(colorizer, [photo], out)
    seconds = time.perf_counter() - started
    assert written and not failed, failed
    print(
        "RESULT " + json.dumps({"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB}),
        flush=True,
    )


def make_large_photos(data: Path, folder: Path, megapixels: float) -> tuple[int, dict[str, Path]]:
    """A square JPEG of about `megapixels` MP (a shared photo upscaled) in colour and as a gray scan (mode L), made in a child
    process to keep this one small; returns the side and the two files."""
    side = round((megapixels * 1e6) ** 0.5)
    photos = {"colour": folder / "large.jpg", "gray": folder / "large_scan.jpg"}
    code = (
        "import sys; from PIL import Image; from colorbench.data import find_images, open_rgb; from pathlib import Path; "
        f"Image.MAX_IMAGE_PIXELS = None; big = open_rgb(find_images(Path({str(data)!r}), ('*',), ())[0]).resize(({side}, {side}), Image.Resampling.BICUBIC); "
        f"big.save({str(photos['colour'])!r}, quality=90); big.convert('L').save({str(photos['gray'])!r}, quality=90)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env())
    return side, photos


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="photos to crop from (default: ../shared/data)")
    parser.add_argument(
        "--sizes", type=int, nargs="*", default=[2000, 20000], help="numbers of photos (default: 2000 20000; none: colorize only)"
    )
    parser.add_argument("--image-size", type=int, default=64, help="cache image_size (default: 64)")
    parser.add_argument("--workers", type=int, help="decoding processes of the parallel build (default: the usable CPUs)")
    parser.add_argument(
        "--folder", default=str(Path(tempfile.gettempdir()) / "colorbench-data-scale"), help="where the photo folders are made and kept"
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads of the training epoch (default: torch's; 1 is steadier on a busy machine)"
    )
    parser.add_argument("--colorize-mp", type=float, default=144.0, help="megapixels of the colorized photo (0: skip; default: 144)")
    parser.add_argument("--grid", action="store_true", help="also run a one-cell `colorbench run` on each folder and compare its memory")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        child_run(rest[0], int(rest[1]), rest[2] == "1") if kind == "run" else child_colorize(*rest)
        return

    from colorbench.data import decode_workers

    workers = args.workers or decode_workers()
    root, data = Path(args.folder), Path(args.data).expanduser().resolve()
    print(
        f"{os.cpu_count()} CPUs, decoding workers {workers}, torch threads {args.threads or 'default'}; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    rows: dict[tuple[int, int], tuple[dict, float]] = {}
    for n in args.sizes:
        folder = photo_folder(root, data, n)
        for w in (1, workers):
            with tempfile.TemporaryDirectory(prefix="colorbench-scale-cache-") as cache:
                env = child_env(COLORBENCH_CACHE_DIR=cache, COLORBENCH_DECODE_WORKERS=str(w), SCALE_THREADS=str(args.threads or ""))
                result, anon, _ = measured(
                    [sys.executable, __file__, "--child", "run", str(folder), str(args.image_size), "1" if w == workers else "0"], env
                )
            rows[n, w] = result, anon
            epoch = f"{result['epoch_img_per_s']:.1f}" if "epoch_img_per_s" in result else "-"
            print(
                f"scale n={n} workers={w} build_img_per_s={result['build_img_per_s']:.1f} epoch_img_per_s={epoch} peak_anon_mib={anon:.0f}",
                flush=True,
            )
    if args.sizes:
        report_ratios(rows, args.sizes, workers)
    if args.grid and args.sizes:
        grid_runs(root, data, args.sizes, args.image_size)
    if args.colorize_mp > 0:
        colorize_large(data, args.colorize_mp, args.image_size)


def report_ratios(rows: dict[tuple[int, int], tuple[dict, float]], sizes: list[int], workers: int) -> None:
    """The last line: memory growth, decoding speed-up and epoch-rate ratio between the smallest and largest N."""
    small, large = min(sizes), max(sizes)
    growth = rows[large, workers][1] / rows[small, workers][1]
    speedup = rows[large, workers][0]["build_img_per_s"] / rows[large, 1][0]["build_img_per_s"]
    ratio = rows[large, workers][0]["epoch_img_per_s"] / rows[small, workers][0]["epoch_img_per_s"]
    print(f"scale ratio anon_growth={growth:.3f} decode_speedup={speedup:.2f} epoch_ratio={ratio:.2f}", flush=True)


def colorize_large(data: Path, megapixels: float, image_size: int) -> None:
    """Colorize a colour photo and a gray scan of `megapixels` MP, each in a fresh process; one `colorize` line each."""
    import torch

    from colorbench.backbones import build_model

    with tempfile.TemporaryDirectory(prefix="colorbench-scale-colorize-") as tmp:
        checkpoint = Path(tmp) / "checkpoint.pt"
        side, photos = make_large_photos(data, Path(tmp), megapixels)
        torch.manual_seed(0)
        meta = {"backbone": {"name": "resnet18-6", "options": {}}, "loss": {"name": "mse", "options": {}}, "image_size": image_size}
        torch.save({"state_dict": build_model("resnet18-6", {}, 2).state_dict(), **meta}, checkpoint)
        for kind, photo in photos.items():
            command = [sys.executable, __file__, "--child", "colorize", str(checkpoint), str(photo), str(Path(tmp) / "out")]
            result, anon, peak = measured(command, child_env())
            mp = side * side / 1e6
            print(
                f"colorize kind={kind} mp={mp:.1f} peak_rss_mib={peak:.0f} peak_anon_mib={anon:.0f} mp_per_s={mp / result['seconds']:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
