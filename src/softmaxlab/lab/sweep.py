"""``softmaxlab sweep``: Ray Tune with the ASHA scheduler over one mapping's parameters (or a
margin loss's ``scale`` and ``margin``).

Each trial is one lab run (:func:`softmaxlab.lab.train.run`, the same training and
measurements as ``compare``) of the mapping at sampled parameter values; it reports its
validation metric to Tune after every epoch, and ASHA stops the weaker trials early. The
driver writes the records into ``results.jsonl`` as ``compare`` does (one writer, each line
fsync'ed): a trial that ran every epoch is a ``run`` record (its ``mapping`` names the
sampled values, as ``--mappings`` takes them: ``entmax:alpha=1.62``), a trial ASHA stopped
is a ``stopped`` record (its epochs and last validation value), each with its Tune ``trial``
id.
``best.json`` holds the best finished trial by the final validation metric.

Tune keeps its experiment state in ``OUT/tune``: rerunning the command after the driver was
killed restores the experiment (``tune.Tuner.restore``): finished trials are kept, the
unfinished ones run again from their start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .._text import table
from . import datasets, options, outputs, results
from .executor import check_address, import_ray, ray_session
from .heads import get_head, head_name, heads, too_big
from .models import build_model, check_model
from .train import TASK_METRICS, RunConfig

__all__ = ["Range", "parse_range", "register", "sweep"]

#: Tune's experiment folder inside ``--out``.
TUNE_DIR = "tune"
#: The sweep's settings, written before Tune starts; a rerun must match them.
SPEC = "sweep.json"
BEST = "best.json"
#: Seconds between saves of Tune's experiment state (Tune's default adapts, >= 10 s): a
#: trial finished this long before the driver is killed is not trained again.
STATE_SAVE_S = "1"


@dataclass(frozen=True)
class Range:
    """``--param NAME=LOW:HIGH[:log]``: a mapping parameter sampled uniformly (in log space
    with ``log``); integer parameters take the integers LOW..HIGH, both included."""

    name: str
    low: float | int
    high: float | int
    log: bool = False

    def space(self):
        """The Tune search space."""
        from ray import tune

        if isinstance(self.low, int):
            return (tune.lograndint if self.log else tune.randint)(self.low, self.high + 1)
        return (tune.loguniform if self.log else tune.uniform)(self.low, self.high)

    def as_list(self) -> list:
        return [self.low, self.high, "log" if self.log else "linear"]


def parse_range(head, text: str) -> Range:
    """``text`` (``NAME=LOW:HIGH[:log]``) checked against the ``Param`` record of ``head``
    (:class:`softmaxlab.lab.heads.Head`: a mapping's, or a margin loss's): both ends (every
    integer between them, for integer parameters) must be valid values. ``ValueError``
    naming ``--param`` and ``text`` otherwise."""
    flag = f"--param {text}"
    name, eq, bounds = text.partition("=")
    name, parts = name.strip(), bounds.split(":")
    if not eq or not name or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise ValueError(f"{flag}: give NAME=LOW:HIGH or NAME=LOW:HIGH:log")
    try:
        param = head.param(name)
    except KeyError:
        known = ", ".join(p.name for p in head.tunable)
        raise ValueError(f"{flag}: {head.base} has no parameter {name!r} (its parameters: "
                         f"{known})") from None
    kind = type(param.default)
    if kind not in (int, float):
        raise ValueError(f"{flag}: {name} takes {kind.__name__} values, not a range; fix it "
                         f"in the mapping ({head.base}:{name}=...)")
    try:
        low, high = (kind(p) for p in parts[:2])
    except ValueError:
        raise ValueError(f"{flag}: LOW and HIGH must be {kind.__name__} numbers") from None
    if not low < high:
        raise ValueError(f"{flag}: LOW must be < HIGH")
    log = len(parts) == 3
    if log and low <= 0:
        raise ValueError(f"{flag}: a log range needs LOW > 0")
    for value in range(low, high + 1) if kind is int else (low, high):
        try:
            param.validate(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{flag}: {e}") from None
    return Range(name, low, high, log)


@dataclass(frozen=True)
class Setup:
    """What every trial shares besides the dataset."""

    base: str  # the mapping with its fixed parameters, as --mappings takes it
    seed: int
    cfg: RunConfig
    metric: str  # the validation metric, curve key "val_<primary>"
    mode: str  # "max" or "min"

    def head(self, config: dict) -> str:
        """The head name of a trial's sampled ``config`` (``entmax:alpha=1.62``; Tune samples
        NumPy scalars, made the parameter's Python type)."""
        fixed = get_head(self.base)
        values = {**fixed.values, **{k: type(fixed.param(k).default)(v)
                                     for k, v in config.items()}}
        return get_head(head_name(fixed.base, values)).name


