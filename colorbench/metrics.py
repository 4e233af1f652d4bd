"""Evaluation metrics for colorization: the one metric table (`METRICS`, a registry) and its batched torch accumulator.

Each `Metric` entry says its name, which way is better, its region of practical equivalence, whether it is logged per image,
how a set's value is summarised and how it is computed. The accumulator (`ColorizationMetrics`), the search objectives, the
report's ranking (`better`, `badness`, `direction`) and tables, the terminal tables, the per-image CSV and `colorbench list` all
read the table, so a new metric is one entry: `METRICS.add(Metric(...))`, here or in a plugin.

torch is imported inside the functions that compute, so reading the table (as `colorbench report` does) loads no torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from colorbench.errors import ConfigError
from colorbench.registry import Registry

if TYPE_CHECKING:
    import torch

SSIM_WIN = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
BETTER_WORDS = {"higher": "higher is better", "lower": "lower is better", "one": "closer to 1 is better"}
COLOURFUL = 15.0  # truth colourfulness (Hasler & Suesstrunk's 8-bit scale) from which an image's colourfulness ratio is defined
DECODING_MARK = "."  # `psnr.mode`: MLflow names allow letters, digits and _ - . / space (not @), and `_mean`/`_std` are fold statistics
DEFAULT_DECODING = "default"
CHOSEN = "chosen"  # `val_psnr.chosen`: a validation metric at the decoding `train.decode` chose
METRIC_NAME = re.compile(r"[a-z][a-z0-9_]*")


def colorfulness(rgb: torch.Tensor) -> torch.Tensor:
    """Hasler & Suesstrunk (2003) colourfulness of (B,3,H,W) RGB in [0,1] on the 8-bit scale -> (B,)."""
    x = rgb.double().flatten(2) * 255.0
    r, g, b = x.unbind(1)
    rg = r - g
    yb = 0.5 * (r + g) - b
    sigma = (rg.var(1, unbiased=False) + yb.var(1, unbiased=False)).sqrt()
    mu = (rg.mean(1) ** 2 + yb.mean(1) ** 2).sqrt()
    return sigma + 0.3 * mu


def psnr(rgb_pred: torch.Tensor, rgb_true: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B,C,H,W) images with data range 1 -> (B,)."""
    mse = (rgb_pred.double() - rgb_true.double()).pow(2).flatten(1).mean(1)
    return -10.0 * mse.clamp_min(1e-10).log10()


