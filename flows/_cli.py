"""The `stillroom` command line: run, label, train, evaluate, estimate, datasets.

Bad input becomes one line on stderr and exit code 2; `--debug` keeps the traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# the CLI reports errors itself, in one line; --debug shows Prefect's logs and tracebacks
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Distil a teacher LLM into small, cheap students.",
)
datasets_app = typer.Typer(no_args_is_help=True, help="List, show and verify dataset versions.")
app.add_typer(datasets_app, name="datasets")

_state = {"debug": False}

ConfigArg = Annotated[Path, typer.Argument(help="the YAML config")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="override a key: --set teacher.model=M")
]


def _user_errors() -> tuple[type[BaseException], ...]:
    from stillroom import labelers
    from stillroom import storage
    from ._config import ConfigError
    from ._ingest import InputError
    from ._pipeline import SetupError

    return (ConfigError, InputError, SetupError, labelers.LabelerError, storage.StoreError)


def _fail(message: str) -> None:
    typer.echo(f"stillroom: error: {message}", err=True)
    raise typer.Exit(2)


def _guard(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run fn; user errors become one line on stderr and exit 2."""
    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt:
        typer.echo(
            "stillroom: interrupted. Every answer received so far is in the cache: "
            "run the same command again to finish without paying for them twice.",
            err=True,
        )
        raise typer.Exit(130) from None
    except _user_errors() as exc:
        if _state["debug"]:
            raise
        _fail(str(exc))


def _config(path: Path, overrides: list[str] | None, check_data: bool = True) -> Any:
    from ._config import load_config
    from ._pipeline import preflight

    config = _guard(load_config, path, overrides or [])
    if check_data:
        _guard(preflight, config)
    return config


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="show tracebacks and Prefect logs")
    ] = False,
) -> None:
    _state["debug"] = debug
    if debug:
        os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"


def _print_results(report_path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    report = json.loads(report_path.read_text())
    lab, console = report["labeling"], Console()
    teacher_acc = report["teacher"]["accuracy_vs_gold"]
    console.print(
        f"[bold]{report['name']}[/]  dataset {report['dataset']['name']}@{report['dataset']['version']}"
        f" ({report['dataset']['rows']} rows)\n"
        f"labeling: {lab['labeled']} labeled, {lab['failed']} failed; {lab['teacher_calls']} teacher"
        f" calls, {lab['cache_hits']} cache hits, {lab['retries']} retries\n"
        f"teacher accuracy vs gold (held-out): "
        + (f"{100 * teacher_acc:.1f}%" if teacher_acc is not None else "n/a")
    )
    table = Table("student", "agree", "acc/gold", "KL", "ECE", "train s", "ms/1k", "MB")
    for s in report["students"]:
        pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        table.add_row(
            s["kind"],
            pct(s["agreement"]),
            pct(s["accuracy_vs_gold"]),
            f"{s['kl_teacher_student']:.3f}",
            f"{s['ece']:.3f}",
            f"{s['train_s']:.2f}",
            f"{s['predict_ms_per_1k']:.1f}",
            f"{s['size_bytes'] / 1e6:.2f}",
        )
    console.print(table)
    for s in report["students"]:
        if s.get("f1_micro_vs_teacher") is not None:
            console.print(
                f"{s['kind']}: F1 vs teacher micro {s['f1_micro_vs_teacher']:.3f}, "
                f"macro {s['f1_macro_vs_teacher']:.3f} (multi-label; agree = same label set)"
            )
    if lab["teacher_calls"]:
        per_1k = 1000 / lab["teacher_calls"]
        console.print(
            f"teacher: ${lab['cost_usd'] * per_1k:.4f}, {lab['wall_s'] * per_1k:.1f} s per 1k records"
            " (students: $0, ms/1k above)"
        )
    else:
        console.print("teacher: every answer came from the cache, nothing was paid in this run")
    typer.echo(str(report_path))


@app.command()
def run(
    config: ConfigArg,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="run folder")] = None,
) -> None:
    """Ingest -> label -> commit -> train -> evaluate; prints the results and report.json's path."""
    cfg = _config(config, set_)
    from ._flow import distill

    report_path = _guard(distill, cfg, str(out) if out else None)
    _print_results(Path(report_path))


@app.command()
def label(config: ConfigArg, set_: SetOpt = None) -> None:
    """Ingest + label + commit; prints NAME@VERSION."""
    cfg = _config(config, set_)
    from ._flow import label_dataset

    ref, labeling = _guard(label_dataset, cfg)
    rep = labeling["report"]
    typer.echo(
        f"{rep['labeled']} labeled, {rep['failed']} failed, {rep['teacher_calls']} teacher calls, "
        f"{rep['cache_hits']} cache hits, ${rep['cost_usd']:.4f}",
        err=True,
    )
    typer.echo(str(ref))


@app.command()
def train(
    config: ConfigArg,
    dataset: Annotated[str, typer.Option("--dataset", help="NAME[@VERSION]")],
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="run folder")] = None,
) -> None:
    """Train the configured students on a labeled version; prints the run folder."""
    cfg = _config(config, set_, check_data=False)
    from ._flow import train as train_flow

    typer.echo(str(_guard(train_flow, cfg, dataset, str(out) if out else None)))


