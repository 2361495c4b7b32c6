"""Block-streamed SLEB scoring: every block's weights visit the device once per phase (and window group).

Per phase, all candidates advance through the alive blocks together: before block b runs, candidate b takes
the unskipped path's state (skipping b means the next block sees b's input), then every candidate already
skipped and the unskipped path (while a later candidate still needs it) go through b. So b is needed once:
it is read from the checkpoint (safetensors, one block's tensors), run on every state, and dropped. The
candidate states are the large memory; windows are split into groups (``plan.py``) so a group's states fit,
and each group streams the blocks once. The numbers are the cached scorer's: the same blocks run on the same
inputs with the same masks and positions; only the order of the work differs.

The blocks run outside the model's forward, so their arguments (masks, rotary embeddings, positions, which
depend on each block's attention type) are taken from the model's own forward: it runs once per batch shape
with stand-ins in place of the blocks, which record what each would have been given. The head likewise runs
through the model's forward with one stand-in that returns a candidate's final state: final norm, output
projections, soft-capping and the vocabulary head are the model's own for every family.

``StreamedModel`` holds only the non-block weights; the blocks stay on the meta device until they are run.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sleb_deploy.errors import ArtifactError
from sleb_deploy.evaluate import Perplexity
from sleb_deploy.models.adapters import adapter_for, blocks_view, config_of, remove_blocks
from sleb_deploy.models.checkpoint import INDEX, SAFETENSORS_DTYPES, CheckpointTensors
from sleb_deploy.prune.plan import WeightBytes
from sleb_deploy.prune.scoring import Progress, _hidden_out, _StopForward, batches, nll_sum


def checkpoint_weight_bytes(
    ckpt: CheckpointTensors, blocks_path: str, num_blocks: int, dtype: torch.dtype
) -> WeightBytes:
    """Exact bytes of the largest block and of the rest, at the scoring dtype, from the headers."""
    prefix = blocks_path + "."
    per_block = [0] * num_blocks
    other = 0
    for key in ckpt.keys():
        size = ckpt.nbytes(key, dtype)
        if key.startswith(prefix):
            per_block[int(key[len(prefix) :].split(".", 1)[0])] += size
        else:
            other += size
    return WeightBytes(max(per_block), other, num_blocks)


class StreamedModel:
    """The model with its non-block weights on ``device`` and every block on the meta device until loaded.

    Built from the config on the meta device (buffers such as rotary frequencies stay real), then the
    non-block tensors are read from the checkpoint and assigned; tied heads are re-tied.
    """

    def __init__(self, directory: Path, dtype: torch.dtype | None, device: str | torch.device) -> None:
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        self.ckpt = CheckpointTensors(directory)
        self.device = torch.device(device)
        self.dtype = dtype or self.ckpt.float_dtype()
        config = AutoConfig.from_pretrained(directory)
        with init_empty_weights(include_buffers=False):
            self.model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
        self.model.eval()
        self.adapter = adapter_for(self.model)
        self.blocks = list(self.adapter.blocks(self.model))
        self.prefix = self.adapter.blocks_path + "."
        rest = [k for k in self.ckpt.keys() if not k.startswith(self.prefix)]
        self.model.load_state_dict(self.ckpt.read(rest, self.device, self.dtype), strict=False, assign=True)
        if getattr(config.get_text_config(), "tie_word_embeddings", False):
            self.model.tie_weights()
        for module in self.model.modules():
            for name, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[name] = buf.to(self.device)
        in_blocks = {id(p) for p in self.adapter.blocks(self.model).parameters()}
        outside = [n for n, p in self.model.named_parameters() if p.is_meta and id(p) not in in_blocks]
        if outside:
            raise ArtifactError(
                f"{directory}: weights {outside[:3]} are not in the checkpoint under the model's own names; "
                "re-save it with save_pretrained or use --scorer cached"
            )
        self.loads = 0

    @contextmanager
    def loaded(self, b: int) -> Iterator[nn.Module]:
        """Block ``b`` with its weights on the device; back on the meta device (memory freed) afterwards."""
        block = self.blocks[b]
        prefix = f"{self.prefix}{b}."
        keys = [k for k in self.ckpt.keys() if k.startswith(prefix)]
        tensors = self.ckpt.read(keys, self.device, self.dtype)
        block.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items()}, strict=True, assign=True)
        del tensors
        self.loads += 1
        try:
            yield block
        finally:
            block.to("meta")


class _StandIn(nn.Module):
    """Takes a block's place in the model's forward: ``fn(hidden, args, kwargs)`` says what it returns."""

    def __init__(self, fn: Callable[[torch.Tensor, tuple[Any, ...], dict[str, Any]], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.fn(hidden_states, args, kwargs)


@contextmanager
def _stand_ins(model: nn.Module, alive: Sequence[int], fns: Sequence[Callable[..., torch.Tensor]]) -> Iterator[None]:
    """The model viewed with the blocks ``alive`` (config sliced accordingly), each replaced by a stand-in."""
    adapter = adapter_for(model)
    with blocks_view(model, alive):
        adapter.set_blocks(model, nn.ModuleList(_StandIn(fn) for fn in fns))
        yield  # blocks_view restores the original ModuleList


BlockArgs = tuple[tuple[Any, ...], dict[str, Any]]


class _Recorder:
    """Stand-in behaviour for the argument pass: keep the first block's input; when ``record``, keep every
    block's arguments and stop at the last block, else stop at the first."""

    def __init__(self, alive: list[int], firsts: list[torch.Tensor], home: torch.device, record: bool) -> None:
        self.alive, self.firsts, self.home, self.record = alive, firsts, home, record
        self.found: dict[int, BlockArgs] = {}

    def at(self, pos: int) -> Callable[[torch.Tensor, tuple[Any, ...], dict[str, Any]], torch.Tensor]:
        def fn(h: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
            if pos == 0:
                self.firsts.append(h.to(self.home))
            if self.record:
                self.found[self.alive[pos]] = (args, kwargs)
            if not self.record or pos == len(self.alive) - 1:
                raise _StopForward
            return h

        return fn


class StreamedScorer:
    """SLEB's phase scorer over a `StreamedModel`; see the module docstring. ``groups``: lists of batch
    indices, each streaming the blocks once per phase. ``states_device``: where the states live between
    forwards (the model's device, or "cpu" to spill them from an accelerator)."""

    def __init__(
        self,
        streamed: StreamedModel,
        windows: torch.Tensor,
        batch_size: int = 1,
        progress: Progress | None = None,
        window_groups: int = 1,
        states_device: str | None = None,
    ) -> None:
        self.sm = streamed
        self.batches = batches(windows, batch_size)
        self.progress = progress
        n = len(self.batches)
        per = -(-n // max(1, window_groups))
        self.groups = [list(range(i, min(n, i + per))) for i in range(0, n, per)]
        self.states_device = torch.device(states_device) if states_device else streamed.device

    def __call__(self, alive: list[int], candidates: list[int]) -> dict[int, float]:
        scores = {c: 0.0 for c in candidates}
        for g, group in enumerate(self.groups):
            for c, nll in self._run(alive, candidates, group).items():
                scores[c] += nll
            if self.progress:
                # one tick per group: the candidates are scored together at the end of the group's pass
                self.progress(len(candidates) * (g + 1) // len(self.groups), len(candidates))
        return scores

    def nll(self, alive: list[int]) -> float:
        """Summed NLL of all windows through the alive blocks (no skip): perplexity, streamed."""
        return sum(self._run(alive, [], group)[-1] for group in self.groups)

    @torch.inference_mode()
    def _block_args(self, alive: list[int], group: list[int]) -> tuple[list[torch.Tensor], list[dict[int, BlockArgs]]]:
        """Each batch's first block input, and each alive block's other arguments per batch (shared by all
        batches of one shape: they depend on the shape, not on the tokens)."""
        model, device = self.sm.model, self.sm.device
        firsts: list[torch.Tensor] = []
        per_batch: list[dict[int, BlockArgs]] = []
        by_shape: dict[tuple[int, ...], dict[int, BlockArgs]] = {}
        for i in group:
            batch = self.batches[i]
            shape = tuple(batch.shape)
            recorder = _Recorder(alive, firsts, self.states_device, record=shape not in by_shape)
            with _stand_ins(model, alive, [recorder.at(pos) for pos in range(len(alive))]):
                try:
                    model(input_ids=batch.to(device), use_cache=False)
                except _StopForward:
                    pass
            by_shape.setdefault(shape, recorder.found)
            per_batch.append(by_shape[shape])
        return firsts, per_batch

    @torch.inference_mode()
    def _head_nll(self, alive: list[int], state: torch.Tensor, batch: torch.Tensor) -> float:
        model, device = self.sm.model, self.sm.device
        with _stand_ins(model, alive[-1:], [lambda h, a, k: state.to(device)]):
            logits = model(input_ids=batch.to(device), use_cache=False).logits
        return nll_sum(logits, batch)

    @torch.inference_mode()
    def _run(self, alive: list[int], candidates: list[int], group: list[int]) -> dict[int, float]:
        """One pass of the group through the alive blocks; NLL per candidate (key -1: the unskipped path,
        when there are no candidates)."""
        dense, block_args = self._block_args(alive, group)
        last = max((alive.index(c) for c in candidates), default=len(alive))
        states: dict[int, list[torch.Tensor]] = {}
        to_dev, home = self.sm.device, self.states_device
        for pos, b in enumerate(alive):
            if b in candidates:
                states[b] = list(dense)  # candidate b skips b: the next block sees b's input
            running = [c for c in states if c != b]
            if not running and pos >= last:
                continue
            with self.sm.loaded(b) as block:
                for path in [states[c] for c in running] + ([dense] if pos < last else []):
                    for j, h in enumerate(path):
                        args, kwargs = block_args[j][b]
                        path[j] = _hidden_out(block(h.to(to_dev), *args, **kwargs)).to(home)
        finals = states if candidates else {-1: dense}
        out: dict[int, float] = {}
        for c, path in finals.items():
            out[c] = sum(self._head_nll(alive, h, self.batches[i]) for h, i in zip(path, group, strict=True))
        return out


def write_pruned_checkpoint(sm: StreamedModel, kept: list[int], out: Path, shard_bytes: int = 2 << 30) -> None:
    """The pruned checkpoint, tensor by tensor: non-block tensors (from the loaded skeleton) and the kept blocks
    renumbered (each read from the source when written), in safetensors shards of at most ``shard_bytes`` at the
    scoring dtype (as ``save_pretrained`` of the loaded model would write them); then the config (block count and
    per-block lists updated) and the source's generation config. Memory: one block tensor at a time."""
    held = sm.model.state_dict()
    new_index = {b: i for i, b in enumerate(kept)}
    names: list[tuple[str, str]] = []  # (source key, target key)
    for key in sm.ckpt.keys():
        if key.startswith(sm.prefix):
            block, rest = key[len(sm.prefix) :].split(".", 1)
            if int(block) in new_index:
                names.append((key, f"{sm.prefix}{new_index[int(block)]}.{rest}"))
        else:
            names.append((key, key))
    shards: list[list[tuple[str, str]]] = [[]]
    size = 0
    for pair in names:
        nbytes = sm.ckpt.nbytes(pair[0], sm.dtype)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(pair)
        size += nbytes
    weight_map: dict[str, str] = {}
    total = 0
    cpu = torch.device("cpu")

    def tensor(source: str) -> torch.Tensor:
        t = (
            held[source]
            if source in held and not held[source].is_meta
            else sm.ckpt.read([source], cpu, sm.dtype)[source]
        )
        return t.detach().to(cpu).contiguous()

    for i, shard in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        total += _write_safetensors(out / fname, [(s, t, sm.ckpt.header[s]["shape"]) for s, t in shard], sm, tensor)
        weight_map.update({target: fname for _, target in shard})
    if len(shards) > 1:
        (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    remove_blocks(sm.model, kept)  # the skeleton's config: what config.json must say
    config_of(sm.model).save_pretrained(out)
    generation = sm.ckpt.directory / "generation_config.json"
    if generation.is_file():
        shutil.copy(generation, out / "generation_config.json")


def _write_safetensors(
    path: Path, entries: list[tuple[str, str, list[int]]], sm: StreamedModel, tensor: Callable[[str], torch.Tensor]
) -> int:
    """One safetensors file written tensor by tensor: the header from the known shapes and dtypes (floating
    tensors at the scoring dtype), then each tensor's bytes, fetched only when written. Returns the data bytes."""
    names = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for source, target, shape in entries:
        stored = SAFETENSORS_DTYPES[sm.ckpt.header[source]["dtype"]]
        dtype = sm.dtype if stored.is_floating_point else stored
        nbytes = sm.ckpt.nbytes(source, sm.dtype)
        header[target] = {"dtype": names[dtype], "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for source, target, _ in entries:
            t = tensor(source)
            if names[t.dtype] != header[target]["dtype"] or t.numel() * t.element_size() != (
                header[target]["data_offsets"][1] - header[target]["data_offsets"][0]
            ):
                raise RuntimeError(f"{source}: {t.dtype} {tuple(t.shape)} does not match the header written")
            f.write(t.reshape(-1).view(torch.uint8).numpy().data)
            del t
    return offset


def streamed_perplexity(sm: StreamedModel, windows: torch.Tensor, batch_size: int, alive: list[int]) -> Perplexity:
    """`evaluate.perplexity` of the model with the blocks ``alive``, its blocks streamed."""
    return Perplexity.from_nll(StreamedScorer(sm, windows, batch_size).nll(alive), windows)
