"""The `stillroom` command line: run, label, train, evaluate, estimate, spend, datasets.

Every failure is one line on stderr: exit 2 for bad input (config, data, store), 1 for anything
else, 130 for Ctrl-C; `--debug` (or STILLROOM_DEBUG=1) shows the traceback and Prefect's logs.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import click
import typer

from . import _engine
from ._config import DEFAULT_STORE

if TYPE_CHECKING:
    from stillroom.storage import DatasetRef

    from ._config import Config
    from ._labeling import LabelingSummary

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Distil a teacher LLM into small, cheap students.",
)
datasets_app = typer.Typer(
    no_args_is_help=True,
    help="List, show, diff, log, verify, export and clean up dataset versions.",
)
app.add_typer(datasets_app, name="datasets")
cache_app = typer.Typer(
    no_args_is_help=True, help="Share paid answers: export the response cache, import another's."
)
app.add_typer(cache_app, name="cache")

ConfigArg = Annotated[Path, typer.Argument(help="the YAML config")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="override a key: --set teacher.model=M")
]
StoreOpt = Annotated[str, typer.Option(help="the store folder")]
AcknowledgeOpt = Annotated[
    str | None,
    typer.Option(
        "--acknowledge-terms",
        help="train although the version's terms forbid it, saying why (recorded in the run)",
    ),
]
MessageOpt = Annotated[
    str | None,
    typer.Option("--message", "-m", help="recorded with the version this run commits"),
]
RetryMalformedOpt = Annotated[
    bool,
    typer.Option(
        "--retry-malformed",
        help="ask the teacher again (and pay again) for answers cached as 'malformed answer'; "
        "the same as --set teacher.retry_malformed=true",
    ),
]

P = ParamSpec("P")
R = TypeVar("R")


class _Options:
    debug = False


def _debug() -> bool:
    return _Options.debug or os.environ.get("STILLROOM_DEBUG", "") not in ("", "0")


def _user_errors() -> tuple[type[Exception], ...]:
    from stillroom import labelers, storage

    from ._config import ConfigError
    from ._errors import SetupError
    from ._ingest import InputError

    return (
        ConfigError,
        InputError,
        SetupError,
        labelers.LabelerError,
        storage.StoreError,
        storage.HubError,
    )


def _failures_to_report() -> tuple[type[Exception], ...]:
    """Not the user's input, but a known failure whose message says what happened and what to do."""
    from ._labeling import LabelingFailed
    from ._policy import DriftDetected

    return (_engine.EngineError, LabelingFailed, DriftDetected)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"stillroom: error: {printable(message)}", err=True)
    return typer.Exit(code)


# C0 and C1 controls and DEL (ESC starts a terminal's escape sequences, BEL ends an OSC one),
# and the bidirectional overrides that make a terminal show text in another order
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable_lines(text: str) -> str:
    """`printable` for each line of a text that keeps its lines (a report's Markdown)."""
    return "\n".join(printable(line) for line in text.split("\n"))


def printable(text: object) -> str:
    """`text` safe to print on a terminal: every control character written as an escape
    (`\\x1b`, `\\n`), so a teacher's answer or a crafted store cannot move the cursor, retitle
    the window or hide what it says."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def handled(command: Callable[P, R]) -> Callable[P, R]:
    """Run a command; whatever escapes it becomes one line on stderr and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except KeyboardInterrupt as exc:
            how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            typer.echo(
                f"stillroom: {how}. Every answer received so far is in the cache: "
                "run the same command again to finish without paying for them twice.",
                err=True,
            )
            raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
        except Exception as exc:
            if _debug():
                raise
            if isinstance(exc, _user_errors()):
                raise _fail(_one_line(exc), 2) from None
            if isinstance(exc, _failures_to_report()):
                raise _fail(_one_line(exc), 1) from None
            raise _fail(
                f"{type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)", 1
            ) from None

    return wrapper


