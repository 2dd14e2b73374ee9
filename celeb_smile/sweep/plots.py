"""A sweep's plots, as matplotlib figures (no pyplot state, so they can be inspected in tests):
the objective per trial, the learning curves of the top trials, and a parallel-coordinates
view of the parameters against the objective. Their sizes do not grow with the sweep's: the
bar chart shows the top TOP_BARS trials and says how many more there are."""

import math

from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from celeb_smile.constants import TrialState
from celeb_smile.sweep.progress import label, top_of

TOP_BARS = 25  # bars of the objective chart: the best trials; summary.csv has every one
BAR_INCHES = 0.45  # the objective chart's height per bar
TOP_CURVES = 3  # learning curves drawn for this many of the best trials
PARALLEL_MIN_PARAMS = 3  # below that the bar chart says it all
PARALLEL_CROWDED = 50  # more lines than this are drawn thin, faint and without markers
DPI = 100
# Drawn best first, thickest at the bottom: equal curves still show every one of them.
CURVE_STYLES = [dict(linewidth=6, marker="o", markersize=11, alpha=0.55, color="tab:blue"),
                dict(linewidth=3.5, marker="s", markersize=7, alpha=0.8, color="tab:orange"),
                dict(linewidth=1.5, marker="^", markersize=5, alpha=1.0, color="tab:green")]
CURVE_STATES = (TrialState.FINISHED, TrialState.SKIPPED, TrialState.STOPPED)


def objective_figure(scored, metric: str, varying: list[str]) -> Figure:
    """A bar per trial, best first: the top TOP_BARS of `scored` (ranked best first)."""
    shown = scored[:TOP_BARS]
    fig = Figure(figsize=(8, BAR_INCHES * max(len(shown), 2) + 1.2))
    ax = fig.subplots()
    bars = ax.barh([f"{t.name}: {label(t, varying)}" for t in shown],
                   [t.metrics[metric] for t in shown], color="tab:blue")
    ax.bar_label(bars, fmt="%.4f", padding=3)
    values = [t.metrics[metric] for t in shown]
    if values and min(values) >= 0 < max(values):
        ax.set_xlim(0, max(values) * 1.2)  # room for the labels
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    title = f"{metric} per trial (best first)"
    if len(shown) < len(scored):
        title += "\n" + top_of(len(shown), len(scored))
    ax.set_title(title)
    fig.tight_layout()
    return fig


def curve_candidates(scored) -> list:
    """The top trials whose curves are drawn: ranked ones that trained to their end or were
    stopped early (failed and killed runs have no curve worth comparing)."""
    return [t for t in scored if TrialState(t.state) in CURVE_STATES][:TOP_CURVES]


def curves_figure(top, histories: dict[str, list[float]], metric: str,
                  varying: list[str]) -> Figure | None:
    """Learning curves of `top` (best first); None when no curve has two epochs to join."""
    if not top or max(len(histories.get(t.name, [])) for t in top) < 2:
        return None
    fig = Figure(figsize=(8, 5.5))
    ax = fig.subplots()
    for rank, (trial, style) in enumerate(zip(top, CURVE_STYLES), 1):
        values = histories.get(trial.name, [])
        stopped = TrialState(trial.state) == TrialState.STOPPED
        note = f", stopped at epoch {len(values)}" if stopped else ""
        ax.plot(range(1, len(values) + 1), values, linestyle="--" if stopped else "-",
                zorder=rank, label=f"#{rank} {trial.name}: {label(trial, varying)} "
                                   f"({trial.metrics[metric]:.4f}{note})", **style)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"learning curves of the top {len(top)} trials by {metric}")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(0, -0.16))  # off the curves
    fig.tight_layout()
    return fig


def parallel_figure(scored, metric: str, varying: list[str], direction: str) -> Figure | None:
    """One line per trial through an axis per varying parameter and one for the objective,
    coloured by the objective; None with fewer than PARALLEL_MIN_PARAMS varying parameters."""
    if len(varying) < PARALLEL_MIN_PARAMS or not scored:
        return None
    columns = [[t.params.get(name, "") for t in scored] for name in varying]
    columns.append([t.metrics[metric] for t in scored])
    axes = [_axis(values) for values in columns]
    objective = [t.metrics[metric] for t in scored]
    colours = ScalarMappable(Normalize(min(objective), max(objective)),
                             "viridis" if direction == "maximize" else "viridis_r")
    fig = Figure(figsize=(max(8, 1.8 * len(axes)), 4.5))
    ax = fig.subplots()
    worst_first = sorted(range(len(scored)), key=lambda row: objective[row],
                         reverse=direction != "maximize")
    style = _parallel_style(len(scored))
    for row in worst_first:  # the best drawn last, on top
        trial = scored[row]
        ax.plot(range(len(axes)), [positions[row] for positions, _ in axes],
                color=colours.to_rgba(objective[row]), label=trial.name, **style)
    for x, (_, ticks) in enumerate(axes):
        ax.axvline(x, color="grey", linewidth=1, label="_axis")
        for position, text in ticks:
            ax.annotate(text, (x, position), xytext=(-6, 0), textcoords="offset points",
                        fontsize="small", va="center", ha="right", zorder=10,
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    ax.set_xticks(range(len(axes)), [*varying, metric])
    ax.set_yticks([])
    ax.set_ylim(-0.08, 1.08)
    ax.set_xlim(-0.45, len(axes) - 0.8)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    fig.colorbar(colours, ax=ax, label=metric)
    ax.set_title(f"parameters vs {metric} ({len(scored)} trials)")
    fig.tight_layout()
    return fig


def _parallel_style(lines: int) -> dict:
    if lines > PARALLEL_CROWDED:
        return dict(linewidth=0.8, alpha=0.35)
    return dict(marker="o", linewidth=2, alpha=0.85)


def _axis(values) -> tuple[list[float], list[tuple[float, str]]]:
    """Positions in [0, 1] of `values`, and the (position, text) ticks to label the axis.
    Numbers are scaled (logarithmically when they span 100x or more); anything else is a
    category, placed at evenly spaced positions in sorted order."""
    numbers = _as_numbers(values)
    if numbers is None:
        categories = sorted(set(map(str, values)))
        step = 1 / (len(categories) - 1) if len(categories) > 1 else 0
        place = {c: (i * step if len(categories) > 1 else 0.5) for i, c in enumerate(categories)}
        return [place[str(v)] for v in values], [(p, c) for c, p in place.items()]
    low, high = min(numbers), max(numbers)
    scale = math.log10 if low > 0 and high >= 100 * low else (lambda v: v)
    span = scale(high) - scale(low)
    positions = [(scale(v) - scale(low)) / span if span else 0.5 for v in numbers]
    ticks = [(0.0 if span else 0.5, f"{low:g}")] + ([(1.0, f"{high:g}")] if span else [])
    return positions, ticks


def _as_numbers(values) -> list[float] | None:
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return numbers if all(math.isfinite(n) for n in numbers) else None
