"""The comparison's figures: validation Dice and LR curves as small multiples, test Dice per method, robustness
heatmap (test Dice)."""

from __future__ import annotations

import io
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np

from rlsched.common.files import atomic_write_bytes
from rlsched.common.stats import mean_ci
from rlsched.compare.methods import Comparison, Method
from rlsched.compare.summary import by_method, lr_curve, per_instance

# tab10 without its red and grey, which mark learned policies and baselines
SCHEDULE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
LEARNED_COLOURS = ("#d62728", "#111111", "#8b0000", "#6a3d9a")


def styles(methods: list[Method]) -> dict[str, dict[str, Any]]:
    """Learned policies bold red/black on top; schedules in distinct colours, practitioners' alternatives (range
    test, tuning-free optimizers, recipes) in the same cycle, dash-dotted; baselines grey and dashed."""
    palettes = {"learned": itertools.cycle(LEARNED_COLOURS), "fixed": itertools.cycle(SCHEDULE_COLOURS)}
    out = {}
    for m in methods:
        style = m.declared.style  # as its kind declares it (experiment.kinds)
        colour = next(palettes[style.palette]) if style.palette else style.colour
        out[m.name] = {"color": colour, "lw": style.width, "ls": style.line}
    return out


def _band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column mean and t 95% CI (columns are epochs, rows instances; NaNs skipped)."""
    cis = [mean_ci(column[np.isfinite(column)]) for column in values.T]
    return np.array([c.mean for c in cis]), np.array([c.low for c in cis]), np.array([c.high for c in cis])


def _save(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130)
    atomic_write_bytes(path, buffer.getvalue())


def _small_multiples(
    curves: dict[str, np.ndarray],
    epochs: np.ndarray,
    order: list[str],
    references: list[str],
    style: dict[str, dict[str, Any]],
    test_means: dict[str, float],
    *,
    log: bool,
    ylabel: str,
    ylim: tuple[float, float],
    title: str,
    target: float | None = None,
) -> Any:
    """One panel per method (mean line, 95% CI band), ranked by test Dice, with the ``references`` (the
    learned policies) overlaid in every panel: eleven overlapping bands on one axis would be unreadable."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    cols = min(4, len(order))
    rows = math.ceil(len(order) / cols)
    fig = Figure(figsize=(3.4 * cols, 2.5 * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    for rank, (ax, name) in enumerate(zip(axes, order), start=1):
        for other in [r for r in references if r != name] + [name]:
            s, own = style[other], other == name
            mean, low, high = _band(np.log10(curves[other]) if log else curves[other])
            if log:
                mean, low, high = 10**mean, 10**low, 10**high
            ax.plot(
                epochs,
                mean,
                drawstyle="steps-post" if log else "default",
                color=s["color"],
                ls=s["ls"],
                lw=s["lw"] if own else 1.2,
                alpha=1.0 if own else 0.75,
                zorder=4 if own else 3,
            )
            if own:
                ax.fill_between(
                    epochs,
                    np.clip(low, *ylim),
                    np.clip(high, *ylim),
                    step="post" if log else None,
                    color=s["color"],
                    alpha=0.2,
                    lw=0,
                )
        ax.set_title(
            f"{rank}. {name}  ({test_means[name]:.3f})",
            color=style[name]["color"],
            fontsize=10,
            fontweight="bold" if name in references else "normal",
        )
        if target is not None:
            ax.axhline(target, color="#999999", lw=0.8, ls="-.", zorder=1)
        ax.grid(alpha=0.3, which="both")
    for ax in axes[len(order) :]:
        ax.set_visible(False)
    for ax in axes[max(0, len(order) - cols) : len(order)]:  # the lowest panel of each column
        ax.set_xlabel("epoch")
        ax.tick_params(labelbottom=True)
    axes[0].set(ylim=ylim, xlim=(epochs[0], epochs[-1]), yscale="log" if log else "linear")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.supylabel(ylabel)
    fig.suptitle(f"{title}\npanels ranked by test Dice (in brackets); line: mean, band: 95% CI")
    if references:
        handles = [Line2D([], [], color=style[r]["color"], lw=1.2, alpha=0.75) for r in references]
        fig.legend(
            handles,
            [f"{r} (thin, in every panel)" for r in references],
            loc="outside lower center",
            ncols=len(references),
            frameon=False,
        )
    return fig


def plot(comparison: Comparison, out_dir: Path) -> None:
    """dice_vs_epoch.png, lr_vs_epoch.png, final_dice.png, cost_quality.png and (with robustness runs)
    robustness.png."""
    from matplotlib.figure import Figure

    cfg = comparison.config.env
    runs = by_method(comparison.results)
    style = styles(comparison.methods)
    test_means = {name: float(np.mean(per_instance(rs, lambda r: r.test_dice))) for name, rs in runs.items()}
    order = sorted(runs, key=lambda name: -test_means[name])
    learned = [m.name for m in comparison.methods if m.learned]
    epochs = np.arange(cfg.steps + 1) * cfg.epochs_per_step
    where = f"preset {comparison.config.name}, {len(comparison.instances)} held-out instances"

    dices = {name: per_instance(rs, lambda r: r.dice_curve(cfg.steps)) for name, rs in runs.items()}
    fig = _small_multiples(
        dices,
        epochs,
        order,
        learned,
        style,
        test_means,
        log=False,
        ylabel="validation Dice",
        ylim=(0.0, 1.0),
        title=f"Validation Dice vs epoch — {where}",
        target=comparison.settings.dice_target,
    )
    _save(fig, out_dir / "dice_vs_epoch.png")
    # the LR of step k holds from epoch k-1 to k: repeat the last one so steps-post reaches the budget's end
    # (a method's rollouts on one instance: their geometric mean)
    lrs = {
        name: 10 ** per_instance(rs, lambda r: np.log10(np.append(c := lr_curve(r, cfg.steps), c[-1])))
        for name, rs in runs.items()
    }
    fig = _small_multiples(
        lrs,
        epochs,
        order,
        learned,
        style,
        test_means,
        log=True,
        ylabel="learning rate",
        ylim=(cfg.lr_min, cfg.lr_max),
        title=f"Learning rate vs epoch — {where} (geometric mean)",
    )
    _save(fig, out_dir / "lr_vs_epoch.png")

    fig = Figure(figsize=(9, 0.45 * len(order) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for y, name in enumerate(reversed(order)):  # best on top
        s, values = style[name], per_instance(runs[name], lambda r: r.test_dice)
        ci = mean_ci(values)
        ax.errorbar(
            ci.mean,
            y,
            xerr=[[ci.mean - ci.low], [ci.high - ci.mean]],
            fmt="D",
            color=s["color"],
            ms=8,
            capsize=4,
            lw=1.5,
            alpha=0.55,
            zorder=2,
        )
        ax.scatter(
            values, y + rng.uniform(-0.2, 0.2, values.size), s=30, color=s["color"], alpha=0.9, lw=0, zorder=3
        )
    ax.set_yticks(range(len(order)), list(reversed(order)))
    for tick, name in zip(ax.get_yticklabels(), reversed(order)):
        tick.set_fontweight("bold" if name in learned else "normal")
    ax.set(
        xlabel="test Dice (held-out test split, after the last epoch)",
        xlim=(0, 1),
        title=f"Test Dice per method — {where}\n(dots: instances; diamond and bar: mean, 95% CI)",
    )
    ax.grid(alpha=0.3, axis="x")
    _save(fig, out_dir / "final_dice.png")
    _save(_cost_quality(comparison, runs, style, learned, where), out_dir / "cost_quality.png")

    if comparison.robustness:
        robust = {r.method for _, results in comparison.robustness.values() for r in results}
        _save(
            _robustness_heatmap(comparison, [n for n in order if n in robust], learned, where),
            out_dir / "robustness.png",
        )


def _robustness_heatmap(comparison: Comparison, order: list[str], learned: list[str], where: str) -> Any:
    """Methods x initial-LR factors, coloured by mean test Dice and annotated with its CI and divergences:
    with a handful of instances the error bars of a line plot would cover everything."""
    from matplotlib.figure import Figure

    factors = list(comparison.robustness)
    runs = {f: by_method(results) for f, (_, results) in comparison.robustness.items()}
    cis = [[mean_ci([r.test_dice for r in runs[f][name]]) for f in factors] for name in order]
    diverged = [[sum(r.diverged for r in runs[f][name]) for f in factors] for name in order]
    fig = Figure(figsize=(2.0 * len(factors) + 3.5, 0.5 * len(order) + 2.0), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow([[c.mean for c in row] for row in cis], cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for y, (row, counts) in enumerate(zip(cis, diverged)):
        for x, (ci, count) in enumerate(zip(row, counts)):
            text = f"{ci.mean:.2f} ± {ci.half_width:.2f}" + (f"\n{count} diverged" if count else "")
            ax.text(
                x, y, text, ha="center", va="center", fontsize=8, color="black" if ci.mean > 0.6 else "white"
            )
    source, reference = comparison.tuning.reference
    labels = [f"{f:g}x\n(LR {lr:.2g})" for f, (lr, _) in comparison.robustness.items()]
    ax.set_xticks(range(len(factors)), labels)
    ax.set_yticks(range(len(order)), order)
    for tick, name in zip(ax.get_yticklabels(), order):
        tick.set_fontweight("bold" if name in learned else "normal")
    ax.set(
        xlabel=f"initial LR as a multiple of the tuned {source} base LR {reference:.2g}",
        title=f"Robustness to a mis-set initial LR — {where}\ntest Dice, mean ± 95% CI half-width",
    )
    fig.colorbar(image, ax=ax, label="mean test Dice", shrink=0.8)
    return fig


def _cost_quality(
    comparison: Comparison,
    runs: dict[str, list[Any]],
    style: dict[str, dict[str, Any]],
    learned: list[str],
    where: str,
) -> Any:
    """Test Dice against every epoch a method spent (before evaluation + its evaluation runs), log x: what a
    method costs and what it buys, at a glance. Methods whose cost is unknown are left out (named in the title)."""
    from matplotlib.figure import Figure

    cfg = comparison.config.env
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.add_subplot()
    unknown: list[str] = []
    same_cost: dict[
        float, int
    ] = {}  # methods already drawn at a cost: the next one is nudged right to stay legible
    for method in comparison.methods:
        if method.name not in runs:
            continue
        if not math.isfinite(method.epochs_before):
            unknown.append(method.name)
            continue
        ci = mean_ci(per_instance(runs[method.name], lambda r: r.test_dice))
        cost = method.epochs_before + len(runs[method.name]) * cfg.epochs
        nudge = same_cost.get(cost, 0)
        same_cost[cost] = nudge + 1
        cost *= 1.04**nudge
        s = style[method.name]
        ax.errorbar(
            cost,
            ci.mean,
            yerr=[[ci.mean - ci.low], [ci.high - ci.mean]],
            fmt="o",
            color=s["color"],
            ms=9 if method.learned else 6,
            capsize=3,
            lw=1.2,
        )
        ax.annotate(
            method.name,
            (cost, ci.mean),
            xytext=(5, 4),
            textcoords="offset points",
            fontsize=8,
            color=s["color"],
            fontweight="bold" if method.name in learned else "normal",
        )
    note = f"\n(cost unknown, not shown: {', '.join(unknown)})" if unknown else ""
    ax.set(
        xscale="log",
        ylim=(0, 1),
        xlabel="UNet epochs spent (before evaluation + the evaluation runs)",
        ylabel="test Dice (mean, 95% CI)",
        title=f"Cost vs quality — {where}{note}\n(methods of equal cost are nudged right, 4 % each)",
    )
    ax.grid(alpha=0.3, which="both")
    return fig
