"""Phase offload (drf_core/offload.py) and the VAE's residual-block checkpointing on tiny models.

The host is a second device: the meta device in `PhaseOffload`'s bookkeeping, while the move itself
copies every weight into new storage on the CPU (what a CPU <-> GPU move does to a tensor: same
values, new memory, the same `Parameter` object). So the runs below really re-materialise the
models at every phase change, and the recorded placement says where each model would be.
"""

from __future__ import annotations

import pytest
import torch

from drf_core import offload
from drf_core.config import (
    CriticInputConfig,
    DecodeConfig,
    LoRAConfig,
    OptimizerConfig,
    RegularizationConfig,
    SamplerConfig,
    TrainConfig,
    VideoSpec,
)
from drf_core.critics import load_critic
from drf_core.decompose import decompose
from drf_core.errors import DRFInputError
from drf_core.models import load_video_backend
from drf_core.models.base import DecodeOptions
from drf_core.reward import DRFReward
from drf_core.trainer import Trainer

PROMPT = "two red apples on a wooden table, the camera slowly pans left"
META = torch.device("meta")


def fresh_models(tiny_models):
    """Models of their own: phase offload stays on for models it ran on."""
    return load_video_backend(tiny_models.wan, "fp32", "cpu"), load_critic(tiny_models.qwen, "fp32", "cpu")


