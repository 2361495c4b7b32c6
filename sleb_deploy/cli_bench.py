"""`sleb-deploy bench` and `sleb-deploy report`: parse, call the bench stage, print. Registered in `cli.py`:

    app.command("bench")(bench_cmd)
    app.command("report")(report_cmd)

Defaults come from `BenchConfig`, so the CLI and the stage cannot disagree about them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from sleb_deploy.bench.records import BenchConfig

_D = BenchConfig()


def _sizes(value: str, flag: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.replace(" ", "").strip("[]").split(",") if v)
    except ValueError:
        typer.echo(f"error: {flag} {value!r} is not a comma-separated list of integers, e.g. 1,2,4", err=True)
        raise typer.Exit(code=2) from None
    return sizes


def _csv(sizes: tuple[int, ...]) -> str:
    return ",".join(str(s) for s in sizes)


@contextmanager
def sweep_progress(quiet: bool) -> Iterator[Callable[[int, int, str], None] | None]:
    """A rich bar over the sweep's cells on a terminal, a line per finished cell in logs, nothing if quiet."""
    if quiet:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        started = time.perf_counter()
        last = {"done": -1}

        def line(done: int, total: int, what: str) -> None:
            if done != last["done"] and done > 0:
                last["done"] = done
                typer.echo(f"[{done}/{total}] {what} ({time.perf_counter() - started:.0f} s)", err=True)

        yield line
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    task: dict[str, Any] = {}

    def hook(done: int, total: int, what: str) -> None:
        if "id" not in task:
            task["id"] = bar.add_task(what, total=total)
        bar.update(task["id"], completed=done, total=total, description=what)

    with bar:
        yield hook


def bench_cmd(
    workspace: Annotated[
        Path, typer.Option(help="a workspace written by `sleb-deploy export` (export/<name>)")
    ] = _D.workspace,
    out: Annotated[Path | None, typer.Option(help="report directory [default: bench/<name>]")] = _D.out,
    backends: Annotated[
        str, typer.Option(help="auto, or a comma list of ort-cpu, ort-cuda, tensorrt, torch-cpu, torch-cuda")
    ] = _D.backends,
    batch_sizes: Annotated[str, typer.Option(help="batch sizes of the short row")] = _csv(_D.batch_sizes),
    prompt_len: Annotated[int, typer.Option(help="prompt tokens of the short row")] = _D.prompt_len,
    new_tokens: Annotated[int, typer.Option(help="new tokens per generation (no stop on EOS)")] = _D.new_tokens,
    long_prompt_len: Annotated[
        int, typer.Option(help="prompt tokens of the long-context row (0: no long row)")
    ] = _D.long_prompt_len,
    long_new_tokens: Annotated[int, typer.Option(help="new tokens in the long row")] = _D.long_new_tokens,
    long_batch_sizes: Annotated[str, typer.Option(help="batch sizes of the long row")] = _csv(_D.long_batch_sizes),
    text: Annotated[str, typer.Option(help="prompt text: a .txt path, wiki-summaries, wiki-articles")] = _D.text,
    warmup: Annotated[int, typer.Option(help="untimed generations per variant before each cell")] = _D.warmup,
    min_reps: Annotated[int, typer.Option(help="fewest interleaved rounds per cell")] = _D.min_reps,
    max_reps: Annotated[int, typer.Option(help="most interleaved rounds per cell")] = _D.max_reps,
    seconds_per_cell: Annotated[
        float, typer.Option(help="time budget of a cell's rounds (between --min-reps and --max-reps)")
    ] = _D.seconds_per_cell,
    threads: Annotated[
        int, typer.Option(help="intra-op threads of ONNX Runtime's global pool and torch (0: defaults)")
    ] = _D.threads,
    ideal: Annotated[
        bool, typer.Option(help="time a 1-block probe for the ideal speedup (exported once per workspace)")
    ] = _D.ideal,
    harness_check: Annotated[
        bool, typer.Option(help="time our ORT decode step against a bare session.run")
    ] = _D.harness_check,
    force: Annotated[bool, typer.Option("--force", help="replace an existing report directory")] = _D.force,
    as_json: Annotated[bool, typer.Option("--json", help="print bench.json on stdout, nothing else")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress output")] = False,
) -> None:
    """Time dense vs pruned (prefill, decode, end to end) per batch size on every available backend."""
    from sleb_deploy.bench.stage import run_bench
    from sleb_deploy.cli import run_stage  # here, not at the top: cli.py imports this module to register it

    cfg = BenchConfig(
        workspace=workspace, out=out, backends=backends, batch_sizes=_sizes(batch_sizes, "--batch-sizes"),
        prompt_len=prompt_len, new_tokens=new_tokens, long_prompt_len=long_prompt_len,
        long_new_tokens=long_new_tokens, long_batch_sizes=_sizes(long_batch_sizes, "--long-batch-sizes"), text=text,
        warmup=warmup, min_reps=min_reps, max_reps=max_reps, seconds_per_cell=seconds_per_cell, threads=threads,
        ideal=ideal, harness_check=harness_check, force=force,
    )  # fmt: skip
    silent = quiet or as_json

    def notify(message: str) -> None:
        if not silent:
            typer.echo(message, err=True)

    with sweep_progress(silent) as hook:
        manifest = run_stage(lambda: run_bench(cfg, on_progress=hook, notify=notify))
    if as_json:
        sys.stdout.write(json.dumps(manifest.to_json()) + "\n")
    else:
        ran = [b.key for b in manifest.backends if b.status != "skipped"]
        typer.echo(f"benchmarked {', '.join(ran)} in {manifest.seconds:.0f} s -> {manifest.directory}/bench.md")
    if manifest.partial:
        typer.echo(f"error: interrupted; partial results written to {manifest.directory}", err=True)
        raise typer.Exit(code=130)


def report_cmd(
    bench_json: Annotated[Path, typer.Argument(help="a bench.json written by `sleb-deploy bench` (or its folder)")],
) -> None:
    """Render bench.csv, bench.md and the plots again from a bench.json."""
    from sleb_deploy.bench.stage import render_report
    from sleb_deploy.cli import run_stage

    for path in run_stage(lambda: render_report(bench_json)):
        typer.echo(str(path))
