"""A base model kept loaded across runs: one load (and 4-bit quantisation) per worker, not two
per run.

A search's worker (the search's own process, a child process per GPU, a Ray actor) trains and
evaluates run after run on one `ResidentBase`. A run *borrows* the base: PEFT adds its adapter,
training or decoding runs, and `borrowed` then puts every module of the base back as it was
(its attributes, submodules, hooks and flags, its parameters' requires_grad, its config), so
nothing of one run (LoRA layers, Liger's patched forwards, gradient checkpointing, train mode)
reaches the next. Merged decoding works on `merged_copy`: the adapter merged into a
full-precision copy of the base (the 4-bit weights dequantised first, as a fresh evaluation
does), dropped after; the base's own weights are never written. A run in a worker therefore
gives the same adapter bytes and the same predictions as the same run in a fresh process
(tests/test_resident.py).

`train` and `evaluate` take a base; without one they load their own (`ResidentBase()` used
once), which is the same code path. The base also keeps the training examples it tokenised
(`examples`): a run whose examples come from the same files and settings as an earlier run's
takes them as they are, since tokenising the sample's 1,000 training questions took ~5 s a run;
and the output grammar compiled for its tokenizer (`decode.constrain`, ~1-2 s a compile).
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sftgate import libwarnings
from sftgate.models import LoadedModel, Quantization, default_device, load_model, wants_4bit

T = TypeVar("T")
KEPT_EXAMPLE_SETS = 4  # tokenised training sets kept (a study varies max_length and the format)


class ResidentBase:
    """At most one loaded base model (with its tokenizer), kept for the next run that asks for
    the same model, quantisation and device; another one replaces it. The training sets its
    tokenizer made are kept with it."""

    def __init__(self) -> None:
        self.loaded: LoadedModel | None = None
        self.key: tuple[str, bool, str] | None = None
        self.loads = 0  # models loaded so far (a benchmark's and a test's count)
        self.kept: dict[str, Any] = {}  # inputs' hash -> what `make` returned for them
        self.tokenisations = 0  # training sets tokenised so far (a test's count)
        self.grammars: dict[Any, Any] = {}  # (logits width, stop ids) -> compiled constraint

    def examples(self, key: str, make: Callable[[], T]) -> T:
        """The training examples whose inputs (files' bytes and settings) hash to `key`, made
        with the loaded base's tokenizer the first time they are asked for. The caller must
        not change them: the next run with those inputs gets the same objects."""
        if key not in self.kept:
            if len(self.kept) >= KEPT_EXAMPLE_SETS:
                del self.kept[next(iter(self.kept))]  # the oldest
            self.kept[key] = make()
            self.tokenisations += 1
        return self.kept[key]

    def grammar(self, key: Any, make: Callable[[], T]) -> T:
        """The output grammar for `key` (the logits' width and the stop ids), compiled for the
        loaded base's tokenizer the first time it is asked for; matchers are made per batch."""
        if key not in self.grammars:
            self.grammars[key] = make()
        return self.grammars[key]

    def get(
        self, model_id: str, quantization: Quantization = "auto", device: str | None = None
    ) -> LoadedModel:
        device = device or default_device()
        use_4bit = wants_4bit(quantization, device)
        key = (model_id, use_4bit, device)
        if self.loaded is None or self.key != key:
            self.drop()
            self.loaded = load_model(
                model_id, quantization="4bit" if use_4bit else "none", device=device
            )
            self.key = key
            self.loads += 1
        return self.loaded

    def drop(self) -> None:
        """Forget the base (after a failed run, or when the worker is done) and free its memory."""
        self.kept.clear()  # made with this base's tokenizer
        self.grammars.clear()
        if self.loaded is None:
            return
        self.loaded = self.key = None
        free_memory()


def free_memory() -> None:
    """On a GPU, collect what a run left unreferenced (PEFT's wrappers hold reference cycles) and
    hand the cached blocks back, for the next run or another process on the card. (On a CPU,
    Python's own collection frees host memory soon enough; a full collection costs ~0.2 s.)"""
    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------- borrowing the base


def _contents(value: Any) -> Any:
    """A copy of a container's contents (restored into the same object), None for other values."""
    return copy.copy(value) if isinstance(value, (dict, list, set)) else None


def _refill(target: Any, contents: Any) -> None:
    if isinstance(target, list):
        target[:] = contents
    else:  # dict or set
        target.clear()
        target.update(contents)


@dataclass(frozen=True)
class BaseState:
    """What a run may change on a model, saved to be put back: each module's attributes (with
    the contents of its dicts: submodules, parameters, buffers, hooks), each parameter's
    requires_grad, the model's config and generation config."""

    modules: list[tuple[Any, dict[str, tuple[Any, Any]]]]
    requires_grad: list[tuple[Any, bool]]
    configs: list[tuple[Any, dict[str, tuple[Any, Any]]]]

    @classmethod
    def of(cls, model: Any) -> BaseState:
        def saved(obj: Any) -> dict[str, tuple[Any, Any]]:
            return {k: (v, _contents(v)) for k, v in vars(obj).items()}

        configs = [c for c in (model.config, getattr(model, "generation_config", None)) if c]
        return cls(
            modules=[(m, saved(m)) for m in model.modules()],
            requires_grad=[(p, p.requires_grad) for p in model.parameters()],
            configs=[(c, saved(c)) for c in configs],
        )

    def restore(self) -> None:
        for obj, attrs in self.modules + self.configs:
            now = vars(obj)
            for name in set(now) - set(attrs):
                del now[name]
            for name, (value, contents) in attrs.items():
                if contents is not None:
                    _refill(value, contents)
                now[name] = value
        for p, flag in self.requires_grad:
            p.requires_grad_(flag)


@contextmanager
def borrowed(model: Any) -> Iterator[None]:
    """The block may add adapters to `model`, patch it and train on it: afterwards (also after an
    error) it is the model it was, and what the block left behind is freed."""
    state = BaseState.of(model)
    try:
        yield
    finally:
        state.restore()
        free_memory()


def merged_copy(base: LoadedModel, adapter: str, *, keep_base: bool = True) -> Any:
    """The adapter merged into a full-precision copy of the base: for a 4-bit base, the NF4
    weights dequantised first (so the merged model computes what was trained). The base is not
    touched; the copy is the caller's. `keep_base=False` merges into the base itself instead (a
    base loaded for this alone, used up by it: no second copy in memory)."""
    from peft import PeftModel

    model = copy.deepcopy(base.model) if keep_base else base.model
    if base.quantized_4bit:
        model = model.dequantize()
    with libwarnings.quiet():
        model = PeftModel.from_pretrained(model, adapter)
    model = model.merge_and_unload()
    model.eval()
    return model
