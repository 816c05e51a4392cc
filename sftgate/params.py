"""Training parameters, by the seed's names. Defaults are the seed's round 0 (smoke) config.

Shared by `sftgate train` (one config) and the search (the planner proposes these).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sftgate.config import ADDED, StrictModel
from sftgate.targets import TargetFormat


class TrainParams(StrictModel):
    # The seed's parameters, in its order of priority when searching.
    max_steps: int = Field(20, gt=0, description="optimizer steps; the first knob the search turns")
    lr: float = Field(2e-4, gt=0, description="peak learning rate; small moves (±0.5e-4)")
    max_length: int = Field(
        1024,
        ge=64,
        description="tokens per example (prompt + completion); higher keeps more passages, costs memory and time",
    )
    batch_size: int = Field(1, gt=0, description="examples per device per step")
    lora_r: int = Field(16, gt=0, description="LoRA rank; higher adds capacity and memory")
    lora_alpha: int = Field(32, gt=0, description="LoRA scale numerator (scale = alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    # Beyond the seed: documented defaults that keep round 0 exactly the seed's smoke config.
    grad_accum_steps: int = Field(1, gt=0, description="micro-batches per optimizer step")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of max_steps spent warming up")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="decay after warm-up"
    )
    seed: int = Field(0, description="seeds data order, LoRA init and dropout")
    target_format: TargetFormat = Field(
        "schema_order",
        description="how a training target is serialised: schema_order (the schema's key order) "
        "or answer_last (evidence and anchors first, the answer last, a space before the closing "
        "brace: every target ends with the same tokens; sftgate.targets)",
        json_schema_extra=ADDED,
    )

    def seed_view(self) -> dict[str, float | int]:
        """The seven parameters the seed names, as the planner and reports show them."""
        return {k: getattr(self, k) for k in SEED_PARAM_NAMES}


SEED_PARAM_NAMES = (
    "max_steps",
    "lr",
    "batch_size",
    "max_length",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
)