class _OneLine(logging.Handler):
    """The `stillroom` logger's warnings, as the CLI's own lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(
            f"stillroom: {record.levelname.lower()}: {printable(record.getMessage())}", err=True
        )


def _print_version(asked: bool) -> None:
    if asked:
        import stillroom

        typer.echo(f"stillroom {stillroom.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="show tracebacks and Prefect's logs")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    _Options.debug = debug
    _engine.configure(debug=_debug())
    log = logging.getLogger("stillroom")
    if not any(isinstance(h, _OneLine) for h in log.handlers):
        handler = _OneLine(logging.WARNING)
        log.addHandler(handler)


def _load(
    path: Path,
    overrides: list[str] | None,
    message: str | None = None,
    acknowledge: str | None = None,
) -> Config:
    from ._config import load_config

    cfg = load_config(path, overrides or [])
    update: dict[str, Any] = {}
    if message is not None:
        update["message"] = message
    if acknowledge is not None:
        if not acknowledge.strip():
            raise typer.BadParameter("--acknowledge-terms needs a reason")
        update["acknowledge_terms"] = acknowledge
    return cfg.model_copy(update=update) if update else cfg


def _local_note(cfg: Config) -> None:
    """With a store in object storage, say where what stays on this machine is."""
    from stillroom import storage

    if storage.is_remote(cfg.store):
        typer.echo(
            f"stillroom: store {cfg.store}; the response cache stays a local file, "
            f"{cfg.cache_path} (checkpoints and run folders in {cfg.local} too)",
            err=True,
        )


def _check_version(cfg: Config, spec: str, training: bool = True) -> None:
    """A missing or damaged version, or one whose terms forbid training (when `training`),
    fails here, before Prefect starts."""
    from stillroom import storage

    from ._training import check_trainable, terms_gate

    store = storage.Store(cfg.store)
    ref = store.resolve(spec)
    store.load(ref)  # re-hashes and checks the version against its manifest
    manifest = store.manifest(ref)
    check_trainable(ref, manifest, cfg)
    if training:
        terms_gate(ref, manifest, cfg)


def _check_out(cfg: Config, out: Path | None) -> None:
    """An --out folder that is not new, empty or a run of this config fails before Prefect starts."""
    from ._report import check_run_folder

    if out is not None:
        check_run_folder(out, cfg.name)


def _trained_on(cfg: Config, spec: str, run: Path) -> None:
    """Refuse a --dataset other than the version the run's students were trained on (they are
    measured on that version's held-out records, not another's)."""
    from stillroom import storage

    from ._errors import SetupError
    from ._training import read_trained

    trained = read_trained(run)["dataset"]
    asked = storage.Store(cfg.store).resolve(spec)
    if str(asked) != trained:
        raise SetupError(
            f"--dataset {spec} is {asked}, but the students in {run} were trained on {trained}: "
            f"give --dataset {trained}, or leave out --run to train on {asked}"
        )


def _with_engine(prepare: Callable[[], None], flow: Callable[[], R]) -> tuple[R, dict[str, float]]:
    """Start Prefect's server, run `prepare` (the teacher's model load) while it boots, then
    `flow`; returns its result and the seconds each part took."""
    engine = _engine.Engine.start()
    start = time.perf_counter()
    prepare()
    model_load = time.perf_counter() - start
    from . import _flow  # noqa: F401  (importing Prefect takes seconds: also while it boots)

    timings = {"model_load": model_load, "engine_start": engine.ready()}
    with engine.connected():
        return flow(), timings


def _show_report(report_path: Path) -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    console = Console(soft_wrap=False)
    if not console.is_terminal:  # piped or logged: wide enough for the students' table
        console = Console(soft_wrap=False, width=max(console.width, 120))
    console.print(Markdown(printable_lines((report_path.parent / "report.md").read_text())))
    typer.echo(str(report_path))


def _budget_note(cfg: Config, failures: dict[str, int]) -> None:
    from stillroom import storage
    from stillroom.labelers import BUDGET_EXHAUSTED

    left = failures.get(BUDGET_EXHAUSTED, 0)
    if not left:
        return

    with storage.ResponseCache(cfg.cache_path) as cache:
        spent = cache.spent(cfg.name)
    typer.echo(
        f"stillroom: budget reached: ${spent:.4f} of ${cfg.teacher.budget_usd} spent; {left} "
        "records left to label. Raise teacher.budget_usd and re-run the same command to continue.",
        err=True,
    )


@app.command()
@handled
def run(
    config: ConfigArg,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="run folder")] = None,
    message: MessageOpt = None,
    acknowledge: AcknowledgeOpt = None,
) -> None:
    """Ingest -> label -> commit -> train -> evaluate; prints the results and report.json's path."""
    from ._policy import check_current
    from ._teacher import preflight, terms_before_labeling

    started = time.perf_counter()
    cfg = _load(config, set_, message, acknowledge)
    teacher = preflight(cfg)
    terms_before_labeling(cfg)  # nothing is paid for a run that could not train
    check_current(cfg)  # nor for one that could not measure the students it would replace
    _check_out(cfg, out)
    _local_note(cfg)

    def flow() -> Path:
        from ._flow import distill

        return distill(cfg, str(out) if out else None)

    report_path, timings = _with_engine(teacher.prepare, flow)
    report = json.loads(report_path.read_text())
    _budget_note(cfg, _failures(cfg, report))
    _show_report(report_path)
    parts = {**timings, **report.get("timings_s", {})}
    # a generate run trains nothing: its evaluation is the completions' statistics
    stages = ("labeling", "training", "evaluation") if report["students"] else ("labeling",)
    typer.echo(
        f"stillroom: {time.perf_counter() - started:.1f} s in all: Prefect server start "
        f"{parts['engine_start']:.1f} s with the teacher's model load ({parts['model_load']:.1f} s) "
        "alongside, "
        + ", ".join(f"{stage} {parts[stage]:.1f} s" for stage in stages)
        + ("" if report["students"] else f", statistics {parts['evaluation']:.1f} s"),
        err=True,
    )


