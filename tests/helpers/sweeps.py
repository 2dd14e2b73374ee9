"""Reading a sweep back from MLflow, and interrupting a driver mid-training."""

import subprocess
import time

from celeb_smile.constants import SWEEP_ID_TAG


def sweep_runs(client, experiment: str):
    """(parent sweep runs, trial runs) of an experiment."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = [r for r in runs if SWEEP_ID_TAG in r.data.tags and r not in children]
    return parents, children


def interrupt_when_training(process, client, experiment: str, signum: int,
                            timeout: float, reader_gone: bool = False) -> tuple[bool, str]:
    """Once a trial of `experiment` has logged an epoch, send `signum` to the driver process
    (after closing its output pipe if `reader_gone`, as a Ctrl-C'd `| tee` does). Returns
    (whether a trial trained in time, everything the driver printed); a driver that never got
    there, or outlives the signal, is killed."""
    trained = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        if any("loss" in r.data.metrics for r in runs):
            trained = True
            if reader_gone:
                process.stdout.close()
            process.send_signal(signum)
            break
        time.sleep(1)
    if reader_gone and trained:
        try:
            process.wait(timeout=180)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return trained, ""
    try:
        output, _ = process.communicate(timeout=180 if trained else 1)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return trained, output or ""


def trial_log_tails(client, experiment: str, lines: int = 30) -> str:
    """The last lines of every trial's logs/trial.log, for a failing test's message."""
    tails = []
    for child in sweep_runs(client, experiment)[1]:
        try:
            path = client.download_artifacts(child.info.run_id, "logs/trial.log")
            with open(path, encoding="utf-8", errors="replace") as log:
                text = "".join(log.readlines()[-lines:])
        except Exception as error:  # noqa: BLE001 - a diagnostic, never the failure itself
            text = f"(no log: {error})"
        tails.append(f"--- {child.info.run_name}\n{text}")
    return "\n".join(tails)
