"""Live progress in the terminal: a table of trials (parameters, state, elapsed, epochs and
the latest objective value), or one line per event when the output is not a terminal. Past
LIVE_ROWS trials the table keeps to one screen: the trials in flight and the latest ended,
the rest counted.

How a state reads (colour and words) is decided here, for the progress table, the summary
and the parent run's note alike, and how a view that shows only the best trials says so."""

from collections import Counter

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from celeb_smile.constants import TrialState

STATE_STYLES = {TrialState.FINISHED: "green", TrialState.SKIPPED: "dim green",
                TrialState.FAILED: "red", TrialState.KILLED: "yellow",
                TrialState.STOPPED: "magenta", TrialState.RUNNING: "cyan",
                TrialState.SCHEDULED: "blue", TrialState.PENDING: "dim",
                TrialState.PAUSED: "yellow"}
STATE_WORDS = {TrialState.PENDING: "pending", TrialState.SCHEDULED: "scheduled",
               TrialState.RUNNING: "running", TrialState.FINISHED: "finished",
               TrialState.FAILED: "failed", TrialState.STOPPED: "stopped early",
               TrialState.KILLED: "killed", TrialState.SKIPPED: "finished earlier",
               TrialState.PAUSED: "paused"}
REASON_SHOWN = 80  # characters of a reason in a table cell; the run's tag has all of it
LIVE_ROWS = 15  # trials the live table shows at most: one screen whatever the sweep's size
ENDED_SHOWN = 3  # the latest ended trials the live table shows however many are in flight
SUMMARY_CSV = "summary.csv"  # every trial, where the bounded views send their reader
TRAINED_TO_END = (TrialState.FINISHED, TrialState.SKIPPED)  # the only ones that can be best
# Ended otherwise than finished here: counted in the live table's title when rows are hidden.
TITLE_COUNTS = (TrialState.FAILED, TrialState.STOPPED, TrialState.KILLED, TrialState.SKIPPED)