def _failures(cfg: Config, report: dict[str, Any]) -> dict[str, int]:
    from stillroom import storage

    store = storage.Store(cfg.store)
    ref = store.resolve(f"{report['dataset']['name']}@{report['dataset']['version']}")
    return dict(store.manifest(ref).get("labeling", {}).get("failures", {}))


@app.command()
@handled
def deploy(
    config: Annotated[Path | None, typer.Argument(help="the YAML config")] = None,
    cron: Annotated[
        str | None, typer.Option("--cron", help='when to run, as cron: "0 2 * * *" is 02:00 daily')
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="the deployment's name (default: the config's)")
    ] = None,
    flow: Annotated[
        str, typer.Option("--flow", help="distill (label, retrain, report) or label")
    ] = "distill",
    timezone: Annotated[
        str | None, typer.Option("--timezone", help="the cron's time zone (default UTC)")
    ] = None,
    pool: Annotated[str, typer.Option("--pool", help="the process work pool")] = "stillroom",
    set_: SetOpt = None,
    list_: Annotated[bool, typer.Option("--list", help="list stillroom's deployments")] = False,
    delete: Annotated[
        str | None, typer.Option("--delete", help="delete a deployment: NAME or FLOW/NAME")
    ] = None,
) -> None:
    """Schedule a config on a Prefect server: creates or updates a deployment of the distill (or
    label) flow with a cron schedule, run by a process worker (prefect worker start --pool
    stillroom). Needs PREFECT_API_URL."""
    server = _engine.configured_server()
    if not server:
        raise _fail(
            "deploy needs a running Prefect server: start one (prefect server start, or "
            "docker-compose up -d) and set PREFECT_API_URL=http://127.0.0.1:4200/api",
            2,
        )
    from . import _deploy

    if list_:
        _engine.wait_ready(server)
        for row in _deploy.list_deployments():
            state = "active" if row["active"] else "paused"
            typer.echo(f"{row['name']}\t{row['cron']}\t{state}\t{row['pool']}\t{row['config']}")
        return
    if delete:
        _engine.wait_ready(server)
        typer.echo(f"deleted {_deploy.delete_deployment(delete)}")
        return
    if config is None or cron is None:
        raise typer.BadParameter("give a CONFIG and --cron (or --list, or --delete NAME)")
    if flow not in ("distill", "label"):
        raise typer.BadParameter(f"--flow {flow!r}: use distill or label")
    _deploy.check_cron(cron, timezone)  # before waiting on the server
    _load(config, set_)
    _deploy.check_overrides(set_ or [])
    _engine.wait_ready(server)
    done = _deploy.deploy(
        config,
        cron,
        name=name,
        which="label" if flow == "label" else "distill",
        overrides=set_,
        pool=pool,
        timezone=timezone,
    )
    typer.echo(
        f'deployed {done["name"]}: "{cron}" on work pool {done["pool"]}; config '
        f"{done['config']}, run in {done['working_dir']}",
        err=True,
    )
    typer.echo(
        f"start a worker if none is running: prefect worker start --pool {done['pool']}", err=True
    )
    typer.echo(done["name"])


