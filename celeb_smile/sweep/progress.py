"""Live progress in the terminal: a table of trials (parameters, state, elapsed, epochs and
the latest objective value), or one line per event when the output is not a terminal."""

from rich.console import Console
from rich.live import Live
from rich.table import Table

STATE_STYLES = {"FINISHED": "green", "SKIPPED": "dim green", "FAILED": "red", "KILLED": "yellow",
                "RUNNING": "cyan", "SCHEDULED": "blue", "PENDING": "dim"}


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
                               highlight=False, soft_wrap=True)
        else:
            self.refresh()

    def table(self) -> Table:
        done = sum(t.state in ("FINISHED", "SKIPPED") for t in self.trials)
        table = Table(title=f"sweep: {done}/{len(self.trials)} done", title_justify="left")
        for column in ("trial", *self.varying, "state", "elapsed", "epochs", self.metric):
            table.add_column(column)
        for trial in self.trials:
            elapsed = trial.elapsed()
            value = trial.metrics.get(self.metric)
            style = STATE_STYLES.get(trial.state, "")
            table.add_row(
                trial.name, *(trial.params.get(n, "") for n in self.varying),
                f"[{style}]{trial.state}[/]",
                f"{elapsed:.0f}s" if elapsed is not None else "",
                str(trial.epochs_done or ""),
                f"{value:.4f}" if value is not None else "")
        return table


def label(trial, varying: list[str]) -> str:
    return ", ".join(f"{name}={trial.params.get(name, '')}" for name in varying) or "defaults"