class Progress:
    def __init__(self, console: Console, trials, varying: list[str], metric: str,
                 direction: str = "maximize"):
        self.console = console
        self.trials = trials
        self.varying = varying
        self.metric = metric
        self.direction = direction
        self._live = None

    def __enter__(self):
        if self.console.is_terminal:
            self._live = Live(self.table(), console=self.console, auto_refresh=False,
                              transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.update(self.table(), refresh=True)
            self._live.__exit__(*exc)
            self._live = None

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.table(), refresh=True)

    def event(self, trial, text: str) -> None:
        """A state change; printed as a line when there is no live table to show it."""
        if self._live is None:
            self.console.print(f"{trial.name} [{label(trial, self.varying)}] {text}",
                               highlight=False, soft_wrap=True, markup=False)
        else:
            self.refresh()

    def table(self) -> Table:
        shown = self._shown()
        hidden = len(shown) < len(self.trials)
        table = Table(title=self._title(hidden), title_justify="left",
                      caption=self._hidden_text(shown) if hidden else None,
                      caption_justify="left")
        for column in ("trial", *self.varying, "state", "elapsed", "epochs", self.metric):
            table.add_column(column)
        for trial in shown:
            table.add_row(*self._row(trial))
        return table

    def _shown(self) -> list:
        """Every trial when they fit in LIVE_ROWS; else LIVE_ROWS rows: the trials in flight
        (the first LIVE_ROWS - ENDED_SHOWN of them when more are), then the latest ended, in
        the sweep's order."""
        if len(self.trials) <= LIVE_ROWS:
            return list(self.trials)
        in_flight = [t for t in self.trials if TrialState(t.state).in_flight]
        in_flight = in_flight[:LIVE_ROWS - ENDED_SHOWN]
        latest = sorted((t for t in self.trials if TrialState(t.state).ended),
                        key=lambda t: t.ended or 0.0)  # ended before this driver: oldest
        room = LIVE_ROWS - len(in_flight)
        chosen = {t.index for t in in_flight + latest[-room:]}
        return [t for t in self.trials if t.index in chosen]

    def _title(self, hidden: bool) -> str:
        """'sweep: 412/1000 done', then what the hidden rows hold: '· 50 in flight · 3 failed
        · 120 stopped early'."""
        done = sum(TrialState(t.state).ended for t in self.trials)
        title = f"sweep: {done}/{len(self.trials)} done"
        if not hidden:
            return title
        in_flight = sum(TrialState(t.state).in_flight for t in self.trials)
        return " · ".join([title, f"{in_flight} in flight", *counted(self.trials, TITLE_COUNTS)])

    def _hidden_text(self, shown) -> str:
        """'… 38 more in flight · 362 more ended · 538 pending · best so far: <trial>
        (<params>) <metric>=0.9312'."""
        on_screen = {t.index for t in shown}
        hidden = [TrialState(t.state) for t in self.trials if t.index not in on_screen]
        ended = sum(state.ended for state in hidden)
        flying = sum(state.in_flight for state in hidden)
        waiting = len(hidden) - ended - flying
        parts = [f"{flying} more in flight" if flying else "",
                 f"{ended} more ended" if ended else "",
                 f"{waiting} pending" if waiting else ""]
        best = self._best_so_far()
        if best is not None:
            parts.append(f"best so far: {escape(best.name)} "
                         f"({escape(label(best, self.varying))}) "
                         f"{self.metric}={best.objective(self.metric):.4f}")
        return "… " + " · ".join(part for part in parts if part)

    def _best_so_far(self):
        """The best trial that trained to its end, as the summary will rank it."""
        done = [t for t in self.trials if TrialState(t.state) in TRAINED_TO_END
                and t.objective(self.metric) is not None]
        pick = max if self.direction == "maximize" else min
        return pick(done, key=lambda t: t.objective(self.metric), default=None)

    def _row(self, trial) -> list[str]:
        elapsed = trial.elapsed()
        value = trial.metrics.get(self.metric)
        return [trial.name, *(trial.params.get(n, "") for n in self.varying),
                styled_state(trial),
                f"{elapsed:.0f}s" if elapsed is not None else "",
                str(trial.epochs_done or ""),
                f"{value:.4f}" if value is not None else ""]


def counted(trials, states=tuple(TrialState)) -> list[str]:
    """'3 failed', '120 stopped early', ...: how many trials are in each of `states` that has
    any, in the order of `states`."""
    counts = Counter(TrialState(t.state) for t in trials)
    return [f"{counts[s]} {STATE_WORDS[s]}" for s in states if counts[s]]


def top_of(shown: int, total: int) -> str:
    """What a view of the best trials says when it leaves some out."""
    return f"top {shown} of {total} trials; {total - shown} more in {SUMMARY_CSV}"


def state_text(trial, reason_chars: int | None = REASON_SHOWN) -> str:
    """'stopped early: <rule>', 'finished earlier', 'failed: <reason>', 'scheduled:
    Unschedulable: ...' (what a pod waits for)... (plain text)."""
    state = TrialState(trial.state)
    words = STATE_WORDS[state]
    reason = trial.reason if state in (TrialState.SCHEDULED, TrialState.STOPPED,
                                       TrialState.FAILED, TrialState.KILLED) else ""
    if reason and reason_chars is not None and len(reason) > reason_chars:
        reason = reason[:reason_chars - 1] + "…"
    return f"{words}: {reason}" if reason else words


def styled_state(trial) -> str:
    """state_text in the state's colour, as rich markup."""
    style = STATE_STYLES[TrialState(trial.state)]
    return f"[{style}]{escape(state_text(trial))}[/]"


def params_label(params: dict, varying: list[str]) -> str:
    """'name=value, ...' of the varying parameters: the runs-table tag and the tables' label."""
    return ", ".join(f"{name}={params.get(name, '')}" for name in varying) or "defaults"


def label(trial, varying: list[str]) -> str:
    return params_label(trial.params, varying)