def _best(out: Path, metric: str, mode: str) -> dict | None:
    """The finished trial with the best final validation metric, or None."""
    ok = [r for r in results.read(out) if r["kind"] == "run" and r.get("status") == "ok"
          and "trial" in r]
    if not ok:
        return None
    sign = 1 if mode == "max" else -1
    best = max(ok, key=lambda r: sign * r["curve"][metric][-1])
    head = get_head(best["mapping"])
    return {"metric": metric, "mode": mode, "value": best["curve"][metric][-1],
            "mapping": best["mapping"], "params": head.values, "seed": best["seed"],
            "trial": best["trial"], "test_metrics": best["metrics"],
            "finished_trials": len(ok)}


def sweep(mapping: str, params, *, dataset="digits", samples: int = 8,
          epochs: int = RunConfig.epochs, model: str | None = None, jobs: int = 1,
          address: str | None = None, out: str | Path | None = None, limit: int | None = None,
          lr: float = RunConfig.lr, batch_size: int = RunConfig.batch_size,
          device: str = RunConfig.device, label: str | None = None, seed: int = 0,
          grace_period: int = 1, reduction_factor: float = 3.0,
          resume: bool = False) -> Path:
    """Sweep ``mapping``'s ``params`` (``NAME=LOW:HIGH[:log]`` texts) over ``samples``
    trials with ASHA (``grace_period`` epochs before the first stop, ``reduction_factor``
    between rungs), at most ``jobs`` at a time on the Ray at ``address`` or a local Ray of
    ``jobs`` CPUs. Every option is checked before any work (``ValueError`` naming the flag
    and the value). Resumes from ``out``'s Tune state when there is one (``resume=True``
    requires it). Returns the sweep's folder; ``best.json`` there names the best finished
    trial."""
    start = time.perf_counter()
    try:
        import_ray()
    except ImportError as e:
        raise ValueError(f"sweep: {e}") from None
    head = get_head(mapping)
    if not head.tunable:
        raise ValueError(f"sweep {mapping}: {head.base} has no parameters to sweep (those "
                         "with parameters: " + ", ".join(h.name for h in heads()
                                                         if h.tunable and not h.skip) + ")")
    if head.skip:
        raise ValueError(f"sweep {mapping}: {head.skip}")
    if isinstance(params, str) or not params:
        raise ValueError("--param: give a list of at least one NAME=LOW:HIGH[:log] text")
    ranges = [parse_range(head, p) for p in params]
    names = [r.name for r in ranges]
    for r in ranges:
        if names.count(r.name) > 1 or r.name in head.values:
            raise ValueError(f"--param {r.name}: given twice (in --param or in the mapping)")
    samples = options.check_positive_int("--samples", samples)
    epochs = options.check_positive_int("--epochs", epochs)
    jobs = options.check_positive_int("--jobs", jobs)
    batch_size = options.check_positive_int("--batch-size", batch_size)
    grace_period = options.check_positive_int("--grace-period", grace_period)
    if grace_period > epochs:
        raise ValueError(f"--grace-period must be <= --epochs ({epochs}), got {grace_period}")
    reduction_factor = options.check_positive_float("--reduction-factor", reduction_factor)
    if reduction_factor <= 1:
        raise ValueError(f"--reduction-factor must be > 1, got {reduction_factor}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed must be an integer >= 0, got {seed!r}")
    lr = options.check_positive_float("--lr", lr)
    if limit is not None:
        limit = options.check_positive_int("--limit", limit)
    options.check_device(device)
    if address is not None:
        check_address(address)
    if out is not None:
        out = outputs.prepare(out)
    if isinstance(dataset, (str, Path)):
        dataset = datasets.load(dataset, limit=limit, label=label)
    for r in ranges:
        for value in (r.low, r.high):
            problem = too_big(get_head(head_name(head.base, {**head.values, r.name: value})),
                              dataset.n_classes)
            if problem:
                raise ValueError(f"--param {r.name}={r.low}:{r.high}: {problem}")
    cfg = RunConfig(model=check_model(model, dataset.task), epochs=epochs, lr=lr,
                    batch_size=batch_size, device=device)
    build_model(cfg.model, dataset, cosine=False)  # a model that does not fit fails here
    primary = TASK_METRICS[dataset.task][0]
    from .report import METRICS

    setup = Setup(head.name, seed, cfg, f"val_{primary}", "max" if METRICS[primary][1] else "min")
    if out is None:
        out = outputs.prepare(Path("runs") / f"sweep-{dataset.name}-{head.base}")
    config = {"dataset": dataset.name, "source": dataset.meta.get("source"),
              "task": dataset.task, "limit": limit, "sizes": list(dataset.sizes()),
              "n_classes": dataset.n_classes, "data_sha256": dataset.content_sha256(),
              **cfg.as_dict(),
              "sweep": {"mapping": head.name, "params": {r.name: r.as_list() for r in ranges},
                        "samples": samples, "seed": seed, "scheduler": "asha",
                        "grace_period": grace_period, "reduction_factor": reduction_factor}}
    outputs.check_overwrite(out, (SPEC, BEST))
    state = out / TUNE_DIR
    spec_path = out / SPEC
    if spec_path.is_file():
        _check_same(out, json.loads(spec_path.read_text()), config)
    elif state.exists() or (out / results.RESULTS).exists():
        raise ValueError(f"--out {out} holds results or a Tune folder of something other than "
                         "a sweep; give a new folder (--out NEW)")
    if resume and not state.is_dir():
        raise ValueError(f"--resume: {out} holds no sweep to resume (no {TUNE_DIR}/ folder)")
    outputs.make(out)
    results.repair(out)
    outputs.write_outputs(out, {SPEC: (json.dumps(config, indent=1) + "\n").encode()})

    recorded = sum(1 for r in results.read(out) if "trial" in r)
    saved = os.environ.get("TUNE_GLOBAL_CHECKPOINT_S")
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = STATE_SAVE_S
    try:
        with ray_session(address, jobs):
            _fit(out, ranges, setup, config, samples, jobs, grace_period, reduction_factor,
                 dataset, recorded)
    finally:
        if saved is None:
            del os.environ["TUNE_GLOBAL_CHECKPOINT_S"]
        else:
            os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = saved
    new = [r for r in results.read(out) if "trial" in r][recorded:]
    if recorded + len(new) < samples:  # Tune caught a Ctrl-C, saved its state and stopped
        raise KeyboardInterrupt
    train_time = sum(r["metrics"]["train_time"] for r in new if r.get("status") == "ok")
    results.append(out, {"kind": "session", "command": "sweep", "runs": len(new), "jobs": jobs,
                         "executor": "ray", "wall_time": time.perf_counter() - start,
                         "train_time": train_time})
    best = _best(out, setup.metric, setup.mode)
    if best is not None:
        outputs.write_outputs(out, {BEST: (json.dumps(best, indent=1) + "\n").encode()})
    return out