def ssim(rgb_pred: torch.Tensor, rgb_true: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of (B,C,H,W) images with data range 1, mean over channels -> (B,).

    Matches skimage's structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1): statistics over the valid region of an 11x11 gaussian window, which is exactly the region
    skimage averages after cropping its border.
    """
    import torch.nn.functional as F

    from colorbench.filters import gaussian_taps

    x, y = rgb_pred.double(), rgb_true.double()
    c = x.shape[1]
    w = gaussian_taps(SSIM_WIN // 2, SSIM_SIGMA, x.dtype, x.device)  # as scipy's gaussian_filter, truncate 3.5
    wh = w.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    wv = w.view(1, 1, -1, 1).expand(c, 1, -1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, wh, groups=c), wv, groups=c)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def auc_percent(counts: torch.Tensor) -> torch.Tensor:
    """AuC in percent from error histograms (..., T+2): bin k<=T holds errors in (k-1, k], bin T+1 errors > T."""
    cdf = counts[..., :-1].cumsum(-1).double() / counts.sum(-1, keepdim=True).double()
    return 100.0 * cdf.mean(-1)


@dataclass(frozen=True)
class Batch:
    """What a metric sees of one batch: L (B,1,H,W), predicted and true ab (B,2,H,W) and sRGB (B,3,H,W) in [0,1],
    the squared ab error per pixel (B,H,W) and each image's histogram of ab errors (B,T+2) (see `auc_percent`)."""

    L: torch.Tensor
    ab_pred: torch.Tensor
    ab_true: torch.Tensor
    rgb_pred: torch.Tensor
    rgb_true: torch.Tensor
    sq_err: torch.Tensor
    error_hist: torch.Tensor


@dataclass(frozen=True)
class Totals:
    """What a metric sees of a whole set: every per-image metric's values (N,), the ab error histogram per ground-truth
    ab bin (Q,T+2), and the summed squared ab error over its pixel count."""

    per_image: dict[str, torch.Tensor]
    bin_hist: torch.Tensor
    sq_err: torch.Tensor
    pixels: int


@dataclass(frozen=True)
class Metric:
    """One row of the metric table.

    - `better`: `higher`, `lower` or `one` (closest to 1 is best): the report ranks by it, a search objective must agree.
    - `per_image`: the value of each image of a batch (B,); such metrics go into `test_per_image.csv` and the per-image
      significance test. None: a set-level metric only.
    - `summary`: the set's value from the totals; None = the mean of the per-image values.
    - Neither: computed elsewhere (`loss`, by the objective in `train.evaluate`).
    - `headline`: shown in the terminal tables and the per-decoding table.
    - `rope`: the region of practical equivalence, in the metric's units: two configurations whose difference stays within
      +-rope are equivalent for practical purposes (the verdicts' equivalence test). None: no default, equivalence is not judged
      unless the report is given one.
    - `unit`: its unit in the report's sentences (`dB`), empty for unitless metrics.
    """

    name: str
    better: Literal["higher", "lower", "one"]
    description: str
    per_image: Callable[[Batch], torch.Tensor] | None = None
    summary: Callable[[Totals], torch.Tensor] | None = None
    headline: bool = False
    rope: float | None = None
    unit: str = ""

    def __post_init__(self) -> None:
        if not METRIC_NAME.fullmatch(self.name):
            raise ValueError(f"metric name {self.name!r} must be lower-case letters, digits and _ (it becomes test_<name>_mean in MLflow)")
        if self.better not in BETTER_WORDS:
            raise ValueError(f"metric {self.name!r}: better must be one of {', '.join(BETTER_WORDS)}, not {self.better!r}")
        if self.rope is not None and not self.rope > 0:
            raise ValueError(f"metric {self.name!r}: rope must be a positive difference in its units (or None), not {self.rope!r}")

    @property
    def computed(self) -> bool:
        """Whether `ColorizationMetrics` computes it (else it comes from elsewhere, e.g. the loss)."""
        return self.per_image is not None or self.summary is not None

    def summarise(self, totals: Totals) -> float:
        """The set-level value."""
        return float(totals.per_image[self.name].mean() if self.summary is None else self.summary(totals))

    def traits(self) -> str:
        """Its direction, ROPE and kind in one line, for `colorbench list`."""
        kind = "per image" if self.per_image is not None else "per set" if self.summary is not None else "from the loss"
        return f"better={self.better}, rope={self.rope}, {kind}" + (", headline" if self.headline else "")


class MetricRegistry(Registry[Metric]):
    """The metric table as a registry. Its entries are `Metric`s themselves (a metric has no options to build it with), kept in
    the order they were added: the order of every table, CSV column and objective list."""

    columns = ("name", "direction, ROPE, values", "description")

    def add(self, metric: Metric) -> Metric:
        """Register `metric` under its name (a ValueError if the name is taken)."""
        return self.register(metric.name)(metric)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __getitem__(self, name: str) -> Metric:
        return self.get(name)

    def values(self) -> list[Metric]:
        """The entries, in table order."""
        return list(self._entries.values())

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, direction, ROPE and kind, description) of each metric, for `colorbench list`."""
        return [(m.name, m.traits(), m.description) for m in self.values()]


def colorfulness_ratio(b: Batch) -> torch.Tensor:
    """Each image's predicted over true colourfulness (B,); NaN where the truth is below COLOURFUL (Hasler & Suesstrunk's "slightly
    colourful"): a nearly gray truth makes the ratio unstable, so such an image has no ratio."""
    import torch

    true = colorfulness(b.rgb_true)
    return torch.where(true >= COLOURFUL, colorfulness(b.rgb_pred) / true.clamp_min(COLOURFUL), torch.nan)


def _rebalanced_auc(t: Totals) -> torch.Tensor:
    present = t.bin_hist.sum(1) > 0
    return auc_percent(t.bin_hist[present]).mean()


