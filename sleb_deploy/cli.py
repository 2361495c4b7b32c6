"""The `sleb-deploy` command line: parse, call one stage function, print. Nothing below knows about Typer."""

from __future__ import annotations

import json
import sys
import time
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

# Shared by `onnx` and `export`.
LastLogitsOnly = Annotated[
    bool,
    typer.Option(
        help="logits for the last position only: prefill skips the vocabulary head for the other prompt tokens"
    ),
]


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
        raise _fail("interrupted; no output was written", 130) from None


@contextmanager
def candidate_progress(quiet: bool) -> Iterator[Callable[[int, int, int, int], None] | None]:
    """Progress of SLEB phases on stderr: a rich bar on a terminal, a line per phase in logs, none if quiet."""
    if quiet:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        started = time.perf_counter()

        def line(phase: int, phases: int, done: int, total: int) -> None:
            if done == total:
                elapsed = time.perf_counter() - started
                typer.echo(f"phase {phase + 1}/{phases}: {total} candidates scored ({elapsed:.0f} s)", err=True)

        yield line
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
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
    from sleb_deploy.models.load import load_model, load_tokenizer, resolve_model

    def run() -> dict[str, Any]:
        source = resolve_model(model)
        tok = load_tokenizer(source)
        m = load_model(source, dtype, device)
        ppl, spec = eval_perplexity(m, tok, text, windows, seq_len, batch_size)
        return {"model": source.to_json(), "text": spec, **ppl.to_json()}

    result = run_stage(run)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        typer.echo(f"perplexity {result['ppl']:.4f} on {result['tokens']} tokens of {text}")


