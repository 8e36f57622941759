"""Built-in ``label`` conditioner: config and registration (the module is in
:mod:`.label_conditioner`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from udiff.hookspecs import hookimpl


class LabelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dim: int | None = Field(None, gt=0, description="Embedding width D; None follows the "
                            "denoiser's cond_dim.")
    tokens: int = Field(1, ge=1, le=77, description="Tokens L per label for cross-attention.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Probability of replacing a label by the "
                           "null label while training (classifier-free guidance; the training "
                           "loop applies it).")



@hookimpl(trylast=True)
def register_conditioners(register):
    register("label", LabelConfig, "udiff.builtins.label_conditioner:build")