# ROPEs: a difference below these is too small to matter in practice. PSNR 0.1 dB and SSIM 0.005 are below what papers on
# colorization report as improvements; ab_rmse 0.5 Lab units is half of the just-noticeable colour difference (Delta E about 1);
# 0.5 AuC points; colourfulness 1 unit on Hasler & Suesstrunk's 8-bit scale, whose perceptual classes are about 15 units apart;
# the colourfulness ratio 0.01 (1 % of the truth's colourfulness); the loss has none (its scale differs between losses).
METRICS = MetricRegistry("metric")
METRICS.add(Metric("loss", "lower", "the training objective (not comparable between losses)"))
METRICS.add(Metric(
    "ab_rmse", "lower", "root mean squared ab error over all pixels, Lab units",
    per_image=lambda b: b.sq_err.flatten(1).mean(1).sqrt(), summary=lambda t: (t.sq_err / t.pixels).sqrt(), rope=0.5, unit="Lab units",
))
METRICS.add(Metric("psnr", "higher", "PSNR of the reconstructed sRGB, dB", per_image=lambda b: psnr(b.rgb_pred, b.rgb_true), headline=True, rope=0.1, unit="dB"))
METRICS.add(Metric("ssim", "higher", "SSIM of the reconstructed sRGB", per_image=lambda b: ssim(b.rgb_pred, b.rgb_true), rope=0.005))
METRICS.add(Metric(
    "auc", "higher", "area under the CDF of per-pixel ab error, thresholds 0..150, percent (Zhang et al. 2016)",
    per_image=lambda b: auc_percent(b.error_hist), summary=lambda t: auc_percent(t.bin_hist.sum(0)), rope=0.5, unit="points",
))
METRICS.add(Metric("auc_rebalanced", "higher", "auc with each ground-truth ab bin weighted equally", summary=_rebalanced_auc, headline=True, rope=0.5, unit="points"))
METRICS.add(Metric("colorfulness_pred", "higher", "Hasler & Suesstrunk colourfulness of the output", per_image=lambda b: colorfulness(b.rgb_pred), rope=1.0))
METRICS.add(Metric("colorfulness_true", "higher", "Hasler & Suesstrunk colourfulness of the truth", per_image=lambda b: colorfulness(b.rgb_true), rope=1.0))
METRICS.add(Metric(
    "colorfulness_ratio", "one",
    f"mean output colourfulness / mean truth colourfulness (far below 1: desaturated); per image, its own ratio where its truth's is >= {COLOURFUL:g}",
    per_image=colorfulness_ratio, summary=lambda t: t.per_image["colorfulness_pred"].mean() / t.per_image["colorfulness_true"].mean(),
    headline=True, rope=0.01,
))


def decoded(name: str, decoding: str) -> str:
    """A metric's name under one of a loss's decodings: `psnr` for the default, `psnr.mode`, `psnr.T1` for the others."""
    return name if decoding == DEFAULT_DECODING else f"{name}{DECODING_MARK}{decoding}"


def metric_spec(name: str) -> Metric | None:
    """The table entry of a logged metric name, its decoding suffix ignored (`psnr.mode` -> psnr); None when not in the table."""
    base = name.split(DECODING_MARK, 1)[0]
    if base not in METRICS:
        return None
    return METRICS[base]


def better(metric: str) -> str:
    """`higher`, `lower` or `one`, from the metric table (a decoding such as `psnr.mode` reads as its metric)."""
    spec = metric_spec(metric)
    if spec is None:
        raise ConfigError(f"metric {metric!r} is not in the metric table (colorbench.metrics.METRICS), so its direction is unknown; rank on another")
    return spec.better


Values = TypeVar("Values")  # a numpy array or a pandas Series of one metric's values


def badness(metric: str, values: Values) -> Values:
    """Lower is better: the value for lower-is-better metrics, the distance from 1 for closest-to-1 ones, minus it otherwise."""
    return {"lower": values, "one": abs(values - 1)}.get(better(metric), -values)


def tested(metric: str, values: Values) -> Values:
    """The values a comparison's differences are taken of, in the metric's units: the value itself, or for closest-to-1 metrics its
    distance from 1 (so "better" means "closer to 1", not "different")."""
    return abs(values - 1) if better(metric) == "one" else values


def rope(metric: str, overrides: Mapping[str, float] | None = None) -> float:
    """A metric's region of practical equivalence: `overrides` (the report's --rope) first, else the metric table's; 0 when it has
    none (equivalence is then not judged)."""
    if overrides and metric in overrides:
        return float(overrides[metric])
    spec = metric_spec(metric)
    return float(spec.rope) if spec is not None and spec.rope is not None else 0.0


def unit(metric: str) -> str:
    """A metric's unit for sentences (`dB`), empty when it has none or is not in the table."""
    spec = metric_spec(metric)
    return spec.unit if spec is not None else ""


def direction(metric: str) -> str:
    """How to read a metric in words (`higher is better`, ...)."""
    return BETTER_WORDS[better(metric)]


def headline_metrics() -> list[str]:
    """The metrics the terminal tables show, in table order."""
    return [m.name for m in METRICS.values() if m.headline]


