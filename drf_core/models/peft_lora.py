"""The LoRA life cycle of `VideoBackend` done with peft on a torch `denoiser` (the diffusers backends).

`PeftLoRA` is a mixin: a backend whose `denoiser` is a plain torch module (diffusers'
`WanTransformer3DModel`) inherits add / apply / snapshot / remove from it; the work itself is in
`drf_core.lora`. Parameter names are the denoiser's own (`blocks.0.attn1.to_q.lora_A.drf.weight`),
so training checkpoints keep their keys.

Knows peft through `drf_core.lora`; nothing about model families, training loops or ComfyUI.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch

from ..config import LoRAConfig
from ..lora import LoRAWeights, adapters_disabled, add_lora, apply_lora, remove_lora, snapshot_lora


class PeftLoRA:
    """Mixin for `VideoBackend`s that train peft LoRA layers on `self.denoiser`."""

    denoiser: torch.nn.Module
    lora_target_presets: dict[str, list[str]]

    def _trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in self.denoiser.named_parameters() if p.requires_grad}

    def add_lora(self, config: LoRAConfig, adapter_name: str) -> dict[str, torch.nn.Parameter]:
        add_lora(self.denoiser, config, self.lora_target_presets[config.target_preset], adapter_name=adapter_name)
        return self._trainable_parameters()

    def apply_lora(
        self,
        lora: LoRAWeights,
        adapter_name: str,
        strength: float = 1.0,
        trainable: bool = False,
        dropout: float = 0.0,
    ) -> dict[str, torch.nn.Parameter]:
        apply_lora(self.denoiser, lora, adapter_name, strength=strength, trainable=trainable, dropout=dropout)
        return self._trainable_parameters() if trainable else {}

    def snapshot_lora(self, adapter_name: str, metadata: dict[str, Any] | None = None) -> LoRAWeights:
        return snapshot_lora(self.denoiser, adapter_name, metadata)

    def remove_lora(self, adapter_name: str) -> None:
        remove_lora(self.denoiser, adapter_name)
        # apply_lora made its adapter the only active one; the adapters that remain become active again.
        remaining = getattr(self.denoiser, "peft_config", None)
        if remaining and hasattr(self.denoiser, "set_adapters"):
            self.denoiser.set_adapters(list(remaining))

    def set_training(self, enabled: bool) -> None:
        self.denoiser.train(enabled)

    def adapters_disabled(self) -> AbstractContextManager[None]:
        return adapters_disabled(self.denoiser)