@app.command()
def evaluate(
    config: ConfigArg,
    dataset: Annotated[str, typer.Option("--dataset", help="NAME[@VERSION]")],
    set_: SetOpt = None,
    run_dir: Annotated[Path | None, typer.Option("--run", help="a folder made by `train`")] = None,
) -> None:
    """Measure trained students against the teacher (training them first when --run is not given)."""
    cfg = _config(config, set_, check_data=False)
    from ._flow import evaluate_run
    from ._flow import train as train_flow

    folder = run_dir or _guard(train_flow, cfg, dataset, None)
    _print_results(Path(_guard(evaluate_run, cfg, str(folder))))


@app.command()
def estimate(config: ConfigArg, set_: SetOpt = None) -> None:
    """Records, tokens and cost the teacher would be paid for, before paying anything."""
    cfg = _config(config, set_, check_data=False)
    from ._estimate import estimate as do_estimate

    result = _guard(do_estimate, cfg)
    for key, value in result.items():
        typer.echo(f"{key:>22}: {value}")


@app.command()
def spend(
    store: Annotated[str, typer.Option(help="the store folder")] = ".stillroom",
    name: Annotated[str | None, typer.Option(help="only this config name")] = None,
) -> None:
    """The spend ledger: every paid teacher call, summed by config name and model."""
    from stillroom import storage

    path = Path(store) / "cache.sqlite"
    if not path.exists():
        typer.echo(f"no teacher calls recorded in {store}")
        return
    with storage.ResponseCache(path) as cache:
        rows = cache.spend(name)
    total = 0.0
    for row in rows:
        total += row["cost_usd"]
        typer.echo(
            f"{row['tag'] or '-':<24} {row['model'] or '-':<24} {row['calls']:>8} calls "
            f"{row['input_tokens']:>12} in {row['output_tokens']:>10} out  ${row['cost_usd']:.4f}"
        )
    typer.echo(f"total: ${total:.4f}")


@datasets_app.command("list")
def datasets_list(
    store: Annotated[str, typer.Option(help="the store folder")] = ".stillroom",
) -> None:
    """Every dataset version in the store."""
    from stillroom import storage

    rows = _guard(storage.Store(store).list)
    if not rows:
        typer.echo(f"no datasets in {store}")
    for row in rows:
        typer.echo(
            f"{row['dataset']:<40} {row['rows']:>8} rows  {row['licence']:<20} {row['created_at']}"
        )


@datasets_app.command("show")
def datasets_show(
    spec: Annotated[str, typer.Argument(help="NAME[@VERSION]")],
    store: Annotated[str, typer.Option(help="the store folder")] = ".stillroom",
    failures: Annotated[int, typer.Option(help="also list up to N failed records")] = 0,
) -> None:
    """A version's manifest (failures by reason included); --failures N lists failed records with
    the teacher's raw answer."""
    from stillroom import storage

    s = storage.Store(store)
    ref = _guard(s.resolve, spec)
    typer.echo(json.dumps(_guard(s.manifest, ref), indent=2))
    if failures > 0:
        table = _guard(s.load, ref)
        if "error" not in table.column_names:
            return
        failed = [r for r in table.select(["id", "error", "raw"]).to_pylist() if r["error"]]
        typer.echo(f"{len(failed)} failed records" + (f", first {failures}:" if failed else ""))
        for row in failed[:failures]:
            raw = (row["raw"] or "").replace("\n", " ")[:120]
            typer.echo(f"{row['id']}\t{row['error']}\t{raw}")


@datasets_app.command("diff")
def datasets_diff(
    a: Annotated[str, typer.Argument(help="NAME@VERSION")],
    b: Annotated[str, typer.Argument(help="NAME@VERSION")],
    store: Annotated[str, typer.Option(help="the store folder")] = ".stillroom",
) -> None:
    """Records added, removed and relabeled between two versions."""
    from stillroom import storage

    s = storage.Store(store)
    left, right = (_guard(s.load, _guard(s.resolve, spec)) for spec in (a, b))
    labels = [
        t.column("label").to_pylist() if "label" in t.column_names else [None] * t.num_rows
        for t in (left, right)
    ]
    old = dict(zip(left.column("id").to_pylist(), labels[0], strict=True))
    new = dict(zip(right.column("id").to_pylist(), labels[1], strict=True))
    changed = sorted(i for i in old.keys() & new.keys() if old[i] != new[i])
    typer.echo(
        f"{a} -> {b}: {len(new.keys() - old.keys())} added, {len(old.keys() - new.keys())} removed, "
        f"{len(changed)} relabeled, {len(old.keys() & new.keys()) - len(changed)} unchanged"
    )
    for record_id in changed[:20]:
        typer.echo(f"{record_id}\t{old[record_id]} -> {new[record_id]}")


@datasets_app.command("verify")
def datasets_verify(
    spec: Annotated[str, typer.Argument(help="NAME[@VERSION]")],
    store: Annotated[str, typer.Option(help="the store folder")] = ".stillroom",
) -> None:
    """Re-hash a version's files against its manifest; exit 1 when anything was changed."""
    from stillroom import storage

    s = storage.Store(store)
    result = _guard(s.verify, _guard(s.resolve, spec))
    if result.ok:
        typer.echo(f"{result.ref}: ok")
        return
    for problem in result.problems:
        typer.echo(f"{result.ref}: {problem}", err=True)
    raise typer.Exit(1)


def main() -> None:
    app()