class ColorizationMetrics:
    """Accumulates every computed metric of `METRICS` over batches.

    update(L, ab_pred, ab_true) takes L (B,1,H,W) in Lab units [0,100] and ab (B,2,H,W) in Lab units.
    compute() -> {name: value} over everything seen; per_image() -> one dict of the per-image metrics per image, in update
    order. AuC (Zhang et al. 2016) is the mean over thresholds 0..`thresholds` of the fraction of pixels whose ab error is
    <= the threshold, in percent; the rebalanced AuC averages that over the ground-truth ab bins present in the whole set.
    Both come from integer-threshold error histograms, so memory stays O(Q x T).
    """

    def __init__(self, centres: torch.Tensor | None = None, thresholds: int = 150) -> None:
        from colorbench.color import ab_gamut_bins

        self.centres = ab_gamut_bins() if centres is None else centres
        self.thresholds = thresholds
        self.metrics = [m for m in METRICS.values() if m.computed]
        self._sq_err: torch.Tensor | None = None  # float64 sum of squared ab errors
        self._pixels = 0
        self._bin_counts: torch.Tensor | None = None  # (Q, T+2) int64, error histogram per truth ab bin
        # per-image values as Python floats: a small tensor kept per batch splits the holes freed by the batch's large ones, and
        # glibc's heap then grows with every batch (2 GB after 200 batches of 64 x 64 x 64)
        self._per_image: dict[str, list[float]] = {m.name: [] for m in self.metrics if m.per_image is not None}
        self._per_image_dtype: dict[str, torch.dtype] = {}

    def update(self, L: torch.Tensor, ab_pred: torch.Tensor, ab_true: torch.Tensor) -> None:
        """Add a batch: L (B,1,H,W), ab_pred and ab_true (B,2,H,W), all in Lab units."""
        import torch

        from colorbench.color import lab_to_rgb, nearest_bins

        with torch.no_grad():
            b = L.shape[0]
            nbins = self.thresholds + 2
            centres = self.centres.to(device=ab_true.device, dtype=ab_true.dtype)
            if self._bin_counts is None:
                self._bin_counts = torch.zeros(len(centres), nbins, dtype=torch.int64, device=ab_true.device)
                self._sq_err = torch.zeros((), dtype=torch.float64, device=ab_true.device)

            sq = (ab_pred.double() - ab_true.double()).pow(2).sum(1)  # (B,H,W)
            self._sq_err += sq.sum()
            self._pixels += sq.numel()
            # error e lands in bin ceil(e): e <= t for integer t exactly when ceil(e) <= t; beyond T -> overflow bin
            hist_bin = sq.sqrt().ceil().clamp_max(self.thresholds + 1).long()
            flat = (nearest_bins(ab_true, centres) * nbins + hist_bin).flatten()
            self._bin_counts += torch.bincount(flat, minlength=self._bin_counts.numel()).view_as(self._bin_counts)
            image = torch.arange(b, device=sq.device).view(b, 1, 1)
            image_hist = torch.bincount((image * nbins + hist_bin).flatten(), minlength=b * nbins).view(b, nbins)
            rgb_pred = lab_to_rgb(torch.cat([L, ab_pred], 1))
            rgb_true = lab_to_rgb(torch.cat([L, ab_true], 1))
            batch = Batch(L, ab_pred, ab_true, rgb_pred, rgb_true, sq, image_hist)
            for m in self.metrics:
                if m.per_image is not None:
                    values = m.per_image(batch)
                    self._per_image_dtype[m.name] = values.dtype
                    self._per_image[m.name] += values.tolist()

    def _stacked(self) -> dict[str, torch.Tensor]:
        import torch

        if self._bin_counts is None:
            raise ValueError("ColorizationMetrics: no batches seen; call update() before compute()/per_image()")
        return {k: torch.tensor(v, dtype=self._per_image_dtype[k]) for k, v in self._per_image.items()}

    def compute(self) -> dict[str, float]:
        """Set-level value of every computed metric over every batch seen so far, in table order."""
        totals = Totals(self._stacked(), self._bin_counts, self._sq_err, self._pixels)
        return {m.name: m.summarise(totals) for m in self.metrics}

    def per_image(self) -> list[dict[str, float]]:
        """One dict per image, in update order: the metrics with per-image values (the columns of test_per_image.csv)."""
        per = {k: v.cpu().tolist() for k, v in self._stacked().items()}
        return [dict(zip(per, row)) for row in zip(*per.values())]