def _fit(out: Path, ranges, setup: Setup, config: dict, samples: int, jobs: int,
         grace_period: int, reduction_factor: float, dataset, recorded: int) -> None:
    """Start the Tune experiment in ``out``, or restore it when ``out`` holds its state."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from ._tune import Recorder, trial

    state = str((out / TUNE_DIR).resolve())
    trainable = tune.with_parameters(trial, dataset=dataset, setup=setup)
    if tune.Tuner.can_restore(state):
        print(f"resuming the sweep in {out}: {recorded} of {samples} trials recorded",
              file=sys.stderr, flush=True)
        tuner = tune.Tuner.restore(state, trainable, resume_unfinished=True)
    else:
        print(f"sweeping {setup.base} over {', '.join(_shown(r) for r in ranges)}: "
              f"{samples} trials x up to {setup.cfg.epochs} epochs, ASHA, at most {jobs} at "
              "a time", file=sys.stderr, flush=True)
        tuner = tune.Tuner(
            trainable, param_space={r.name: r.space() for r in ranges},
            tune_config=tune.TuneConfig(
                metric=setup.metric, mode=setup.mode, num_samples=samples,
                search_alg=BasicVariantGenerator(random_state=setup.seed, max_concurrent=jobs),
                scheduler=ASHAScheduler(time_attr="epoch", max_t=setup.cfg.epochs,
                                        grace_period=grace_period,
                                        reduction_factor=reduction_factor)),
            run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(out.resolve()),
                                      verbose=0,
                                      callbacks=[Recorder(str(out), config, setup, samples)]))
    tuner.fit()


def _shown(r: Range) -> str:
    return f"{r.name} in [{r.low}, {r.high}]{' (log)' if r.log else ''}"


def _check_same(out: Path, before: dict, now: dict) -> None:
    if before != now:
        diff = ", ".join(f"{k}: {before.get(k)!r} there, {v!r} now"
                         for k, v in now.items() if before.get(k) != v)
        raise ValueError(f"{out} holds a sweep of another configuration ({diff}); give a new "
                         "folder (--out NEW)")


def print_best(out: Path) -> None:
    """The finished trials, best first, and where ``best.json`` is."""
    if not (out / BEST).is_file():
        print(f"no trial finished every epoch; the records are in {out / results.RESULTS}")
        return
    best = json.loads((out / BEST).read_text())
    metric, sign = best["metric"], 1 if best["mode"] == "max" else -1
    records = results.read(out)
    rows = sorted(((r["mapping"], r["curve"][metric][-1], r["trial"]) for r in records
                   if r["kind"] == "run" and r["status"] == "ok" and "trial" in r),
                  key=lambda row: -sign * row[1])
    print(table(["mapping", metric, "trial"], [[m, f"{v:.4f}", t] for m, v, t in rows]))
    stopped = sum(1 for r in records if r["kind"] == "stopped")
    print(f"\nbest: {best['mapping']} ({metric} {best['value']:.4f}); {stopped} trial(s) "
          f"stopped early by ASHA. Best config: {out / BEST}")


def cmd_sweep(args: argparse.Namespace) -> int:
    try:
        out = sweep(args.mapping, args.param, dataset=args.dataset, samples=args.samples,
                    epochs=args.epochs, model=args.model, jobs=args.jobs,
                    address=args.address, out=args.out, limit=args.limit, lr=args.lr,
                    batch_size=args.batch_size, device=args.device, label=args.label,
                    seed=args.seed, grace_period=args.grace_period,
                    reduction_factor=args.reduction_factor, resume=args.resume)
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are kept; rerun the same command to resume",
              file=sys.stderr)
        return 130
    print_best(out)
    return 0


def _int(flag: str):
    return options.arg_type(options.check_positive_int, flag)


def _seed(flag: str, text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{flag} must be an integer >= 0, got {text}")
    return int(text)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="tune a mapping's parameters with Ray Tune (ASHA)",
        description="Sample a mapping's parameters (Ray Tune, ASHA scheduler: weak trials "
                    "stop early), train each trial as compare does, and write results.jsonl "
                    "and best.json to --out. Rerunning resumes a killed sweep. Needs pip "
                    "install \"softmaxlab[ray]\".")
    p.add_argument("mapping", help="the mapping (fixed parameters too: entmax:n_iter=30); "
                                   "`softmaxlab list` shows the parameters")
    p.add_argument("--param", action="append", required=True, metavar="NAME=LOW:HIGH[:log]",
                   help="a parameter's range (integers: LOW..HIGH included; :log samples "
                        "in log space); repeat for several")
    p.add_argument("--samples", type=_int("--samples"), default=8,
                   help="trials (default %(default)s)")
    p.add_argument("--dataset", default="digits", help="as compare's (default %(default)s)")
    p.add_argument("--epochs", type=_int("--epochs"), default=RunConfig.epochs,
                   help="epochs of a trial that ASHA does not stop (default %(default)s)")
    p.add_argument("--grace-period", type=_int("--grace-period"), default=1,
                   help="epochs before ASHA may stop a trial (default %(default)s)")
    p.add_argument("--reduction-factor", default=3.0,
                   type=options.arg_type(options.check_positive_float, "--reduction-factor"),
                   help="ASHA keeps 1 in this many trials at each rung (default %(default)s)")
    p.add_argument("--seed", type=options.arg_type(_seed, "--seed"), default=0,
                   help="the trials' training seed and the sampler's (default %(default)s)")
    p.add_argument("--jobs", type=_int("--jobs"), default=os.cpu_count() or 1,
                   help="trials at once (default: CPU count, %(default)s)")
    p.add_argument("--address", default=None,
                   help="the Ray cluster (auto, host:port, ray://host:port); default: start "
                        "a local Ray of --jobs CPUs")
    p.add_argument("--out", default=None,
                   help="the sweep's folder (default runs/sweep-DATASET-MAPPING)")
    p.add_argument("--resume", action="store_true",
                   help="resume the sweep in --out (an error if there is none; a rerun "
                        "resumes without it too)")
    p.add_argument("--model", default=None, help="as compare's")
    p.add_argument("--limit", type=_int("--limit"), default=None,
                   help="keep the first N rows (tokens) of each split")
    p.add_argument("--lr", type=options.arg_type(options.check_positive_float, "--lr"),
                   default=RunConfig.lr, help="Adam learning rate (default %(default)s)")
    p.add_argument("--batch-size", type=_int("--batch-size"), default=RunConfig.batch_size,
                   help="default %(default)s")
    p.add_argument("--device", default=RunConfig.device,
                   type=options.arg_type(lambda flag, v: options.check_device(v, flag),
                                         "--device"),
                   help="torch device (default %(default)s)")
    p.add_argument("--label", default=None, help="class column of a CSV/Parquet file")
    p.set_defaults(func=cmd_sweep)
