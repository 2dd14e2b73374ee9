"""Live progress in the terminal: a table of trials (parameters, state, elapsed, epochs and
the latest objective value), or one line per event when the output is not a terminal.

How a state reads (colour and words) is decided here, for the progress table, the summary
and the parent run's note alike."""

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from celeb_smile.constants import TrialState

STATE_STYLES = {TrialState.FINISHED: "green", TrialState.SKIPPED: "dim green",
                TrialState.FAILED: "red", TrialState.KILLED: "yellow",
                TrialState.STOPPED: "magenta", TrialState.RUNNING: "cyan",
                TrialState.SCHEDULED: "blue", TrialState.PENDING: "dim"}
STATE_WORDS = {TrialState.PENDING: "pending", TrialState.SCHEDULED: "scheduled",
               TrialState.RUNNING: "running", TrialState.FINISHED: "finished",
               TrialState.FAILED: "failed", TrialState.STOPPED: "stopped early",
               TrialState.KILLED: "killed", TrialState.SKIPPED: "finished earlier"}
REASON_SHOWN = 80  # characters of a reason in a table cell; the run's tag has all of it


class Progress:
    def __init__(self, console: Console, trials, varying: list[str], metric: str):
        self.console = console
        self.trials = trials
        self.varying = varying
        self.metric = metric
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
        done = sum(TrialState(t.state).ended for t in self.trials)
        table = Table(title=f"sweep: {done}/{len(self.trials)} done", title_justify="left")
        for column in ("trial", *self.varying, "state", "elapsed", "epochs", self.metric):
            table.add_column(column)
        for trial in self.trials:
            elapsed = trial.elapsed()
            value = trial.metrics.get(self.metric)
            table.add_row(
                trial.name, *(trial.params.get(n, "") for n in self.varying),
                styled_state(trial),
                f"{elapsed:.0f}s" if elapsed is not None else "",
                str(trial.epochs_done or ""),
                f"{value:.4f}" if value is not None else "")
        return table


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
