"""Names shared across modules, and by the tests: exit codes, run tags, trial states.

Import these; never spell a tag or an exit code as a literal elsewhere.
"""

import enum

# -- exit codes (train.py and driver.py) -----------------------------------------------------
EXIT_OK = 0  # every trial finished (early-stopped trials count as finished work)
EXIT_TRIAL_FAILED = 1  # a trial failed, or the sweep could not go on (outage, no cluster)
EXIT_BAD_INPUT = 2  # refused before anything was created; one line on stderr
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM: in-flight trials were cancelled
EXIT_TERMINATED = 143  # train.py stopped by SIGTERM (128 + 15): its run ended KILLED

# -- run tags ---------------------------------------------------------------------------------
ERROR_TAG = "celeb_smile.error"  # a run that train.py rejected or that crashed: the message
SWEEP_ID_TAG = "celeb_smile.sweep_id"  # on a sweep's parent run AND on each of its trials
TRIAL_INDEX_TAG = "celeb_smile.trial"  # a trial's 1-based index within its sweep
SWEEP_RUN_TAG = "celeb_smile.sweep_run_id"  # the parent run that submitted a trial
REASON_TAG = "celeb_smile.failure_reason"  # why a trial ended FAILED/KILLED (Kubernetes reason...)
STOPPED_TAG = "celeb_smile.stopped_early"  # rule, epoch, value and threshold of an early stop
CODE_VERSION_TAG = "celeb_smile.code_version"  # hash of the project's code a run ran
JOB_TAG = "celeb_smile.job"  # <namespace>/<job name> of a trial's Kubernetes Job
PID_TAG = "celeb_smile.pid"  # process group of a local trial
BEST_RUN_TAG = "celeb_smile.best_run_id"  # on the parent: its best trial's run id
LEASE_TAG = "celeb_smile.driver_lease"  # on the parent: '<holder> <expiry epoch seconds>'
PARAMS_TAG = "celeb_smile.params"  # short 'name=value, ...' of a trial's varying parameters
WARM_START_TAG = "celeb_smile.warm_start"  # number of earlier runs that seeded a search
TRIAL_USER_TAG = "celeb_smile.trial_user"  # the one `trial-...` MLflow user that may write a run
RUNG_TAG = "celeb_smile.rung_passed"  # the highest ASHA rung (epoch) a trial was let through
CANCEL_TAG = "celeb_smile.cancelled_by"  # on the parent: who asked (driver.py --cancel) and when
DISRUPTIONS_TAG = "celeb_smile.disruptions"  # a trial's lost pods or processes, one reason a line
ATTEMPT_TAG = "celeb_smile.attempt"  # Jobs or processes launched for a trial's run so far
PAUSE_TAG = "celeb_smile.paused_by"  # on the parent (driver.py --pause): who paused the sweep
PAUSED_TAG = "celeb_smile.paused"  # on a trial's run: stopped by a pause, resumes from its checkpoint

# -- tracking-server identities -----------------------------------------------------------
# MLflow users named TRIAL_USER_PREFIX + ... may only do a training run's job, on runs tagged
# TRIAL_USER_TAG = their name (k8s/server/trial_rules.py, which keeps copies). A sweep's own is
# TRIAL_USER_PREFIX + '<experiment id>-<sweep id>' (celeb_smile.sweep.access.trial_username),
# made when the sweep starts and deleted when it ends.
TRIAL_USER_PREFIX = "trial-"

# -- metrics a training run logs (a sweep's objective must be one of them, or declared custom) ---
# Which way each per-epoch metric of the model improves: an early-stopping rule may judge one of
# these instead of the objective (early_stopping.metric).
EPOCH_METRIC_DIRECTIONS = {"loss": "minimize", "accuracy": "maximize",
                           "val_loss": "minimize", "val_accuracy": "maximize"}
EPOCH_METRICS = (*EPOCH_METRIC_DIRECTIONS, "epoch_seconds")  # step = epoch
FINAL_METRICS = ("test_loss", "test_accuracy")  # once, after the last epoch
# -- experiment tags --------------------------------------------------------------------------
# MLflow 3's UI opens an experiment in the view its kind names; without it, in the GenAI view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND_MODEL_TRAINING = "custom_model_development"  # the "Model training" view

# -- model registry ---------------------------------------------------------------------------
REGISTERED_MODEL = "celeb-smile"
CHAMPION_ALIAS = "champion"
# on a model version made from a sweep (with SWEEP_ID_TAG, SWEEP_RUN_TAG and CODE_VERSION_TAG):
OBJECTIVE_METRIC_TAG = "celeb_smile.objective_metric"  # what "better" means for this version:
OBJECTIVE_DIRECTION_TAG = "celeb_smile.objective_direction"  # a champion is only compared on
OBJECTIVE_VALUE_TAG = "celeb_smile.objective_value"  # the same metric AND direction
DATASET_TAG = "celeb_smile.dataset"
PROMOTED_BY_TAG = "celeb_smile.promoted_by"  # '<sweep id> <parent run id>' that moved the alias


class TrialState(str, enum.Enum):
    """One trial's outcome so far. Optuna's lesson: a trial stopped by a rule is its own state
    (STOPPED; its MLflow run ends KILLED with STOPPED_TAG), never a failure."""

    PENDING = "PENDING"  # not submitted yet
    SCHEDULED = "SCHEDULED"  # submitted; its process/pod is not running yet
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"  # stopped early by the sweep's early-stopping rule
    KILLED = "KILLED"  # cancelled because the sweep was interrupted
    SKIPPED = "SKIPPED"  # finished before, by the same code: not run again (resume)
    PAUSED = "PAUSED"  # stopped by a pause of the sweep; resumes from its last checkpoint

    @property
    def in_flight(self) -> bool:
        return self in (TrialState.SCHEDULED, TrialState.RUNNING)

    @property
    def ended(self) -> bool:
        return self in ENDED

    @property
    def mlflow_status(self) -> str:
        """The MLflow run status a trial in this state ends with."""
        return {TrialState.STOPPED: "KILLED", TrialState.SKIPPED: "FINISHED"}.get(self, self.value)

    def __str__(self) -> str:
        return self.value


ENDED = frozenset({TrialState.FINISHED, TrialState.FAILED, TrialState.STOPPED,
                   TrialState.KILLED, TrialState.SKIPPED})

# -- MLflow client retries of a training process (local trials get them from the driver,
# pods from job_template.yaml; a test keeps the two equal). 8 retries with backoff 1 s doubling
# to urllib3's 120 s cap ride out ~4 minutes of tracking-server outage without losing a point.
TRAINER_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "8",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
# Set by a sweep's controller in each trial's environment: the controller records how the trial
# ended, so on SIGTERM train.py leaves the run to it (no race between two writers).
SWEEP_ENV = "CELEB_SMILE_SWEEP_ID"
# How long the driver (--outage-timeout's default) and a training process (around MLflow's own
# retries) wait out an unreachable tracking server before they give up.
OUTAGE_PATIENCE_S = 300

# -- Kubernetes labels on a trial's Job and pod (besides app.kubernetes.io/component) ----------
SWEEP_LABEL = "celeb-smile/sweep-id"  # lists a sweep's Jobs and pods in one call
COMPONENT_LABEL = "app.kubernetes.io/component"  # the one label key of k8s/: training, controller
RUN_LABEL = "celeb-smile/run-id"  # the trial's MLflow run
SUBMISSION_TAG = "celeb_smile.submission"  # a token that makes a retried run creation idempotent
