"""The comparison's files: summary.md (tables), episodes.csv, tuning.csv and summary.csv, written atomically."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Callable

from rlsched.common.files import atomic_write_text
from rlsched.common.stats import DIFFERENCE, UNIT, MeanCI, clipped_note
from rlsched.compare.methods import Comparison, Tuning
from rlsched.compare.plots import plot
from rlsched.compare.summary import best_fixed, learned_minus_each, paired_tests, summarize
from rlsched.control.interface import STALL_DICE, STALL_EPOCHS
from rlsched.experiment.kinds.oracle import ORACLE, ORACLE_SCHEDULES

DICE_METRICS = ("test_dice", "final_dice", "best_dice", "auc_dice")  # bounded in [0, 1]: shown clipped to it
MORE_INSTANCES = "compare on more held-out instances (env.heldout_instances, and --seeds if given)"


def _row_ci(row: dict[str, Any], key: str) -> MeanCI:
    return MeanCI(row[f"{key}_mean"], row[f"{key}_low"], row[f"{key}_high"], row["n"])


def _ci(row: dict[str, Any], key: str, digits: int = 3) -> str:
    ci = _row_ci(row, key)
    if not math.isfinite(ci.mean):
        return "—"
    if not ci.high > ci.low:
        return f"{ci.mean:.{digits}f}"
    return ci.text(digits, UNIT if key in DICE_METRICS else None)


def _count(value: float) -> str:
    return "unknown" if not math.isfinite(value) else f"{value:,.0f}"


def report(comparison: Comparison, rows: list[dict[str, Any]]) -> str:
    """summary.md: main table, robustness table, paired test, tuned base LRs and compute accounting."""
    cfg, settings, tuning = comparison.config.env, comparison.settings, comparison.tuning
    methods = {m.name: m for m in comparison.methods}
    main = sorted((r for r in rows if r["factor"] is None), key=lambda r: -r["test_dice_mean"])
    n, target = len(comparison.instances), settings.dice_target

    def label(name: str) -> str:
        return f"**{name}**" if methods[name].learned else name

    lines = [
        f"# {comparison.config.name}: {len(methods)} methods on {n} held-out instances, "
        f"{cfg.epochs} epochs each",
        "",
        f"Mean ± 95% CI over instances (Student t). **Test Dice**: each instance's held-out test split, scored "
        "once after the last epoch; no decision reads it. Every other Dice is validation Dice: what the "
        "controllers observed and were rewarded on and what base-LR tuning, reduce-on-plateau and PBT selected "
        f"on, so it flatters them. AUC = mean validation Dice over the {cfg.epochs} epochs (diverged = 0 from "
        f"then on). Epochs to validation Dice {target:g}: mean over the runs that reached it. Diverged: runs that "
        'ended blown up; "+k undone": epochs that blew up and were rolled back (env.on_divergence), the run going '
        f"on. Stalled: runs that sat below validation Dice {STALL_DICE:g} for more than {STALL_EPOCHS} epochs at "
        f"one LR. Wall time: training and validation per run. {_duration(comparison)}",
        "",
        f"| method | needs from the user | base LR | epochs before eval | test Dice | final val Dice "
        f"| best val Dice | AUC val Dice | epochs to val {target:g} (reached) | diverged | stalled | s / run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in main:
        declared = methods[r["method"]].declared
        base = f"{r['base_lr']:.3g}" if r["base_lr"] is not None else declared.base_lr_text
        lines.append(
            f"| {label(r['method'])} | {methods[r['method']].needs} | {base} | {_count(r['epochs_before_eval'])} "
            f"| {_ci(r, 'test_dice')} | {_ci(r, 'final_dice')} | {_ci(r, 'best_dice')} | {_ci(r, 'auc_dice')} "
            f"| {_ci(r, 'epochs_to_target', 1)} "
            f"({r['reached_target']}/{r['runs']}) | {r['diverged']}/{r['runs']}{_undone(r)}{_failed(r)} "
            f"| {r['stalled']}/{r['runs']} | {_ci(r, 'seconds', 2)} |"
        )
    if ORACLE in methods:
        lines += [
            "",
            "## Regret to the per-instance oracle",
            "",
            f"The oracle row is the best of {', '.join(ORACLE_SCHEDULES)} over an LR grid on each held-out instance, "
            "picked by its final validation Dice and scored on test Dice: the room a schedule has, an upper bound "
            "rather than a method. Regret = oracle minus method test Dice per instance (negative where a method "
            "beat the oracle's validation pick on test).",
            "",
            "| method | mean regret | worst instance |",
            "|---|---|---|",
            *(
                f"| {label(r['method'])} | {r['regret_mean']:+.3f} | {r['regret_worst']:+.3f} |"
                for r in sorted(main, key=lambda r: r["regret_mean"])
                if math.isfinite(r["regret_mean"])
            ),
        ]
    if comparison.robustness:
        factors = list(comparison.robustness)
        source, reference = tuning.reference
        headers = [
            f"{f:g}x (LR {lr:.3g}{'' if math.isclose(lr, f * reference) else ', clipped'})"
            for f, (lr, _) in comparison.robustness.items()
        ]
        lines += [
            "",
            "## Robustness: mis-set initial LR",
            "",
            f"Test Dice when every method starts from factor x {reference:.3g} (the tuned base LR of "
            f"{source}), clipped to [{cfg.lr_min:g}, {cfg.lr_max:g}]: learned and random policies start "
            "there, fixed schedules use it as their base LR. (d = diverged runs)",
            "",
            "| method | " + " | ".join(headers) + " |",
            "|---|" + "---|" * len(factors),
        ]
        cells = {(r["method"], r["factor"]): r for r in rows if r["factor"] is not None}
        for name in (r["method"] for r in main if (r["method"], factors[0]) in cells):
            row = [
                _ci(c, "test_dice") + (f" ({c['diverged']} d)" if c["diverged"] else "") + _failed(c)
                for c in (cells[name, f] for f in factors)
            ]
            lines.append(f"| {label(name)} | " + " | ".join(row) + " |")
    tests = paired_tests(comparison)
    if tests:
        best = best_fixed(comparison)
        lines += [
            "",
            f"## Paired test: learned policy vs the best fixed schedule ({best})",
            "",
            f"Test Dice difference on the same held-out instances. The comparator ({best}) was chosen by "
            "its validation score in the grid search on train instances, before any held-out run.",
            "",
            "| policy | difference (95% CI) | paired t p | Wilcoxon p | n |",
            "|---|---|---|---|---|",
        ]
        for name, t in tests.items():
            lines.append(
                f"| **{name}** − {best} | {t.mean_difference:+.3f} ({t.ci.span(DIFFERENCE)}) "
                f"| {t.t_pvalue:.3g} | {t.wilcoxon_pvalue:.3g} | {t.n} |"
            )
    each = learned_minus_each(comparison)
    if any(each.values()):
        lines += [
            "",
            "## Paired differences: each learned policy minus each method",
            "",
            "Test Dice difference on the same held-out instances (a failed job removes its instance from that "
            "pair only); wins / losses count the instances where the policy ended above / below the method.",
            "",
            "| difference | mean (95% CI) | wins / losses | paired t p | Wilcoxon p | n |",
            "|---|---|---|---|---|---|",
        ]
        for name, against in each.items():
            for other, t in against.items():
                lines.append(
                    f"| **{name}** − {other} | {t.mean_difference:+.3f} ({t.ci.span(DIFFERENCE)}) "
                    f"| {t.wins} / {t.losses} | {t.t_pvalue:.3g} | {t.wilcoxon_pvalue:.3g} | {t.n} |"
                )
    shown = [
        (_row_ci(r, key), UNIT)
        for r in rows
        for key in DICE_METRICS  # robustness rows: test Dice only
        if r["factor"] is None or key == "test_dice"
    ]
    differences = [*tests.values(), *(t for against in each.values() for t in against.values())]
    note = clipped_note(shown + [(t.ci, DIFFERENCE) for t in differences], MORE_INSTANCES)
    if note:
        lines += ["", note]
    if tuning.scores:
        lines += _tuning_section(tuning, settings.grid_per_decade)
    lines += _accounting_section(comparison, label, n)
    if comparison.failures:
        lines += _failures_section(comparison)
    return "\n".join(lines) + "\n"


def _tuning_section(tuning: Tuning, per_decade: int) -> list[str]:
    lines = [
        "",
        "## Tuned base LRs",
        "",
        f"Grid: {len(tuning.grid)} LRs from {tuning.grid[0]:g} to {tuning.grid[-1]:g} "
        f"({per_decade} per decade over the preset's initial-LR range), each on "
        f"{tuning.instances} train instance(s); best mean final validation Dice wins.",
        "",
        "| schedule | tuned base LR | train final val Dice | train AUC val Dice |",
        "|---|---|---|---|",
    ]
    for name, lr in tuning.base_lrs.items():
        final, auc = tuning.scores[name][lr]
        lines.append(f"| {name} | {lr:g} | {final:.3f} | {auc:.3f} |")
    return lines


def _accounting_section(comparison: Comparison, label: Callable[[str], str], n: int) -> list[str]:
    lines = [
        "",
        "## Compute before evaluation",
        "",
        "UNet training epochs each method consumed before the evaluation; the evaluation itself costs "
        f"every method the same {n} x {comparison.config.env.epochs} epochs.",
        "",
        "| method | epochs | counted from |",
        "|---|---|---|",
    ]
    for m in comparison.methods:
        lines.append(f"| {label(m.name)} | {_count(m.epochs_before)} | {m.accounting} |")
    return lines


def _failures_section(comparison: Comparison) -> list[str]:
    lines = [
        "",
        "## Failed jobs",
        "",
        "Their worker process died on every attempt (killed, out of memory); they are left out of the "
        "statistics above (n counts the runs that finished). Resume the comparison to run them again.",
        "",
        "| job | instance | initial LR forced | attempts | reason |",
        "|---|---|---|---|---|",
    ]
    for f in comparison.failures:
        forced = "—" if f.job.initial_lr is None else f"{f.job.initial_lr:.3g}"
        lines.append(
            f"| {f.method} | {f.job.instance.split} {f.job.instance.index} | {forced} | {f.attempts} "
            f"| {f.reason} |"
        )
    return lines


def _duration(comparison: Comparison) -> str:
    workers = f"with {comparison.settings.workers} worker(s)"
    if not comparison.reused:
        return f"The comparison took {comparison.seconds:.0f} s {workers}."
    return (
        f"Resumed: {comparison.reused} episodes were read back from the journal; this session took "
        f"{comparison.seconds:.0f} s {workers}."
    )


def _undone(row: dict[str, Any]) -> str:
    return f" (+{row['rollbacks']} undone)" if row.get("rollbacks") else ""


def _failed(row: dict[str, Any]) -> str:
    return f" ({row['failed']} failed)" if row.get("failed") else ""


def episode_rows(comparison: Comparison) -> list[dict[str, Any]]:
    """episodes.csv: one row per method x instance x epoch (``factor`` empty for the main runs); ``dice`` is
    validation Dice, ``test_dice`` is filled on the run's last row only (it is scored once, at the end)."""
    methods = {m.name: m for m in comparison.methods}
    rows = []
    for factor, _, results in comparison.groups():
        for result in results:
            tuned = methods[result.method].base_lr if factor is None else None
            base_lr = tuned if tuned is not None else result.instance.initial_lr
            last = len(result.records) - 1
            for step, (record, dice) in enumerate(zip(result.records, result.dices)):
                rows.append(
                    {
                        "method": result.method,
                        "factor": factor,
                        "instance": result.instance.index,
                        "base_lr": base_lr,
                        "epoch": record["epoch"],
                        "lr": record["lr"] if record["epoch"] else None,  # epoch 0: nothing trained yet
                        "train_loss": record.get("train_loss"),
                        "val_loss": record["val_loss"],
                        "dice": dice,
                        "diverged": record["diverged"],
                        "rolled_back": record.get("rolled_back", False),
                        "test_dice": result.test_dice if step == last else None,
                    }
                )
    return rows


def tuning_rows(tuning: Tuning) -> list[dict[str, Any]]:
    chosen = tuning.base_lrs
    return [
        {"schedule": name, "lr": lr, "final_dice": final, "auc_dice": auc, "chosen": lr == chosen[name]}
        for name, by_lr in tuning.scores.items()
        for lr, (final, auc) in by_lr.items()
    ]


def csv_text(rows: list[dict[str, Any]]) -> str:
    """CSV text; missing and non-finite values are empty cells."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v
                for k, v in row.items()
            }
        )
    return buffer.getvalue()


def write_results(comparison: Comparison, out_dir: Path) -> str:
    """Every result file (atomically); returns the markdown summary."""
    rows = summarize(comparison)
    text = report(comparison, rows)
    atomic_write_text(out_dir / "episodes.csv", csv_text(episode_rows(comparison)))
    atomic_write_text(out_dir / "tuning.csv", csv_text(tuning_rows(comparison.tuning)))
    atomic_write_text(out_dir / "summary.csv", csv_text(rows))
    atomic_write_text(out_dir / "summary.md", text)
    plot(comparison, out_dir)
    return text