def config(**overrides) -> TrainConfig:
    values = dict(
        prompts=[PROMPT],
        steps=2,
        seed=0,
        video=VideoSpec(32, 32, 9),
        sampler=SamplerConfig(num_inference_steps=4, truncated_backprop_steps=2, guidance_scale=3.0),
        decode=DecodeConfig("uniform", 2, True),
        critic_input=CriticInputConfig(height=28, width=28),
        lora=LoRAConfig(rank=4, alpha=4.0),
        optimizer=OptimizerConfig(learning_rate=3e-2, warmup_steps=1),
        regularization=RegularizationConfig(drift_weight=0.5),
        checkpoint_interval=0,
        release_text_encoder=True,
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture
def host_copies(monkeypatch):
    """Host = meta in the bookkeeping; a move re-creates every weight and gradient in new CPU memory."""

    def move(_self, _name, modules, _device):
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                tensor.data = tensor.data.clone()
                if tensor.grad is not None:
                    tensor.grad = tensor.grad.clone()

    monkeypatch.setattr(offload, "HOST", META)
    monkeypatch.setattr(offload.PhaseOffload, "_move", move)


def train(tiny_models, tmp_path, mode, record=None):
    backend, critic = fresh_models(tiny_models)
    c = config(offload=mode)
    trainer = Trainer(backend, DRFReward(critic, c.reward, c.critic_input), [decompose(PROMPT)], c, tmp_path / mode)
    if record is not None:
        record(trainer, backend, critic)
    result = trainer.train()
    lora = {n: p.detach().clone() for n, p in backend.denoiser.named_parameters() if "lora_" in n}
    return result, lora, trainer


def test_phase_offload_trains_the_same_lora_as_none(tiny_models, tmp_path, host_copies):
    """The same numbers up to float rounding: the staged backward sums the same terms, but the weights moved
    to new memory may be summed in another order by the CPU kernels (on some CPUs the step-0 gradient norm
    differs in the 7th digit). A lost or doubled stage changes them by orders of magnitude more."""
    plain, plain_lora, _ = train(tiny_models, tmp_path, "none")
    moved, moved_lora, trainer = train(tiny_models, tmp_path, "phase")
    assert trainer.offload is not None and len(trainer.offload.moves) > 10  # it really moved, every phase
    assert moved.metrics[0]["reward"] == plain.metrics[0]["reward"]  # before any update: the same forward
    for key in ("reward", "drift", "grad_norm"):
        moved_values, plain_values = [r[key] for r in moved.metrics], [r[key] for r in plain.metrics]
        assert moved_values == pytest.approx(plain_values, rel=1e-5, abs=1e-12), key
    assert plain.metrics[-1]["drift"] > 0 and plain.metrics[0]["grad_norm"] > 0
    assert moved_lora.keys() == plain_lora.keys() and plain_lora
    learning_rate = config().optimizer.learning_rate  # Adam moves each weight by up to about this per step
    for name, value in plain_lora.items():
        torch.testing.assert_close(moved_lora[name], value, rtol=0, atol=learning_rate / 30, msg=name)


def test_each_phase_finds_only_its_model_on_the_device(tiny_models, tmp_path, host_copies):
    calls: list[tuple[str, bool, dict[str, str]]] = []

    def record(trainer, backend, critic):
        modules = {
            offload.TEXT_ENCODER: backend.text_encoder,
            offload.VIDEO_MODEL: backend.transformer,
            offload.VAE: backend.vae.decoder,
            offload.CRITIC: critic.model,
        }
        for group, module in modules.items():

            def hook(_module, _args, _output, group=group):
                placed = {name: str(device) for name, device in trainer.offload.placed.items()}
                calls.append((group, torch.is_grad_enabled(), placed))

            module.register_forward_hook(hook)

    train(tiny_models, tmp_path, "phase", record)
    seen = {group for group, _, _ in calls}
    assert seen == {offload.TEXT_ENCODER, offload.VIDEO_MODEL, offload.VAE, offload.CRITIC}
    for group, _, placed in calls:
        assert placed[group] == "cpu", (group, placed)  # the running model is on the device
        # No two models ever share the device: backward runs in stages (critic, VAE, video model),
        # so even the VAE's recomputation in backward finds the video model on the host.
        others = {name for name, device in placed.items() if device == "cpu" and name != group}
        assert not others, (group, placed)
    # The released text encoder is gone from the groups; the critic left before the VAE's backward.
    assert offload.TEXT_ENCODER not in trainer_groups(calls[-1][2])


def trainer_groups(placed: dict[str, str]) -> set[str]:
    return {name for name, device in placed.items() if device == "cpu"}


def test_offload_is_a_checked_setting():
    with pytest.raises(DRFInputError, match=r"train\.offload.*'none' or 'phase'"):
        config(offload="gpu").validate()


@pytest.mark.parametrize(
    "options",
    [
        {"checkpoint_residual_blocks": True},
        {"segment_latent_frames": 2},
        {"segment_latent_frames": 2, "checkpoint_residual_blocks": True, "whole": True},
        {"frame_by_frame_backward": True},
        {"frame_by_frame_backward": True, "checkpoint_residual_blocks": True, "cache_host": torch.device("cpu")},
        {"frame_by_frame_backward": True, "backward_tiles": 2, "size": 64},
        {"frame_by_frame_backward": True, "backward_tiles": 3, "checkpoint_residual_blocks": True, "size": 64},
    ],
)
def test_decode_memory_savers_keep_frames_and_gradients(tiny_models, options):
    from torch.utils.checkpoint import checkpoint

    backend = load_video_backend(tiny_models.wan, "fp32", "cpu")
    size = options.get("size", 32)
    latents = backend.init_noise(VideoSpec(size, size, 17), 1, torch.Generator().manual_seed(0))
    weights = None
    results = []
    for kwargs in ({}, options):
        kwargs = dict(kwargs)
        whole = kwargs.pop("whole", False)
        kwargs.pop("size", None)
        x = latents.clone().requires_grad_()
        args = (x, [0, 7, 16], DecodeOptions(checkpoint_per_latent_frame=True, **kwargs))
        frames = checkpoint(backend.decode, *args, use_reentrant=True) if whole else backend.decode(*args)
        weights = torch.linspace(0, 1, frames.numel()).view_as(frames) if weights is None else weights
        (frames * weights).sum().backward()
        results.append((frames.detach(), x.grad))
    assert torch.equal(results[0][0], results[1][0])
    # The same gradients up to float32 summation order (contributions to early frames arrive in another order).
    reference = results[0][1]
    assert torch.allclose(results[1][1], reference, rtol=1e-5, atol=1e-6 * float(reference.abs().max()))
    assert results[1][1][:, :, :4].abs().sum() > 0  # the gradient reaches the first latent frames too


def test_residual_block_wrapping_is_undone(tiny_models):
    from drf_core.models.vae_blocks import checkpoint_residual_blocks

    backend = load_video_backend(tiny_models.wan, "fp32", "cpu")
    with checkpoint_residual_blocks(backend.vae.decoder) as wrapped:
        assert wrapped > 0
    assert not any("forward" in vars(m) for m in backend.vae.decoder.modules())  # their own forward is back


def test_modules_a_host_places_are_left_to_it():
    """ComfyUI's memory manager places the models the pack loads there (nodes/comfy_memory.py marks them):
    phase offload moves the other groups and never touches a host-managed module."""
    plain, managed = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    setattr(managed, offload.HOST_MANAGED_ATTRIBUTE, True)
    meta = torch.device("meta")  # stands for the compute device: a move there is visible, and cheap
    phases = offload.PhaseOffload(lambda: {offload.VAE: ([plain], meta), offload.CRITIC: ([managed], meta)})
    assert set(phases.groups()) == {offload.VAE}
    phases.use(offload.CRITIC)  # nothing of the critic's is this offload's to move; the VAE goes to the host
    assert managed.weight.device.type == "cpu" and plain.weight.device.type == "cpu"
    phases.use(offload.VAE)
    assert plain.weight.device == meta and managed.weight.device.type == "cpu"
    managed(torch.ones(1, 2))  # no hook on it: it runs where its host put it
    assert phases.moves == [(offload.VAE, "cpu"), (offload.VAE, "meta")]  # only the VAE ever moved
