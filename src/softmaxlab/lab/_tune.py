"""The Ray Tune side of ``softmaxlab sweep`` (imports Ray: loaded only when a sweep runs).

:func:`trial` runs in the Ray workers; :class:`Recorder` is the driver's callback, the one
writer of ``results.jsonl``.
"""

from __future__ import annotations

import json
import math
import sys

from ray import tune

from . import results
from .train import run

__all__ = ["Recorder", "trial"]


def trial(config: dict, dataset, setup) -> None:
    """One trial (:class:`softmaxlab.lab.sweep.Setup`): the lab run with its validation
    metric reported each epoch; the last report, after the test metrics, carries the run's
    record."""
    last = setup.cfg.epochs
    worst = -math.inf if setup.mode == "max" else math.inf

    def on_epoch(epoch: int, curve: dict) -> None:
        if epoch < last:
            tune.report({"epoch": epoch, setup.metric: curve[setup.metric][-1],
                         "train_loss": curve["train_loss"][-1]})

    record = run(dataset, setup.head(config), setup.seed, setup.cfg, on_epoch=on_epoch)
    ok = record["status"] == "ok"
    tune.report({"epoch": last, setup.metric: record["curve"][setup.metric][-1] if ok else worst,
                 "train_loss": record["curve"]["train_loss"][-1] if ok else worst,
                 "record": json.dumps(record)})


class Recorder(tune.Callback):
    """Appends each trial's record to ``out/results.jsonl`` (once per trial id, also when a
    restored experiment trains a trial again) and prints one line per finished trial.
    Tune saves it with the experiment (it holds no open file) and restores it."""

    def __init__(self, out: str, config: dict, setup, samples: int):
        self.out, self.config, self.plan, self.samples = out, config, setup, samples
        self.recorded: set[str] = set()

    def setup(self, **info) -> None:
        self.recorded = {r["trial"] for r in results.read(self.out) if "trial" in r}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "record" in result:
            self._write(trial, {"kind": "run", **json.loads(result["record"])})

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        last = trial.last_result or {}
        self._write(trial, {"kind": "stopped", "mapping": self.plan.head(trial.config),
                            "seed": self.plan.seed, "epochs": last.get("epoch", 0),
                            "value": last.get(self.plan.metric),
                            "reason": "stopped early by ASHA"})

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._write(trial, {"kind": "run", "mapping": self.plan.head(trial.config),
                            "seed": self.plan.seed, "status": "failed",
                            "reason": f"the trial raised; see {trial.path}/error.txt"})

    def _write(self, trial, record: dict) -> None:
        if trial.trial_id in self.recorded:
            return
        self.recorded.add(trial.trial_id)
        results.append(self.out, {**record, "trial": trial.trial_id, "config": self.config})
        if record["kind"] == "stopped":
            status, value = f"stopped after epoch {record['epochs']}", record["value"]
        else:
            status = record["status"]
            value = record["curve"][self.plan.metric][-1] if status == "ok" else None
        shown = f" {self.plan.metric} {value:.4f}" if isinstance(value, float) else ""
        print(f"trial {len(self.recorded)}/{self.samples} {trial.trial_id} "
              f"{record['mapping']}{shown} ({status})", file=sys.stderr, flush=True)