@app.command()
@handled
def label(
    config: ConfigArg,
    set_: SetOpt = None,
    message: MessageOpt = None,
    retry_malformed: RetryMalformedOpt = False,
) -> None:
    """Ingest + label + commit; prints NAME@VERSION."""
    from ._teacher import preflight

    overrides = [*(set_ or []), *(["teacher.retry_malformed=true"] if retry_malformed else [])]
    cfg = _load(config, overrides, message)
    teacher = preflight(cfg)
    _local_note(cfg)

    def flow() -> tuple[DatasetRef, LabelingSummary]:
        from ._flow import label_dataset

        return label_dataset(cfg)

    (ref, summary), _ = _with_engine(teacher.prepare, flow)
    if summary.incremental and not summary.records:
        typer.echo(
            f"nothing new: {ref} already answers all {summary.incremental['records']} records; "
            "nothing committed",
            err=True,
        )
        typer.echo(str(ref))
        return
    _budget_note(cfg, summary.failures)
    run = summary.run
    failed = f" ({summary.failures_text()})" if summary.failed else ""
    done = "completed" if cfg.task.kind == "generate" else "labeled"
    typer.echo(
        f"{summary.labeled} {done}, {summary.failed} failed{failed}, {run.teacher_calls} teacher "
        f"calls, {run.cache_hits} cache hits, ${run.cost_usd:.4f} in {summary.wall_s:.1f} s",
        err=True,
    )
    typer.echo(str(ref))


@app.command()
@handled
def train(
    config: ConfigArg,
    dataset: Annotated[str, typer.Option("--dataset", help="NAME[@VERSION]")],
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="run folder")] = None,
    acknowledge: AcknowledgeOpt = None,
) -> None:
    """Train the configured students on a labeled version; prints the run folder."""
    cfg = _load(config, set_, acknowledge=acknowledge)
    _check_version(cfg, dataset)
    _check_out(cfg, out)

    def flow() -> Path:
        from ._flow import train as train_flow

        return train_flow(cfg, dataset, str(out) if out else None)

    folder, _ = _with_engine(lambda: None, flow)
    typer.echo(str(folder))


