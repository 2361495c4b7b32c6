"""The `sleb-deploy` command line: parse, call one stage function, print. Nothing below knows about Typer."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from sleb_deploy.config import (
    DEFAULT_RATIO,
    EngineBackend,
    ExportConfig,
    GraphDtype,
    KvCache,
    LoadDtype,
    Metric,
    PruneConfig,
    Scorer,
    StaticAttention,
    Variant,
    WindowBos,
)
from sleb_deploy.engines.profiles import BuildConfig
from sleb_deploy.errors import SlebDeployError

try:  # Typer 0.2x carries its own click; older ones use click itself
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors  # type: ignore[no-redef]


class _OneLineErrors(typer.core.TyperGroup):
    """Usage errors (a bad choice, a missing option) as one ``error: ...`` line on stderr with click's exit
    code 2, like every other user mistake, instead of a framed usage box."""

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:  # fmt: skip
        if not standalone_mode:
            return super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as err:
            err.show()
            sys.exit(err.exit_code)
        except click_errors.ClickException as err:
            typer.echo(f"error: {err.format_message()}", err=True)
            sys.exit(err.exit_code)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    help="Prune Hugging Face decoders with SLEB, export them to ONNX and TensorRT, benchmark them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")
P, E, BC = PruneConfig(), ExportConfig(), BuildConfig()  # the defaults every option below shows
METRIC, SCORER, LOAD_DTYPE, WINDOW_BOS = Metric(P.metric), Scorer(P.scorer), LoadDtype(P.dtype), WindowBos(P.window_bos)
GRAPH_DTYPE, VARIANT, KV_CACHE = GraphDtype(E.dtype), Variant(E.variant), KvCache(E.kv_cache)

# Options shared by several commands, written once.
ModelOpt = Annotated[str, typer.Option(help="HF directory, hub id, or built-in alias")]
RemoveOpt = Annotated[int | None, typer.Option(help="number of blocks to remove")]
RatioOpt = Annotated[float | None, typer.Option(help=f"fraction of blocks to remove [default: {DEFAULT_RATIO}]")]
BlocksOpt = Annotated[str | None, typer.Option(help="remove exactly these blocks, e.g. 3,7,12 (no search)")]
MetricOpt = Annotated[Metric, typer.Option(help="sleb, or the baseline block-influence (ShortGPT)")]
CalibOpt = Annotated[
    str, typer.Option(help="calibration text: a .txt path, wiki-articles, wiki-summaries, wikitext2, c4")
]
WindowsOpt = Annotated[int, typer.Option(help="number of calibration windows")]
SeqLenOpt = Annotated[int, typer.Option(help="tokens per window (calibration and evaluation)")]
EvalTextOpt = Annotated[str, typer.Option(help="perplexity text (same choices as --calib)")]
EvalWindowsOpt = Annotated[int, typer.Option(help="number of evaluation windows")]
WindowBosOpt = Annotated[
    WindowBos,
    typer.Option(
        help="windows start with the tokenizer's BOS: always, never (one token stream, as the official SLEB code), "
        "or auto (per family: Gemma always, others never)"
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="torch device for pruning and evaluation, e.g. cpu or cuda")]
GraphDtypeOpt = Annotated[GraphDtype, typer.Option(help="ONNX precision (the engine's precision follows it)")]
VariantOpt = Annotated[Variant, typer.Option(help="opset23 (ONNX Attention, faster) or opset18")]
LastLogitsOnly = Annotated[
    bool,
    typer.Option(
        help="logits for the last position only: prefill skips the vocabulary head for the other prompt tokens"
    ),
]
KvCacheOpt = Annotated[
    KvCache,
    typer.Option(
        help="KV-cache contract: concat (Optimum's, present = concat(past, new)) or static (preallocated "
        "buffers updated in place, opset 24; see engines/README.md)"
    ),
]
MaxBatchOpt = Annotated[int, typer.Option(help="largest batch of both engine profiles")]
OptBatchOpt = Annotated[int | None, typer.Option(help="batch TensorRT tunes for [default: max batch]")]
MaxInputOpt = Annotated[int, typer.Option(help="longest prompt (engine prefill profile)")]
MaxContextOpt = Annotated[int, typer.Option(help="longest past + new tokens (engine decode profile)")]
OptLevelOpt = Annotated[int | None, typer.Option(help="TensorRT builder optimization level 0..5 [default: 3]")]
WorkspaceOpt = Annotated[int | None, typer.Option(help="TensorRT workspace limit in MiB [default: no limit]")]
ForceOpt = Annotated[bool, typer.Option("--force", help="replace existing outputs")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object on stdout, nothing else")]
ValidateOpt = Annotated[
    bool,
    typer.Option(
        "--validate/--no-validate",
        help="compare ONNX Runtime with PyTorch before writing (--no-validate: a big model on a small machine; "
        "export.json then says the check was skipped)",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="no progress output")]


def _build_config(
    max_batch: int, opt_batch: int | None, max_input_len: int, max_context_len: int, opt_level: int | None,
    workspace_mib: int | None,
) -> BuildConfig:  # fmt: skip
    return BuildConfig(
        max_batch=max_batch, opt_batch=opt_batch, max_input_len=max_input_len, max_context_len=max_context_len,
        builder_optimization_level=opt_level, workspace_mib=workspace_mib,
    )  # fmt: skip


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
    model: ModelOpt = P.model,
    out: Annotated[Path | None, typer.Option(help="output directory [default: export/<model>/hf-pruned]")] = None,
    calib: CalibOpt = P.calib,
    windows: WindowsOpt = P.windows,
    seq_len: SeqLenOpt = P.seq_len,
    seed: Annotated[int, typer.Option(help="seed for drawing calibration windows")] = P.seed,
    remove: RemoveOpt = None,
    ratio: RatioOpt = None,
    metric: MetricOpt = METRIC,
    blocks: BlocksOpt = None,
    scorer: Annotated[
        Scorer,
        typer.Option(
            help="auto (from the memory plan), streamed (blocks read from the checkpoint one at a time), cached "
            "(whole model loaded), or naive (whole model per candidate)"
        ),
    ] = SCORER,
    max_memory: Annotated[
        str | None,
        typer.Option(help="memory budget of the SLEB search, e.g. 8GiB or 80GB (default: the free memory of --device)"),
    ] = P.max_memory,
    early_barrier: Annotated[int, typer.Option(help="first alive blocks never removed")] = P.early_barrier,
    latter_barrier: Annotated[int, typer.Option(help="last alive blocks never removed")] = P.latter_barrier,
    eval_text: EvalTextOpt = P.eval_text,
    eval_windows: EvalWindowsOpt = P.eval_windows,
    batch_size: Annotated[int, typer.Option(help="windows per forward")] = P.batch_size,
    window_bos: WindowBosOpt = WINDOW_BOS,
    dtype: Annotated[LoadDtype, typer.Option(help="weights' precision while pruning")] = LOAD_DTYPE,
    device: DeviceOpt = P.device,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted run from its last phase")] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
) -> None:
    """Remove transformer blocks with SLEB and save a standard Hugging Face checkpoint + sleb.json."""
    from sleb_deploy.prune.stage import default_out
    from sleb_deploy.prune.stage import prune as prune_stage

    cfg = PruneConfig(
        model=model, out=out, calib=calib, windows=windows, seq_len=seq_len, seed=seed, remove=remove, ratio=ratio,
        metric=metric.value, blocks=_blocks(blocks), scorer=scorer.value, early_barrier=early_barrier,
        latter_barrier=latter_barrier, eval_text=eval_text, eval_windows=eval_windows, batch_size=batch_size,
        window_bos=window_bos.value, dtype=dtype.value, device=device, resume=resume, force=force,
        max_memory=max_memory,
    )  # fmt: skip

    def show_plan(plan: Any) -> None:
        if not (quiet or as_json):
            typer.echo(plan.summary(), err=True)

    with candidate_progress(quiet or as_json) as hook:
        result = run_stage(lambda: prune_stage(cfg, on_candidate=hook, on_plan=show_plan))
    if as_json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
        return
    ppl = result.perplexity
    typer.echo(f"removed blocks (original indices, in order): {result.removal_order}")
    typer.echo(f"blocks: {result.model.num_blocks} -> {result.num_blocks_after}")
    typer.echo(
        f"perplexity on {ppl['eval']['source']} ({ppl['dense']['tokens']} tokens): "
        f"dense {ppl['dense']['ppl']:.3f} -> pruned {ppl['pruned']['ppl']:.3f}"
    )
    typer.echo(f"saved {result.directory or default_out(cfg)} in {result.cost['seconds']:.0f} s")


@app.command("eval")
def eval_cmd(
    model: ModelOpt = P.model,
    text: EvalTextOpt = P.eval_text,
    windows: EvalWindowsOpt = P.eval_windows,
    seq_len: SeqLenOpt = P.seq_len,
    batch_size: Annotated[int, typer.Option(help="windows per forward")] = P.batch_size,
    window_bos: WindowBosOpt = WINDOW_BOS,
    dtype: Annotated[LoadDtype, typer.Option(help="weights' precision")] = LOAD_DTYPE,
    device: DeviceOpt = P.device,
    as_json: JsonOpt = False,
) -> None:
    """Perplexity of a model on a text source (consecutive windows from its start)."""
    from sleb_deploy.data import resolve_window_bos
    from sleb_deploy.evaluate import eval_perplexity
    from sleb_deploy.models.load import load_model, load_tokenizer, read_model_type, resolve_model

    def run() -> dict[str, Any]:
        source = resolve_model(model)
        bos = resolve_window_bos(window_bos.value, read_model_type(source))
        tok = load_tokenizer(source)
        m = load_model(source, dtype.value, device)
        ppl, spec = eval_perplexity(m, tok, text, windows, seq_len, batch_size, bos=bos)
        return {"model": source.to_json(), "text": spec, **ppl.to_json()}

    result = run_stage(run)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        typer.echo(f"perplexity {result['ppl']:.4f} on {result['tokens']} tokens of {text}")


@app.command("onnx")
def onnx_cmd(
    model: Annotated[str, typer.Option(help="HF directory (dense or pruned), hub id, or built-in alias")] = P.model,
    out: Annotated[Path | None, typer.Option(help="output directory [default: export/<model>/onnx]")] = None,
    dtype: GraphDtypeOpt = GRAPH_DTYPE,
    variant: VariantOpt = VARIANT,
    last_logits_only: LastLogitsOnly = E.last_logits_only,
    external_data: Annotated[
        bool | None, typer.Option(help="weights in model.onnx_data [default: only over 2 GiB]")
    ] = E.external_data,
    kv_cache: KvCacheOpt = KV_CACHE,
    max_cache_len: Annotated[
        int | None,
        typer.Option(help="static cache: fix the buffer length in the graph (TensorRT) [default: symbolic]"),
    ] = E.max_cache_len,
    static_attention: Annotated[
        StaticAttention | None,
        typer.Option(
            help="static cache: attention as the ONNX Attention op or as MatMul/Softmax/MatMul "
            "[default: op with --max-cache-len (TensorRT), else matmul (ONNX Runtime)]"
        ),
    ] = None,
    validate: ValidateOpt = E.validate,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export one checkpoint to ONNX with KV-cache I/O and validate it against PyTorch."""
    from sleb_deploy.export.stage import export_checkpoint
    from sleb_deploy.prune.stage import model_name

    cfg = ExportConfig(
        dtype=dtype.value, variant=variant.value, last_logits_only=last_logits_only, external_data=external_data,
        force=force, kv_cache=kv_cache.value, max_cache_len=max_cache_len,
        static_attention=None if static_attention is None else static_attention.value, validate=validate,
    )  # fmt: skip
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
    typer.echo(f"{label}: {result.graph.num_layers} blocks, {mb:.0f} MB -> {result.directory}; {check}")


