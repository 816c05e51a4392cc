"""Library warnings that sftgate's users cannot act on, silenced where sftgate's calls reach them.

Where sftgate itself causes a warning, the cause is fixed instead: the decoder passes its cache by
the name the model's forward takes (`generate.cache_keyword`), checkpointing is switched by its
new name (`train.set_checkpointing`). What is left is a library calling another library's
deprecated name from its own code: it would print a FutureWarning in the live view on every run
(a DeprecationWarning shows under pytest and `python -W default`), the user can change nothing
about it, and the call still does what sftgate relies on. Each filter
names the exact message, category and module the warning is attributed to, with the reason it is
safe, so that every other warning still shows. The test suite uses the same filters
(pyproject.toml's `filterwarnings` lists them with a pointer here).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Quieted:
    message: str  # a regex matched at the start of the warning's text
    category: type[Warning]
    module: str  # a regex matched against the module the warning is attributed to
    reason: str


QUIETED = (
    Quieted(
        message=r"`is_gradient_checkpointing` is deprecated",
        category=FutureWarning,
        module=r"transformers\.modeling_utils\Z",
        reason="PEFT (0.21) reads transformers' deprecated `is_gradient_checkpointing` property "
        "in PeftModel.__init__, whichever way the model is wrapped (get_peft_model, "
        "PeftModel.from_pretrained); the alias still answers, as `is_activation_checkpointing`",
    ),
    Quieted(
        message=r"The ``noload`` loader strategy is deprecated",
        category=DeprecationWarning,  # SQLAlchemy's SADeprecationWarning
        module=r"mlflow\.store\.tracking\.sqlalchemy_store\Z",
        reason="MLflow's SQL store (3.x) declares relationships with `lazy='noload'`, which "
        "SQLAlchemy 2.1 deprecates; the store still reads and writes runs as before, and the "
        "tracking URI is all sftgate chooses",
    ),
)


@contextmanager
def quiet() -> Iterator[None]:
    """The QUIETED warnings silenced while the block runs; the caller's filters are restored
    after (a program that imports sftgate keeps its own settings)."""
    with warnings.catch_warnings():
        for q in QUIETED:
            warnings.filterwarnings(
                "ignore", message=q.message, category=q.category, module=q.module
            )
        yield
