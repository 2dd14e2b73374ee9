"""A run's checkpoint: what a trial stopped mid-way (its pod evicted, its node lost) needs to
go on from its last completed epoch instead of starting over.

One artifact, `checkpoint/state.h5`, replaced after every epoch: an HDF5 file with the model's
weights (`model/0..n`, Keras' get_weights() order), the optimizer's state (`optimizer/0..m`, its
`variables` order: iterations, learning rate, Adam's moments) and, as the JSON of a root
attribute, the record: the epochs done, the parameters they were trained with, the next epoch's
seeds. One file rather than a weights file beside a JSON: the tracking server replaces an
artifact only once its whole upload has arrived, so a process killed mid-upload leaves the
previous checkpoint whole, where a pair could be left torn (new weights beside the old record).

Taking a checkpoint costs the training loop a copy of its variables (~2 MB); the file is
written and uploaded on a thread of its own (`Saver`) while the next epoch trains.
"""

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import h5py
import keras
import numpy as np
from mlflow import MlflowClient

from celeb_smile.retry import patiently

# The artifact's names on the run. k8s/server/trial_rules.py lets trial identities overwrite
# artifacts under CHECKPOINT_DIR only (its copy of the name: CHECKPOINT_DIRECTORY).
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.h5"
CHECKPOINT_ARTIFACT = f"{CHECKPOINT_DIR}/{CHECKPOINT_FILE}"
RECORD_ATTRIBUTE = "record"  # the file's root attribute holding the record's JSON


@dataclasses.dataclass(frozen=True)
class Record:
    epochs_done: int  # training goes on at this (0-based) epoch
    params: dict[str, str]  # TrainConfig.as_params() of the run that trained them
    next_epoch_seeds: dict[str, int]  # the data order's and the augmentation's


@dataclasses.dataclass(frozen=True)
class Snapshot:
    record: Record
    model_weights: list[np.ndarray]
    optimizer_state: list[np.ndarray]


def snapshot(model: keras.Model, record: Record) -> Snapshot:
    """A compiled model's weights and optimizer state, taken between two epochs: values that
    training, going on while the file is written, leaves as they are (numpy() copies)."""
    return Snapshot(record, _values(model.weights), _values(model.optimizer.variables))


def _values(variables) -> list[np.ndarray]:
    return [variable.numpy() for variable in variables]


def restore(model: keras.Model, state: Snapshot) -> None:
    """Give a compiled `model` the snapshot's weights and optimizer state."""
    model.set_weights(state.model_weights)
    if not model.optimizer.built:  # its variables are made on the first step otherwise
        model.optimizer.build(model.trainable_variables)
    variables = model.optimizer.variables
    if len(variables) != len(state.optimizer_state):
        raise ValueError(f"the checkpoint holds {len(state.optimizer_state)} optimizer "
                         f"variables, the model's optimizer has {len(variables)}")
    for variable, value in zip(variables, state.optimizer_state):
        variable.assign(value)  # raises on a shape that differs


def write(state: Snapshot, directory: str | Path) -> Path:
    """The checkpoint as a local file, in a folder of its own under `directory`."""
    path = Path(directory) / f"epoch-{state.record.epochs_done}" / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as file:
        file.attrs[RECORD_ATTRIBUTE] = json.dumps(dataclasses.asdict(state.record))
        _write_arrays(file.create_group("model"), state.model_weights)
        _write_arrays(file.create_group("optimizer"), state.optimizer_state)
    return path


def read(path: str | Path) -> Snapshot:
    with h5py.File(path, "r") as file:
        return Snapshot(Record(**json.loads(file.attrs[RECORD_ATTRIBUTE])),
                        _read_arrays(file["model"]), _read_arrays(file["optimizer"]))


def _write_arrays(group: h5py.Group, arrays: list[np.ndarray]) -> None:
    for index, array in enumerate(arrays):
        group.create_dataset(str(index), data=array)


def _read_arrays(group: h5py.Group) -> list[np.ndarray]:
    return [group[str(index)][()] for index in range(len(group))]


def refuse_unless_continues(record: Record, params: dict[str, str],
                            next_epoch_seeds: dict[str, int], run_id: str) -> None:
    """ValueError, one line, unless the checkpoint is of this configuration and its next epoch
    would draw what this code draws for it."""
    differing = [name for name in params if record.params.get(name) != params[name]]
    if differing:
        theirs = ", ".join(f"{name}={record.params.get(name)}" for name in differing)
        ours = ", ".join(f"{name}={params[name]}" for name in differing)
        raise ValueError(f"the checkpoint of run {run_id} was made with {theirs}, not {ours}")
    if record.next_epoch_seeds != next_epoch_seeds:
        raise ValueError(f"the checkpoint of run {run_id} seeds epoch {record.epochs_done + 1} "
                         f"with {record.next_epoch_seeds}, this code with {next_epoch_seeds}")


def upload(run_id: str, path: Path) -> None:
    """The run's checkpoint becomes `path` (the previous one is overwritten)."""
    client = MlflowClient()
    patiently("save the checkpoint",
              lambda: client.log_artifact(run_id, str(path), CHECKPOINT_DIR))


def download(run_id: str, directory: str | Path) -> Path | None:
    """The run's checkpoint, downloaded into `directory`; None when it has none."""
    client = MlflowClient()
    listed = patiently("look for a checkpoint",
                       lambda: client.list_artifacts(run_id, CHECKPOINT_DIR))
    if CHECKPOINT_ARTIFACT not in {artifact.path for artifact in listed}:
        return None
    return Path(patiently("download the checkpoint", lambda: client.download_artifacts(
        run_id, CHECKPOINT_ARTIFACT, str(directory))))


class Saver:
    """Writes and uploads a run's checkpoints on a thread of its own, so the next epoch does not
    wait for them. Only the newest snapshot waits its turn: one that a newer one replaced before
    its turn came is never sent. A failure (a refusal, an outage longer than `patiently` waits)
    is raised in the training thread, by the next submit() or by finish()."""

    def __init__(self, run_id: str, directory: str | Path):
        self._run_id, self._directory = run_id, directory
        self._pending: Snapshot | None = None
        self._saving = False
        self._failure: Exception | None = None
        self._changed = threading.Condition()
        threading.Thread(target=self._save_forever, name="checkpoint-saver", daemon=True).start()

    def submit(self, state: Snapshot) -> None:
        """Save `state` next, instead of any snapshot still waiting."""
        with self._changed:
            self._raise_failure()
            self._pending = state
            self._changed.notify_all()

    def finish(self) -> None:
        """Return once the newest snapshot is the run's checkpoint."""
        with self._changed:
            self._changed.wait_for(lambda: self._failure is not None
                                   or (self._pending is None and not self._saving))
            self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _save_forever(self) -> None:
        while self._failure is None:
            with self._changed:
                self._changed.wait_for(lambda: self._pending is not None)
                state, self._pending, self._saving = self._pending, None, True
            try:
                self._save(state)
            except Exception as error:  # noqa: BLE001 - raised in the training thread
                self._failure = error
            finally:
                with self._changed:
                    self._saving = False
                    self._changed.notify_all()

    def _save(self, state: Snapshot) -> None:
        path = write(state, self._directory)
        try:
            upload(self._run_id, path)
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)