@app.command("export")
def export_cmd(
    model: ModelOpt = P.model,
    name: Annotated[str | None, typer.Option(help="workspace name [default: the model's name]")] = None,
    pruned: Annotated[Path | None, typer.Option(help="export this pruned checkpoint instead of pruning")] = None,
    remove: RemoveOpt = None,
    ratio: RatioOpt = None,
    blocks: BlocksOpt = None,
    metric: MetricOpt = METRIC,
    calib: CalibOpt = P.calib,
    windows: WindowsOpt = P.windows,
    seq_len: SeqLenOpt = P.seq_len,
    eval_text: EvalTextOpt = P.eval_text,
    eval_windows: EvalWindowsOpt = P.eval_windows,
    window_bos: WindowBosOpt = WINDOW_BOS,
    device: DeviceOpt = P.device,
    dtype: GraphDtypeOpt = GRAPH_DTYPE,
    variant: VariantOpt = VARIANT,
    last_logits_only: LastLogitsOnly = E.last_logits_only,
    kv_cache: KvCacheOpt = KV_CACHE,
    max_cache_len: Annotated[
        int | None,
        typer.Option(
            help="static cache: fix the buffer length in both graphs [default: symbolic; --max-context-len when "
            "engines are built]"
        ),
    ] = E.max_cache_len,
    engines: Annotated[
        EngineBackend,
        typer.Option(help="engine builder (auto: tensorrt, else tensorrt_rtx, else none)"),
    ] = EngineBackend.AUTO,
    max_batch: MaxBatchOpt = BC.max_batch,
    opt_batch: OptBatchOpt = BC.opt_batch,
    max_input_len: MaxInputOpt = BC.max_input_len,
    max_context_len: MaxContextOpt = BC.max_context_len,
    opt_level: OptLevelOpt = BC.builder_optimization_level,
    workspace_mib: WorkspaceOpt = BC.workspace_mib,
    validate: ValidateOpt = E.validate,
    force: Annotated[bool, typer.Option("--force", help="redo and replace existing outputs")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Prune, export dense and pruned to ONNX, validate both, and build TensorRT engines when possible."""
    from sleb_deploy.pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(
        prune=PruneConfig(model=model, calib=calib, windows=windows, seq_len=seq_len, remove=remove, ratio=ratio,
                          metric=metric.value, blocks=_blocks(blocks), eval_text=eval_text,
                          eval_windows=eval_windows, window_bos=window_bos.value, device=device),
        export=ExportConfig(dtype=dtype.value, variant=variant.value, last_logits_only=last_logits_only,
                            kv_cache=kv_cache.value, max_cache_len=max_cache_len, validate=validate),
        build=_build_config(max_batch, opt_batch, max_input_len, max_context_len, opt_level, workspace_mib),
        name=name, pruned_checkpoint=pruned, engines=engines.value, force=force,
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
    ppl = p.perplexity
    typer.echo(f"removed blocks {p.removal_order}: {p.model.num_blocks} -> {p.num_blocks_after}")
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
    backend: Annotated[
        EngineBackend, typer.Option(help="auto: tensorrt, else tensorrt_rtx (none builds nothing)")
    ] = EngineBackend.AUTO,
    max_batch: MaxBatchOpt = BC.max_batch,
    opt_batch: OptBatchOpt = BC.opt_batch,
    max_input_len: MaxInputOpt = BC.max_input_len,
    max_context_len: MaxContextOpt = BC.max_context_len,
    opt_level: OptLevelOpt = BC.builder_optimization_level,
    workspace_mib: WorkspaceOpt = BC.workspace_mib,
    timing_cache: Annotated[Path | None, typer.Option(help="seed timing cache (e.g. the dense build's)")] = None,
    triton: Annotated[Path | None, typer.Option(help="also write a Triton model repository here")] = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Build a TensorRT engine (prefill + decode profiles) from an exported ONNX directory."""
    from sleb_deploy.engines import build_engine, write_triton_repository

    def run() -> Any:
        cfg = _build_config(max_batch, opt_batch, max_input_len, max_context_len, opt_level, workspace_mib)
        built = build_engine(onnx_dir, out, cfg, backend=backend.value, timing_cache=timing_cache, force=force)
        if triton is not None:
            write_triton_repository(out, triton, force=force)
        return built

    built = run_stage(run)
    if as_json:
        sys.stdout.write(json.dumps(built.to_json()) + "\n")
        return
    typer.echo(
        f"{built.backend['module']} {built.backend['version']}: {built.num_layers} blocks, "
        f"{built.plan_bytes / 1e6:.0f} MB plan in {built.build_seconds:.0f} s -> {built.directory}"
    )


# `bench` and `report` live in their own module (their options are many); registered here, one app.
from sleb_deploy.cli_bench import bench_cmd, report_cmd  # noqa: E402

app.command("bench")(bench_cmd)
app.command("report")(report_cmd)

from sleb_deploy.cli_triton import triton_cmd  # noqa: E402

app.command("triton")(triton_cmd)


def main() -> None:  # pragma: no cover - console entry point
    app()
