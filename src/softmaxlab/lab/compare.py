"""``softmaxlab compare``: train every mapping on one dataset over several seeds, then report.

The run directory's ``results.jsonl`` is the source of truth: each finished
``(mapping, seed)`` is appended as soon as it ends, so an interrupted compare keeps every
finished run, and rerunning the same command resumes where it stopped. ``report.md``,
``report.html``, ``summary.csv`` and the plots are rendered from it (``softmaxlab report``).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

from . import datasets, options, outputs, results
from .executor import EXECUTORS, emit
from .executor import executor as make_executor
from .heads import get_head, parse_attention, parse_heads, too_big
from .models import ATTENTION_MODELS, build_model, check_model
from .train import RunConfig, run

__all__ = ["compare", "register"]


def _run_task(shared, task):
    dataset, cfg = shared
    head, seed = task
    return run(dataset, head, seed, cfg, on_epoch=lambda epoch, _: emit((head, seed, epoch)))


def _check_config(out: Path, config: dict) -> set[tuple[str, int | None]]:
    """The (mapping, seed) pairs already finished in ``out``; a ``ValueError`` when ``out``
    holds results of another configuration."""
    done = set()
    for r in results.read(out):
        if r["kind"] == "session":
            continue
        if r["config"] != config:
            diff = ", ".join(f"{k}: {_short(r['config'].get(k))} there, {_short(v)} now"
                             for k, v in config.items() if r["config"].get(k) != v)
            raise ValueError(f"{out} holds results of another configuration ({diff}); "
                             f"to start fresh, give a new folder (--out NEW) or add --force "
                             f"(deletes the results there)")
        done.add((r["mapping"], r.get("seed")))
    return done


def _fit_heads(heads, n_classes: int, explicit: bool):
    """``heads`` whose parameters suit ``n_classes`` (:func:`.heads.too_big`): others are an
    error when asked for by name, else left out."""
    kept = []
    for h in heads:
        problem = too_big(h, n_classes)
        if problem and explicit:
            raise ValueError(f"--mappings {h.name}: {problem}")
        if not problem:
            kept.append(h)
    return tuple(kept)


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:18] + "..." + text[-18:]


def compare(dataset, *, mappings: str = "all", seeds: int = 5, epochs: int = RunConfig.epochs,
            model: str | None = None, jobs: int = 1, out: str | Path | None = None,
            limit: int | None = None, lr: float = RunConfig.lr,
            batch_size: int = RunConfig.batch_size, device: str = RunConfig.device,
            label: str | None = None, progress: bool = True, force: bool = False,
            shuffle: bool = True, goal: str = "accuracy", executor: str = "local",
            address: str | None = None, attention: str | None = None) -> Path:
    """Run every missing ``(mapping, seed)`` of the comparison and render the report.

    ``dataset`` is a name or path for ``softmaxlab.lab.datasets.load`` (split seed 0) or a
    loaded ``Dataset``. Every option is checked before any training (``ValueError`` naming
    the flag and the value); ``out`` must not hold files softmaxlab did not write there
    (:mod:`.outputs`); ``force`` deletes the results already in ``out`` and starts fresh.
    The runs go in a seeded random order (``shuffle=False``: mapping by mapping, as given),
    so that no mapping is always first in a worker. ``goal`` (accuracy, calibration,
    sparsity, speed) is what the report's recommendation optimises. ``executor="ray"`` runs
    the trainings as Ray tasks (at most ``jobs`` at once) on the cluster at ``address``, or
    on a local Ray of ``jobs`` CPUs; the records are the same. ``attention`` (comma-separated
    attention mappings, :func:`.heads.parse_attention`): the runs compare those as the
    self-attention of a model with attention (default ``transformer``), all with one output
    head (``mappings``: one name; ``"all"`` means softmax); a run's ``mapping`` is then its
    attention mapping. Returns the run directory.
    """
    from .report import OUTPUT_NAMES, render  # Matplotlib: the lab extra

    start = time.perf_counter()
    heads = parse_heads(mappings)
    seeds = options.check_positive_int("--seeds", seeds)
    epochs = options.check_positive_int("--epochs", epochs)
    jobs = options.check_positive_int("--jobs", jobs)
    batch_size = options.check_positive_int("--batch-size", batch_size)
    lr = options.check_positive_float("--lr", lr)
    if limit is not None:
        limit = options.check_positive_int("--limit", limit)
    options.check_device(device)
    options.check_goal(goal)
    options.check_executor(executor, address)
    if out is not None:
        out = outputs.prepare(out)
    arms = parse_attention(attention) if attention is not None else None
    if arms is not None:
        if mappings.strip() == "all":
            heads = (get_head("softmax"),)
        elif len(heads) != 1:
            raise ValueError(f"--attention compares attention mappings under one output head: "
                             f"give --mappings one name (or leave it 'all': softmax), got "
                             f"{mappings!r}")
        if model is None:
            model = ATTENTION_MODELS[0]
    if isinstance(dataset, (str, Path)):
        dataset = datasets.load(dataset, limit=limit, label=label)
    cfg = RunConfig(model=check_model(model, dataset.task), epochs=epochs, lr=lr,
                    batch_size=batch_size, device=device,
                    head=heads[0].name if arms is not None else None)
    for arm in arms or [None]:  # a model that does not fit fails here, once
        build_model(cfg.model, dataset, cosine=False, attention=arm[1:] if arm else None)
    heads = _fit_heads(heads, dataset.n_classes, explicit=mappings.strip() != "all")
    if arms is not None and heads[0].skip:
        raise ValueError(f"--mappings {heads[0].name}: {heads[0].skip}")
    names = [h.name for h in heads if not h.skip] if arms is None else [a[0] for a in arms]
    if out is None:
        out = outputs.prepare(Path("runs") / f"compare-{dataset.name}")
    config = {"dataset": dataset.name, "source": dataset.meta.get("source"),
              "task": dataset.task, "limit": limit, "sizes": list(dataset.sizes()),
              "n_classes": dataset.n_classes, "data_sha256": dataset.content_sha256(),
              **cfg.as_dict()}
    outputs.check_overwrite(out, OUTPUT_NAMES)
    if force:
        outputs.remove_outputs(out)
    else:
        results.repair(out)
    done = _check_config(out, config)
    outputs.make(out)
    for h in heads if arms is None else ():
        if h.skip and (h.name, None) not in done:
            results.append(out, {"kind": "skipped", "mapping": h.name, "seed": None,
                                 "reason": h.skip, "config": config})
    tasks = [(name, s) for name in names for s in range(seeds) if (name, s) not in done]
    if shuffle:
        random.Random(0).shuffle(tasks)
    jobs = max(1, min(jobs, len(tasks)))
    train_time = 0.0
    with Progress(tasks, epochs, jobs, progress) as bar:
        for _, record in make_executor(jobs, executor, address).map(
                _run_task, (dataset, cfg), tasks, on_event=bar.epoch if progress else None):
            results.append(out, {"kind": "run", **record, "config": config})
            train_time += record["metrics"]["train_time"] if record["status"] == "ok" else 0.0
            bar.finished(record)
    results.append(out, {"kind": "session", "runs": len(tasks), "jobs": jobs,
                         "executor": executor,
                         "wall_time": time.perf_counter() - start, "train_time": train_time,
                         "goal": goal})
    render(out, goal)
    return out


class Progress:
    """Progress of a compare, epoch by epoch: a Rich bar on a terminal (elapsed, estimated
    time left), plain lines otherwise (every ``every`` seconds). The estimate for the whole
    compare is printed once the first epochs have run (their rate, over every epoch left)."""

    def __init__(self, tasks: list, epochs: int, jobs: int, show: bool, every: float = 10.0,
                 stream=None, window: float = 3.0):
        self.window = window
        self.epochs, self.jobs, self.show, self.every = epochs, jobs, show, every
        self.total = len(tasks) * epochs
        self.done: dict = {tuple(t): 0 for t in tasks}
        self.runs_done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self.last_line = self.start
        self.estimated = False
        self.first: tuple[float, int] | None = None  # (time, epochs done) at the first epoch
        self.bar = None
        self.task_id = None

    # -- the numbers
    @property
    def epochs_done(self) -> int:
        return sum(self.done.values())

    def eta(self) -> float | None:
        """Seconds left at the rate of the epochs since the first one ended (start-up and
        each run's warm-up excluded); None until ``2 * jobs`` more epochs have run and
        ``window`` seconds have passed or a tenth of the epochs is done (the workers' events
        arrive in bursts)."""
        done, now = self.epochs_done, time.perf_counter()
        if self.first is None:
            if done:
                self.first = (now, done)
            return None
        t0, n0 = self.first
        if done - n0 < 2 * self.jobs or (now - t0 < self.window and done - n0 < 0.1 * self.total):
            return None
        return (self.total - done) * (now - t0) / (done - n0)

    # -- events
    def __enter__(self) -> Progress:
        if not (self.show and self.total):
            return self
        print(f"training {len(self.done)} runs x {self.epochs} epochs on {self.jobs} job(s); "
              "an estimate follows the first epochs", file=self.stream, flush=True)
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                           TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                           console=Console(file=self.stream))
            self.bar.__enter__()
            self.task_id = self.bar.add_task(self._description(), total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def epoch(self, event) -> None:
        """``event = (mapping, seed, epoch)`` from inside a run."""
        key, epoch = (event[0], event[1]), event[2]
        if key in self.done:
            self.done[key] = max(self.done[key], epoch)
        self._update()

    def finished(self, record: dict) -> None:
        self.done[(record["mapping"], record["seed"])] = self.epochs
        self.runs_done += 1
        self._update(record)

    def _description(self, record: dict | None = None) -> str:
        text = f"{self.runs_done}/{len(self.done)} runs"
        if record is not None:
            status = "" if record["status"] == "ok" else f" {record['status']}"
            text += f" (last: {record['mapping']} seed {record['seed']}{status})"
        return text

    def _update(self, record: dict | None = None) -> None:
        if not (self.show and self.total):
            return
        now = time.perf_counter()
        eta = self.eta()
        if eta is not None and not self.estimated:
            self.estimated = True
            self._print(f"estimate: about {_duration(now - self.start + eta)} for the whole "
                        f"compare, {_duration(eta)} left (from the rate of the first "
                        f"{self.epochs_done} epochs)")
        if self.bar is not None:
            self.bar.update(self.task_id, completed=self.epochs_done,
                            description=self._description(record))
        elif now - self.last_line >= self.every or self.runs_done == len(self.done):
            self.last_line = now
            left = f", about {_duration(eta)} left" if eta is not None else ""
            self._print(f"{self.epochs_done / self.total:4.0%}  {self._description(record)}, "
                        f"{_duration(now - self.start)} elapsed{left}")

    def _print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.console.print(line, highlight=False, markup=False)
        else:
            print(line, file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def cmd_compare(args: argparse.Namespace) -> int:
    from .report import print_summary

    t0 = time.perf_counter()
    try:
        out = compare(args.dataset, mappings=args.mappings, seeds=args.seeds,
                      epochs=args.epochs, model=args.model, jobs=args.jobs, out=args.out,
                      limit=args.limit, lr=args.lr, batch_size=args.batch_size,
                      device=args.device, label=args.label, force=args.force,
                      goal=args.goal, executor=args.executor, address=args.address,
                      attention=args.attention)
    except KeyboardInterrupt:
        print("\ninterrupted: every finished run is kept; rerun the same command to resume",
              file=sys.stderr)
        return 130
    summary = print_summary(out, total_wall=time.perf_counter() - t0, goal=args.goal)
    if not any(row.seeds_ok for row in summary.rows):
        print("softmaxlab: error: every run failed (reasons above and in the report)",
              file=sys.stderr)
        return 1
    return 0


def _int(flag: str):
    return options.arg_type(options.check_positive_int, flag)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="train every mapping on a dataset over seeds and write a report",
        description="Train each mapping (its natural loss; margin losses with a cosine head) "
                    "over seeds, then write results.jsonl, summary.csv, report.md and "
                    "report.html to the run directory. Rerunning resumes.")
    p.add_argument("--dataset", default="digits",
                   help="built-in dataset name or a data file (default %(default)s; "
                        "`softmaxlab data` lists them)")
    p.add_argument("--mappings", default="all",
                   help="'all' (every mapping and margin loss; entmax at alpha 1.25 and 1.75, "
                        "sparse_softmax at k 2 and 5) or comma-separated names, each with "
                        "its parameters if you like: entmax:alpha=1.3,sparse_softmax:k=5, "
                        "arcface:margin=0.3 (a margin loss's scale and margin) (default "
                        "%(default)s; `softmaxlab list` shows the mappings' parameters)")
    p.add_argument("--attention", default=None,
                   help="compare attention mappings instead: comma-separated names (softmax, "
                        "entmax15, sparsemax, sigmoid, softmax1, entmax:alpha=1.3, ...), each "
                        "the self-attention of --model transformer (the default then), all "
                        "with the output head of --mappings (one name; 'all': softmax); the "
                        "report adds the attention support (keys per query)")
    p.add_argument("--goal", choices=options.GOALS, default="accuracy",
                   help="what the recommendation optimises: accuracy (the task's quality "
                        "metric), calibration (ECE), sparsity (support; among mappings not "
                        "detectably less accurate than softmax) or speed (train s/epoch) "
                        "(default %(default)s)")
    p.add_argument("--seeds", type=_int("--seeds"), default=5,
                   help="seeds 0..N-1 (default %(default)s: the fewest the recommendation "
                        "calls more than weak evidence; rerunning with more adds seeds)")
    p.add_argument("--epochs", type=_int("--epochs"), default=RunConfig.epochs,
                   help="default %(default)s")
    p.add_argument("--model", default=None,
                   help="mlp or cnn (classification), lstm or transformer (language model), "
                        "gru (recommendation); default: the first for the task")
    p.add_argument("--jobs", type=_int("--jobs"), default=os.cpu_count() or 1,
                   help="parallel runs; 1 runs in this process (default: CPU count, "
                        "%(default)s)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="where the runs train: local processes, or ray (Ray tasks of one CPU, "
                        "at most --jobs at once, on a local Ray of --jobs CPUs or the cluster "
                        "at --address; needs pip install \"softmaxlab[ray]\") "
                        "(default %(default)s)")
    p.add_argument("--address", default=None,
                   help="with --executor ray: the Ray cluster (auto, host:port, "
                        "ray://host:port; softmaxlab installed on its nodes); default: start "
                        "a local Ray")
    p.add_argument("--out", default=None,
                   help="run directory (default runs/compare-DATASET); rerunning the same "
                        "command resumes there; files softmaxlab did not write are never "
                        "overwritten")
    p.add_argument("--force", action="store_true",
                   help="delete the results already in --out and start fresh")
    p.add_argument("--limit", type=_int("--limit"), default=None,
                   help="keep the first N rows (tokens) of each split")
    p.add_argument("--lr", type=options.arg_type(options.check_positive_float, "--lr"),
                   default=RunConfig.lr,
                   help="Adam learning rate (default %(default)s)")
    p.add_argument("--batch-size", type=_int("--batch-size"), default=RunConfig.batch_size,
                   help="default %(default)s")
    p.add_argument("--device", default=RunConfig.device,
                   type=options.arg_type(lambda flag, v: options.check_device(v, flag),
                                         "--device"),
                   help="torch device: cpu, cuda, cuda:N, mps (default %(default)s)")
    p.add_argument("--label", default=None, help="class column of a CSV/Parquet file")
    p.set_defaults(func=cmd_compare)