@app.command()
@handled
def evaluate(
    config: ConfigArg,
    dataset: Annotated[str, typer.Option("--dataset", help="NAME[@VERSION]")],
    set_: SetOpt = None,
    run_dir: Annotated[Path | None, typer.Option("--run", help="a folder made by `train`")] = None,
    acknowledge: AcknowledgeOpt = None,
) -> None:
    """Measure trained students against the teacher (training them first when --run is not given)."""
    cfg = _load(config, set_, acknowledge=acknowledge)
    _check_version(cfg, dataset, training=run_dir is None)
    if run_dir is not None:
        _trained_on(cfg, dataset, run_dir)

    def flow() -> Path:
        from ._flow import evaluate_run
        from ._flow import train as train_flow

        folder = run_dir or train_flow(cfg, dataset, None)
        return evaluate_run(cfg, str(folder))

    report_path, _ = _with_engine(lambda: None, flow)
    _show_report(report_path)


@app.command()
@handled
def estimate(config: ConfigArg, set_: SetOpt = None) -> None:
    """Records, tokens and cost the teacher would be paid for, before paying anything."""
    from ._estimate import estimate as do_estimate

    for key, value in do_estimate(_load(config, set_)).items():
        typer.echo(f"{key:>22}: {value}")


@app.command()
@handled
def spend(
    store: StoreOpt = DEFAULT_STORE,
    name: Annotated[str | None, typer.Option(help="only this config name")] = None,
) -> None:
    """The spend ledger: every paid teacher call, summed by config name and model."""
    from stillroom import storage

    path = _local(store) / "cache.sqlite"
    if not path.exists():
        typer.echo(f"no teacher calls recorded in {store}")
        return
    with storage.ResponseCache(path) as cache:
        rows = cache.spend(name)
    total = 0.0
    for row in rows:
        total += row["cost_usd"]
        typer.echo(
            printable(
                f"{row['tag'] or '-':<24} {row['model'] or '-':<24} {row['calls']:>8} calls "
                f"{row['input_tokens']:>12} in {row['output_tokens']:>10} out  ${row['cost_usd']:.4f}"
            )
        )
    typer.echo(f"total: ${total:.4f}")


