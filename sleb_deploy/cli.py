"""The `sleb-deploy` command line: parse, call one stage function, print. Nothing below knows about Typer."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from sleb_deploy.errors import SlebDeployError

app = typer.Typer(
    help="Prune Hugging Face decoders with SLEB, export them to ONNX and TensorRT, benchmark them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=code)


def run_stage(fn: Callable[[], T]) -> T:
    """Call a stage; a user-facing error becomes one line on stderr and its exit code."""
    try:
        return fn()
    except SlebDeployError as err:
        raise _fail(str(err), err.exit_code) from None
    except KeyboardInterrupt:
        raise _fail("interrupted", 130) from None


@contextmanager
def candidate_progress(quiet: bool) -> Iterator[Callable[[int, int, int, int], None] | None]:
    """A rich bar on stderr for SLEB phases and candidates (none with --quiet)."""
    if quiet:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    tasks: dict[int, Any] = {}

    def hook(phase: int, phases: int, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(f"phase {phase + 1}/{phases} candidates", total=total)
        bar.update(tasks[phase], completed=done)

    with bar:
        yield hook


def _blocks(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.replace(" ", "").strip("[]").split(",") if v]
    except ValueError:
        raise _fail(f"--blocks {value!r} is not a comma-separated list of block indices, e.g. 3,7,12", 2) from None


@app.command()
def prune(
    model: Annotated[str, typer.Option(help="HF directory, hub id, or built-in alias")] = "smollm2-135m",
    out: Annotated[Path | None, typer.Option(help="output directory [default: export/<model>/hf-pruned]")] = None,
    calib: Annotated[
        str, typer.Option(help="calibration text: a .txt path, wiki-articles, wiki-summaries, wikitext2, c4")
    ] = "wiki-articles",
    windows: Annotated[int, typer.Option(help="number of calibration windows")] = 8,
    seq_len: Annotated[int, typer.Option(help="tokens per window (calibration and evaluation)")] = 256,
    seed: Annotated[int, typer.Option(help="seed for drawing calibration windows")] = 0,
    remove: Annotated[int | None, typer.Option(help="number of blocks to remove")] = None,
    ratio: Annotated[float | None, typer.Option(help="fraction of blocks to remove [default: 0.2]")] = None,
    metric: Annotated[str, typer.Option(help="sleb, or the baseline block-influence (ShortGPT)")] = "sleb",
    blocks: Annotated[str | None, typer.Option(help="remove exactly these blocks, e.g. 3,7,12 (no search)")] = None,
    scorer: Annotated[str, typer.Option(help="cached (default) or naive (whole model per candidate)")] = "cached",
    early_barrier: Annotated[int, typer.Option(help="first alive blocks never removed")] = 1,
    latter_barrier: Annotated[int, typer.Option(help="last alive blocks never removed")] = 1,
    eval_text: Annotated[str, typer.Option(help="perplexity text (same choices as --calib)")] = "wiki-summaries",
    eval_windows: Annotated[int, typer.Option(help="number of evaluation windows")] = 16,
    batch_size: Annotated[int, typer.Option(help="windows per forward")] = 1,
    dtype: Annotated[str, typer.Option(help="auto (checkpoint's), fp32, fp16, bf16")] = "auto",
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda")] = "cpu",
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted run from its last phase")] = False,
    force: Annotated[bool, typer.Option("--force", help="replace an existing output directory")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout, nothing else")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
) -> None:
    """Remove transformer blocks with SLEB and save a standard Hugging Face checkpoint + sleb.json."""
    from sleb_deploy.prune.stage import PruneConfig
    from sleb_deploy.prune.stage import prune as prune_stage

    cfg = PruneConfig(
        model=model, out=out, calib=calib, windows=windows, seq_len=seq_len, seed=seed, remove=remove, ratio=ratio,
        metric=metric, blocks=_blocks(blocks), scorer=scorer, early_barrier=early_barrier,
        latter_barrier=latter_barrier, eval_text=eval_text, eval_windows=eval_windows, batch_size=batch_size,
        dtype=dtype, device=device, resume=resume, force=force,
    )  # fmt: skip
    with candidate_progress(quiet or as_json) as hook:
        result = run_stage(lambda: prune_stage(cfg, on_candidate=hook))
    if as_json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
        return
    ppl = result.perplexity
    typer.echo(f"removed blocks (original indices, in order): {result.removed}")
    typer.echo(f"blocks: {result.num_blocks} -> {len(result.kept)}")
    typer.echo(
        f"perplexity on {ppl['eval']['source']} ({ppl['dense']['tokens']} tokens): "
        f"dense {ppl['dense']['ppl']:.3f} -> pruned {ppl['pruned']['ppl']:.3f}"
    )
    typer.echo(f"saved {result.out} in {result.seconds:.0f} s")


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Option(help="HF directory, hub id, or built-in alias")] = "smollm2-135m",
    text: Annotated[
        str, typer.Option(help="a .txt path, wiki-articles, wiki-summaries, wikitext2, c4")
    ] = "wiki-summaries",
    windows: Annotated[int, typer.Option(help="number of windows")] = 16,
    seq_len: Annotated[int, typer.Option(help="tokens per window")] = 256,
    batch_size: Annotated[int, typer.Option(help="windows per forward")] = 1,
    dtype: Annotated[str, typer.Option(help="auto, fp32, fp16, bf16")] = "auto",
    device: Annotated[str, typer.Option(help="torch device")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
) -> None:
    """Perplexity of a model on a text source (consecutive windows from its start)."""
    from sleb_deploy.evaluate import eval_perplexity
    from sleb_deploy.models.load import load_model, resolve_model

    def run() -> dict[str, Any]:
        source = resolve_model(model)
        m, tok = load_model(source, dtype, device)
        ppl, spec = eval_perplexity(m, tok, text, windows, seq_len, batch_size)
        return {"model": source.to_json(), "text": spec, **ppl.to_json()}

    result = run_stage(run)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        typer.echo(f"perplexity {result['ppl']:.4f} on {result['tokens']} tokens of {text}")


def main() -> None:  # pragma: no cover - console entry point
    app()