@app.command("onnx")
def onnx_cmd(
    model: Annotated[
        str, typer.Option(help="HF directory (dense or pruned), hub id, or built-in alias")
    ] = "smollm2-135m",
    out: Annotated[Path | None, typer.Option(help="output directory [default: export/<model>/onnx]")] = None,
    dtype: Annotated[str, typer.Option(help="fp32, fp16 or bf16 (the engine's precision follows it)")] = "fp32",
    variant: Annotated[str, typer.Option(help="opset23 (ONNX Attention, faster) or opset18")] = "opset23",
    last_logits_only: LastLogitsOnly = False,
    external_data: Annotated[
        bool | None, typer.Option(help="weights in model.onnx_data [default: only over 2 GB]")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing output directory")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
) -> None:
    """Export one checkpoint to ONNX with KV-cache I/O and validate it against PyTorch."""
    from sleb_deploy.export.stage import ExportConfig, export_checkpoint
    from sleb_deploy.prune.stage import model_name

    cfg = ExportConfig(dtype, variant, last_logits_only, external_data, None, force)
    target = out if out is not None else Path("export") / model_name(model) / "onnx"
    result = run_stage(lambda: export_checkpoint(model, target, cfg))
    if as_json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
        return
    _print_export("model", result)


def _print_export(label: str, result: Any) -> None:
    v = result.validation
    check = (
        f"ORT vs torch max |diff| logits {v['max_logits']:.2e}, KV {v['max_kv']:.2e} (tol {v['tolerance']:g})"
        if v.get("status") == "passed"
        else f"validation {v.get('status')}: {v.get('reason', '')}"
    )
    mb = sum(result.files.get(f, 0) for f in ("model.onnx", "model.onnx_data")) / 1e6
    typer.echo(f"{label}: {result.graph['num_layers']} blocks, {mb:.0f} MB -> {result.out}; {check}")


@app.command("export")
def export_cmd(
    model: Annotated[str, typer.Option(help="HF directory, hub id, or built-in alias")] = "smollm2-135m",
    name: Annotated[str | None, typer.Option(help="workspace name [default: the model's name]")] = None,
    pruned: Annotated[Path | None, typer.Option(help="export this pruned checkpoint instead of pruning")] = None,
    remove: Annotated[int | None, typer.Option(help="number of blocks to remove")] = None,
    ratio: Annotated[float | None, typer.Option(help="fraction of blocks to remove [default: 0.2]")] = None,
    blocks: Annotated[str | None, typer.Option(help="remove exactly these blocks, e.g. 3,7,12")] = None,
    metric: Annotated[str, typer.Option(help="sleb or block-influence")] = "sleb",
    calib: Annotated[str, typer.Option(help="calibration text (see prune --help)")] = "wiki-articles",
    windows: Annotated[int, typer.Option(help="calibration windows")] = 8,
    seq_len: Annotated[int, typer.Option(help="tokens per window")] = 256,
    eval_text: Annotated[str, typer.Option(help="perplexity text (see prune --help)")] = "wiki-summaries",
    eval_windows: Annotated[int, typer.Option(help="perplexity windows")] = 16,
    dtype: Annotated[str, typer.Option(help="ONNX precision: fp32, fp16 or bf16")] = "fp32",
    variant: Annotated[str, typer.Option(help="opset23 or opset18")] = "opset23",
    last_logits_only: LastLogitsOnly = False,
    engines: Annotated[str, typer.Option(help="auto (TensorRT if importable), none, tensorrt, rtx")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="redo and replace existing outputs")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress output")] = False,
) -> None:
    """Prune, export dense and pruned to ONNX, validate both, and build TensorRT engines when possible."""
    from sleb_deploy.export.stage import ExportConfig
    from sleb_deploy.pipeline import PipelineConfig, run_pipeline
    from sleb_deploy.prune.stage import PruneConfig

    cfg = PipelineConfig(
        prune=PruneConfig(model=model, calib=calib, windows=windows, seq_len=seq_len, remove=remove, ratio=ratio,
                          metric=metric, blocks=_blocks(blocks), eval_text=eval_text, eval_windows=eval_windows),
        export=ExportConfig(dtype=dtype, variant=variant, last_logits_only=last_logits_only),
        name=name, pruned_checkpoint=pruned, engines=engines, force=force,
    )  # fmt: skip
    silent = quiet or as_json

    def notify(message: str) -> None:
        if not silent:
            typer.echo(message, err=True)

    with candidate_progress(silent) as hook:
        result = run_stage(lambda: run_pipeline(cfg, on_candidate=hook, notify=notify))
    if as_json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
        return
    p = result.pruning
    ppl = p["perplexity"]
    typer.echo(f"removed blocks {p['removal_order']}: {p['num_blocks']} -> {p['num_blocks_after']}")
    typer.echo(
        f"perplexity ({ppl['eval']['source']}): dense {ppl['dense']['ppl']:.3f} -> pruned {ppl['pruned']['ppl']:.3f}"
    )
    _print_export("dense ", result.dense)
    _print_export("pruned", result.pruned)
    typer.echo(f"engines: {result.engines.get('note') or result.engines}")


@app.command("build")
def build_cmd(
    onnx_dir: Annotated[Path, typer.Option("--onnx", help="an ONNX directory written by `sleb-deploy onnx`/`export`")],
    out: Annotated[Path, typer.Option(help="engine directory to write")],
    backend: Annotated[str, typer.Option(help="auto (tensorrt, else tensorrt_rtx), tensorrt, tensorrt_rtx")] = "auto",
    max_batch: Annotated[int, typer.Option(help="largest batch of both profiles")] = 1,
    max_input_len: Annotated[int, typer.Option(help="longest prompt (prefill profile)")] = 512,
    max_context_len: Annotated[int, typer.Option(help="longest past + new tokens (decode profile)")] = 1024,
    timing_cache: Annotated[Path | None, typer.Option(help="seed timing cache (e.g. the dense build's)")] = None,
    triton: Annotated[Path | None, typer.Option(help="also write a Triton model repository here")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace existing outputs")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
) -> None:
    """Build a TensorRT engine (prefill + decode profiles) from an exported ONNX directory."""
    from sleb_deploy.engines import BuildConfig, build_engine, write_triton_repository

    def run() -> Any:
        cfg = BuildConfig(max_batch=max_batch, max_input_len=max_input_len, max_context_len=max_context_len)
        built = build_engine(onnx_dir, out, cfg, backend=backend, timing_cache=timing_cache, force=force)
        if triton is not None:
            write_triton_repository(out, triton, force=force)
        return built

    built = run_stage(run)
    if as_json:
        sys.stdout.write(json.dumps(built.to_json()) + "\n")
        return
    typer.echo(
        f"{built.backend} {built.backend_version}: {built.num_layers} blocks, {built.plan_bytes / 1e6:.0f} MB plan "
        f"in {built.build_seconds:.0f} s -> {built.out_dir}"
    )


def main() -> None:  # pragma: no cover - console entry point
    app()
