"""The sweep's plots, inspected as matplotlib figures (lines, legends, ticks), not pixels."""

import pytest

from celeb_smile.constants import TrialState
from celeb_smile.sweep import plots
from celeb_smile.sweep.report import ranked
from celeb_smile.sweep.spec import Objective
from tests.helpers.fake_sweep import finished_trials, trial

METRIC = "val_accuracy"


def drawn_curves(trials):
    scored = ranked(trials, Objective())
    top = plots.curve_candidates(scored)
    figure = plots.curves_figure(top, {t.name: t.history for t in top}, METRIC,
                                 ["convolutions"])
    return top, figure


def test_learning_curves_draw_exactly_the_top_three_with_a_legend():
    trials = [trial(i, history=[0.5, 0.5 + i / 100]) for i in range(1, 6)]
    trials.append(trial(6, TrialState.FAILED, history=[0.5, 0.99]))  # best value, but failed
    top, figure = drawn_curves(trials)
    ax = figure.axes[0]
    assert [t.index for t in top] == [5, 4, 3]
    assert len(ax.get_lines()) == 3
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert [entry.split()[1].rstrip(":") for entry in legend] == ["s1/trial-05", "s1/trial-04",
                                                      "s1/trial-03"]
    assert all(float(x).is_integer() for line in ax.get_lines() for x in line.get_xdata())
    assert ax.get_title() == f"learning curves of the top 3 trials by {METRIC}"


def test_equal_curves_stay_distinguishable():
    trials = [trial(i, history=[0.6, 0.7, 0.8]) for i in range(1, 4)]
    _, figure = drawn_curves(trials)
    lines = figure.axes[0].get_lines()
    assert len({(line.get_linewidth(), line.get_marker()) for line in lines}) == 3
    widths = [line.get_linewidth() for line in lines]
    assert widths == sorted(widths, reverse=True)  # thinner ones drawn over thicker ones
    assert [line.get_zorder() for line in lines] == sorted(line.get_zorder() for line in lines)


def test_an_early_stopped_trial_is_drawn_dashed_and_says_so():
    trials = [trial(1, history=[0.6, 0.7, 0.8]),
              trial(2, TrialState.STOPPED, history=[0.6, 0.75])]
    _, figure = drawn_curves(trials)
    lines = {line.get_label().split()[1].rstrip(":"): line for line in figure.axes[0].get_lines()}
    assert lines["s1/trial-02"].get_linestyle() == "--"
    assert "stopped at epoch 2" in lines["s1/trial-02"].get_label()
    assert lines["s1/trial-01"].get_linestyle() == "-"


def test_no_learning_curves_with_a_single_epoch():
    _, figure = drawn_curves([trial(1, history=[0.6]), trial(2, history=[0.7])])
    assert figure is None


def test_parallel_coordinates_only_from_three_varying_parameters():
    two = [trial(1, history=[0.6], params={"a": "1", "b": "x"})]
    assert plots.parallel_figure(two, METRIC, ["a", "b"], "maximize") is None


def test_parallel_coordinates_draw_a_line_per_trial_with_categories_as_positions():
    params = [{"lr": "0.001", "opt": "sgd", "conv": "1"}, {"lr": "0.1", "opt": "adam", "conv": "2"},
              {"lr": "0.01", "opt": "sgd", "conv": "3"}]
    trials = [trial(i, history=[0.9 - i / 10], params=p) for i, p in enumerate(params, 1)]
    figure = plots.parallel_figure(trials, METRIC, ["lr", "opt", "conv"], "maximize")
    ax = figure.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()
             if not line.get_label().startswith("_")}
    assert list(lines) == [t.name for t in reversed(trials)]  # the best drawn last, on top
    opt_positions = [lines[t.name].get_ydata()[1] for t in trials]
    assert opt_positions == [1.0, 0.0, 1.0]  # "adam" < "sgd", sorted
    lr_positions = [lines[t.name].get_ydata()[0] for t in trials]
    assert lr_positions == [0.0, 1.0, 0.5]  # 0.001 .. 0.1 spans 100x: a log scale
    assert [t.get_text() for t in ax.get_xticklabels()] == ["lr", "opt", "conv", METRIC]
    annotations = {text.get_text() for text in ax.texts}
    assert {"adam", "sgd", "0.001", "0.1"} <= annotations


def bars_of(scored):
    figure = plots.objective_figure(scored, METRIC, ["convolutions"])
    ax = figure.axes[0]
    return figure, ax, [label.get_text().split(":")[0] for label in ax.get_yticklabels()]


def test_a_thousand_trials_draw_the_top_bars_and_count_the_rest():
    scored = ranked(finished_trials(1000), Objective())
    figure, ax, names = bars_of(scored)
    assert len(ax.patches) == plots.TOP_BARS == 25
    assert names == [t.name for t in scored[:25]]  # best first
    assert figure.get_size_inches()[1] == bars_of(scored[:25])[0].get_size_inches()[1]
    assert ax.get_title().splitlines() == [f"{METRIC} per trial (best first)",
                                           "top 25 of 1000 trials; 975 more in summary.csv"]


def test_a_small_sweep_draws_a_bar_per_trial_and_nothing_about_more():
    scored = ranked(finished_trials(4), Objective())
    figure, ax, names = bars_of(scored)
    assert names == ["s1/trial-04", "s1/trial-03", "s1/trial-02", "s1/trial-01"]
    assert ax.get_title() == f"{METRIC} per trial (best first)"
    assert figure.get_size_inches()[1] == pytest.approx(0.45 * 4 + 1.2)  # as before


def test_parallel_coordinates_of_a_thousand_trials_keep_every_line_in_the_same_size():
    def figure_of(count):
        trials = finished_trials(count)
        for t in trials:
            t.params = {"lr": str(t.index / 1000), "opt": "sgd", "conv": str(t.index % 3)}
        return plots.parallel_figure(trials, METRIC, ["lr", "opt", "conv"], "maximize")

    small, large = figure_of(3), figure_of(1000)
    assert tuple(large.get_size_inches()) == tuple(small.get_size_inches())
    lines = [line for line in large.axes[0].get_lines() if not line.get_label().startswith("_")]
    assert len(lines) == 1000
    assert large.axes[0].get_title() == f"parameters vs {METRIC} (1000 trials)"