@cache_app.command("export")
@handled
def cache_export(
    file: Annotated[Path, typer.Argument(help="a .jsonl (or .jsonl.gz) file to write")],
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Write every answer in the store's cache (request, response, tokens, cost) to FILE, for a
    teammate's store to import; it holds no API key (none is ever cached)."""
    from stillroom import storage

    path = _local(store) / "cache.sqlite"
    if not path.exists():
        raise storage.StoreError(f"no response cache in {store} (no {path})")
    with storage.ResponseCache(path) as cache:
        count = cache.export(file)
    typer.echo(f"{count} answers written to {file}")


@cache_app.command("import")
@handled
def cache_import(
    file: Annotated[Path, typer.Argument(help="a file `stillroom cache export` wrote")],
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Add the answers in FILE to the store's cache: the same requests are then answered from
    it, unpaid. An answer already there is never overwritten; a line whose key does not match
    its request is rejected. The spend ledger is left alone (these were paid elsewhere)."""
    from stillroom import storage

    with storage.ResponseCache(_local(store) / "cache.sqlite") as cache:
        counts = cache.import_answers(file)
    typer.echo(
        f"{counts['added']} answers added, {counts['present']} already present (kept), "
        f"{counts['rejected']} rejected"
    )


@datasets_app.command("list")
@handled
def datasets_list(
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Every dataset version in the store."""
    from stillroom import storage

    rows = storage.Store(store).list()
    if not rows:
        typer.echo(f"no datasets in {store}")
    for row in rows:
        if row["problem"]:
            typer.echo(
                printable(f"stillroom: warning: {row['dataset']}: {row['problem']}"), err=True
            )
            continue
        typer.echo(
            printable(
                f"{row['dataset']:<40} {row['rows']:>8} rows  {row['licence']:<20} {row['created_at']}"
            )
        )


@datasets_app.command("show")
@handled
def datasets_show(
    spec: Annotated[str, typer.Argument(help="NAME[@VERSION]")],
    store: StoreOpt = DEFAULT_STORE,
    failures: Annotated[int, typer.Option(help="also list up to N failed records")] = 0,
) -> None:
    """A version's manifest (failures by reason included); --failures N lists failed records with
    the teacher's raw answer."""
    from stillroom import storage

    s = storage.Store(store)
    ref = s.resolve(spec)
    manifest = s.manifest(ref)
    typer.echo(json.dumps(manifest, indent=2))
    # for people, on stderr: stdout stays the manifest's JSON for scripts
    restrictions = storage.manifest_restrictions(manifest)
    typer.echo("usage restrictions:" + ("" if restrictions else " none"), err=True)
    for restriction in restrictions:
        typer.echo(f"  {printable(storage.describe_restriction(restriction))}", err=True)
    if (manifest.get("task") or {}).get("kind") == "generate":
        from ._generation import generation_lines, generation_stats

        for line in generation_lines(generation_stats(s.load(ref))):
            typer.echo(printable(line))
    if failures > 0:
        table = s.load(ref)
        if "error" not in table.column_names:
            return
        failed = [r for r in table.select(["id", "error", "raw"]).to_pylist() if r["error"]]
        typer.echo(f"{len(failed)} failed records" + (f", first {failures}:" if failed else ""))
        for row in failed[:failures]:
            raw = (row["raw"] or "").replace("\n", " ")[:120]
            typer.echo("\t".join(printable(v) for v in (row["id"], row["error"], raw)))


@datasets_app.command("diff")
@handled
def datasets_diff(
    a: Annotated[str, typer.Argument(help="NAME@VERSION")],
    b: Annotated[str, typer.Argument(help="NAME@VERSION")],
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Records added, removed and relabeled between two versions."""
    from stillroom import storage

    s = storage.Store(store)
    left, right = (s.load(s.resolve(spec)) for spec in (a, b))
    labels = [_answers(t) for t in (left, right)]
    old = dict(zip(left.column("id").to_pylist(), labels[0], strict=True))
    new = dict(zip(right.column("id").to_pylist(), labels[1], strict=True))
    shared = old.keys() & new.keys()
    changed = sorted(i for i in shared if old[i] != new[i])
    typer.echo(
        f"{a} -> {b}: {len(new.keys() - old.keys())} added, {len(old.keys() - new.keys())} removed, "
        f"{len(changed)} relabeled, {len(shared) - len(changed)} unchanged"
    )
    both = [i for i in shared if old[i] is not None and new[i] is not None]
    if both:
        same = sum(old[i] == new[i] for i in both)
        typer.echo(
            f"agreement: {same / len(both):.1%} ({same} of the {len(both)} records both answered)"
        )
    for record_id in changed[:20]:
        typer.echo(f"{printable(record_id)}\t{_short(old[record_id])} -> {_short(new[record_id])}")


@datasets_app.command("log")
@handled
def datasets_log(
    name: Annotated[str, typer.Argument(help="NAME")],
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """A dataset's versions, newest first: when, how many rows, what each was made from, its
    message and the command that made it."""
    from stillroom import storage

    for entry in storage.Store(store).log(name):
        if entry["problem"]:
            typer.echo(printable(f"{entry['version']}  ! {entry['problem']}"))
            continue
        made_from = f"  from {entry['parent']}" if entry["parent"] else ""
        typer.echo(
            printable(f"{entry['version']}  {entry['created_at']}  {entry['rows']} rows{made_from}")
        )
        if entry["message"]:
            typer.echo(f"    {printable(entry['message'])}")
        if entry["command"]:
            typer.echo(f"    $ {printable(entry['command'])}")


def _answers(table: Any) -> list[str | None]:
    """What the teacher said per record: the label, or a generate version's completion."""
    for column in ("label", "completion"):
        if column in table.column_names:
            answers: list[str | None] = table.column(column).to_pylist()
            return answers
    return [None] * table.num_rows


def _short(answer: str | None) -> str:
    text = str(answer).replace("\n", " ")
    return printable(text if len(text) <= 60 else text[:57] + "...")


@datasets_app.command("verify")
@handled
def datasets_verify(
    spec: Annotated[str, typer.Argument(help="NAME[@VERSION]")],
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Re-hash a version's files against its manifest; exit 1 when anything was changed."""
    from stillroom import storage

    s = storage.Store(store)
    result = s.verify(s.resolve(spec))
    for note in result.notes:
        typer.echo(f"{result.ref}: note: {printable(note)}", err=True)
    if result.ok:
        typer.echo(f"{result.ref}: ok")
        return
    for problem in result.problems:
        typer.echo(f"{result.ref}: {printable(problem)}", err=True)
    raise typer.Exit(1)


@datasets_app.command("gc")
@handled
def datasets_gc(
    store: StoreOpt = DEFAULT_STORE,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only list what would go")] = False,
    grace_hours: Annotated[
        float, typer.Option(help="keep leftovers changed more recently than this")
    ] = 1.0,
) -> None:
    """Remove what nothing references: folders of commits that never finished, and checkpoints
    of fits that never completed (a finished fit removes its own). Versions, runs, the catalog
    and the cache stay."""
    from stillroom import storage

    grace = grace_hours * 3600
    found = storage.Store(store).gc(grace_s=grace, dry_run=dry_run)
    checkpoints = _local(store) / "checkpoints"
    fits = sorted(p for p in checkpoints.iterdir() if p.is_dir()) if checkpoints.is_dir() else []
    # a fit's checkpoints untouched for the grace period: stopped and never resumed (a running
    # fit writes one every few minutes at most; a completed one removes its own)
    found += storage.remove_stale(fits, grace, dry_run)
    for path, size in found:
        typer.echo(f"{'would remove' if dry_run else 'removed'} {path} ({size / 1e6:.1f} MB)")
    total = sum(size for _, size in found)
    typer.echo(
        f"{len(found)} leftovers, {total / 1e6:.1f} MB{' (dry run)' if dry_run else ' freed'}",
        err=True,
    )


def _local(store: str) -> Path:
    """The store's local files: the store itself, or for one in object storage the default
    local folder (the config's `local_dir`)."""
    from ._config import local_dir

    return local_dir(store)


@datasets_app.command("export")
@handled
def datasets_export(
    spec: Annotated[str, typer.Argument(help="NAME[@VERSION]")],
    folder: Annotated[Path, typer.Argument(help="a new folder")],
    store: StoreOpt = DEFAULT_STORE,
    test_fraction: Annotated[
        float, typer.Option(help="records held out as the test split, as evaluate.test_fraction")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="the split's seed, as evaluate.seed")] = 0,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="take the store and the split from this config"),
    ] = None,
) -> None:
    """Write a version as a folder `datasets.load_dataset(FOLDER)` reads: a Parquet file per
    split and a dataset card the Hub accepts (licence, teacher, prompt hash, terms)."""
    from ._exchange import export_version

    out = export_version(spec, folder, store, config=config, test_fraction=test_fraction, seed=seed)
    typer.echo(f"{out}: load with datasets.load_dataset({str(out)!r})")


@app.command()
@handled
def example(
    name: Annotated[str, typer.Argument(help="the example: banking77, generate, recorded, ...")],
    folder: Annotated[Path, typer.Argument(help="where to write it (examples/ inside it)")],
) -> None:
    """Write a bundled example (its config and the data it reads, with their licences) into a
    folder, to run from there."""
    from ._examples import write_example

    config = write_example(name, folder)
    typer.echo(f"cd {folder} && stillroom run {config}")


class Terminated(KeyboardInterrupt):
    """SIGTERM, as Prefect's workers, Kubernetes and `kill` stop a process: it stops the run the
    way Ctrl-C does, with the same message."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    app()
