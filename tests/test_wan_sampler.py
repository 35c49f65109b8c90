"""The Wan backend and the differentiable sampler against diffusers' own WanPipeline, on tiny models.

Checks: bit-exact equality with `WanPipeline(..., output_type="pt")` with gradients off (UniPC and
flow-Euler, guidance 1 and 5, Wan 2.2's expand_timesteps and two-expert variants); checkpointed
gradients ("step", "block", per-latent-frame VAE) equal plain backprop and really recompute; only
the last K steps carry gradient; partial decodes equal the full decode and decode fewer latent
frames; K drawn from a range is deterministic; clear errors for bad folders and settings.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import peft
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

from drf_core.config import SamplerConfig, VideoSpec
from drf_core.errors import DRFInputError, ModelFolderError
from drf_core.models import SCHEDULERS, VIDEO_BACKENDS, WanBackend, load_video_backend
from drf_core.models.base import DecodeOptions
from drf_core.sampler import (
    CHECKPOINTING,
    SamplingInterrupted,
    draw_truncation_steps,
    sample_latents,
    sample_video,
)
from drf_core.tiny import TINY_WAN_TEXT_DIM

PROMPT = "two red apples on a wooden table"
NEGATIVE = "blurry"
SPEC = VideoSpec(height=32, width=32, num_frames=9)
STEPS = 4


def _load(folder) -> WanBackend:
    backend = load_video_backend(folder, dtype="fp32", device="cpu")
    assert isinstance(backend, WanBackend)
    return backend


def _seed(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _copy_wan(tiny_models, destination: Path, **index_changes) -> Path:
    shutil.copytree(tiny_models.wan, destination)
    index_file = destination / "model_index.json"
    index = json.loads(index_file.read_text())
    index.update(index_changes)
    index_file.write_text(json.dumps(index))
    return destination


@pytest.fixture(scope="module")
def backend(tiny_models) -> WanBackend:
    return _load(tiny_models.wan)


@pytest.fixture(scope="module")
def pipe(tiny_models) -> WanPipeline:
    return WanPipeline.from_pretrained(tiny_models.wan, local_files_only=True)


@pytest.fixture(scope="module")
def lora_backend(tiny_models) -> WanBackend:
    """A second backend whose denoiser carries a LoRA with non-zero B (so every LoRA weight has gradient)."""
    backend = _load(tiny_models.wan)
    torch.manual_seed(0)
    backend.denoiser.add_adapter(
        peft.LoraConfig(
            r=4, lora_alpha=4, target_modules=WanBackend.lora_target_presets["attention_ffn"], init_lora_weights=False
        )
    )
    return backend


@pytest.fixture(scope="module")
def our_frames(backend):
    """`sample_video` output of the shared backend, computed once per (guidance, scheduler)."""
    cache: dict[tuple[float, str], torch.Tensor] = {}

    def frames(guidance: float, scheduler: str = "default") -> torch.Tensor:
        if (guidance, scheduler) not in cache:
            cache[guidance, scheduler] = _our_frames(backend, guidance, scheduler)
        return cache[guidance, scheduler]

    return frames


def _pipeline_frames(pipe: WanPipeline, guidance: float, prompts=PROMPT) -> torch.Tensor:
    return pipe(
        prompts,
        negative_prompt=NEGATIVE,
        height=SPEC.height,
        width=SPEC.width,
        num_frames=SPEC.num_frames,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        generator=_seed(),
        output_type="pt",
    ).frames


def _our_frames(backend: WanBackend, guidance: float, scheduler: str = "default", prompts=(PROMPT,)) -> torch.Tensor:
    config = SamplerConfig(num_inference_steps=STEPS, guidance_scale=guidance, scheduler=scheduler)
    return sample_video(backend, list(prompts), NEGATIVE, SPEC, config, _seed())


# ----------------------------------------------------------------------------------------------
# Equality with WanPipeline (gradients off)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("guidance", [1.0, 5.0])
@pytest.mark.parametrize("scheduler", ["default", "flow_euler"])
def test_sample_video_equals_wan_pipeline(pipe, our_frames, scheduler, guidance):
    original = pipe.scheduler
    if scheduler == "flow_euler":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(original.config, shift=3.0)
    try:
        expected = _pipeline_frames(pipe, guidance)
    finally:
        pipe.scheduler = original
    ours = our_frames(guidance, scheduler)
    assert ours.shape == (1, 9, 3, 32, 32) and ours.dtype == torch.float32
    assert ours.std() > 0.05, "a degenerate video would make the comparison meaningless"
    assert torch.equal(ours, expected), f"max abs diff {(ours - expected).abs().max().item()}"


def test_unipc_replacement_equals_the_folders_unipc(backend, pipe):
    """ "unipc" built from the folder's config (Wan 2.1's own scheduler) samples the same latents."""
    config = SamplerConfig(num_inference_steps=STEPS, guidance_scale=5.0, scheduler="unipc")
    embeddings = backend.encode_prompts([PROMPT], NEGATIVE, 5.0)
    ours = sample_latents(backend, embeddings, backend.init_noise(SPEC, 1, _seed()), config, 0)
    expected = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        height=SPEC.height,
        width=SPEC.width,
        num_frames=SPEC.num_frames,
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        generator=_seed(),
        output_type="latent",
    ).frames
    assert torch.equal(ours, expected)


def test_settings_change_the_video(our_frames):
    """Guidance and the scheduler really reach the sampler (so the equality tests can fail)."""
    assert not torch.allclose(our_frames(5.0), our_frames(1.0))
    assert not torch.allclose(our_frames(5.0), our_frames(5.0, "flow_euler"))


def test_batch_of_prompts_equals_wan_pipeline(backend, pipe):
    prompts = [PROMPT, "a cat on a table"]
    expected = _pipeline_frames(pipe, 5.0, prompts)
    ours = _our_frames(backend, 5.0, prompts=prompts)
    assert torch.equal(ours, expected)
    assert not torch.allclose(ours[0], ours[1])


def test_expand_timesteps_equals_wan_pipeline(tiny_models, tmp_path):
    folder = _copy_wan(tiny_models, tmp_path / "ti2v", expand_timesteps=True)
    backend = _load(folder)
    assert backend.expand_timesteps
    expected = _pipeline_frames(WanPipeline.from_pretrained(folder, local_files_only=True), 5.0)
    assert torch.equal(_our_frames(backend, 5.0), expected)


def test_two_experts_equal_wan_pipeline(tiny_models, tmp_path, backend, our_frames):
    folder = _copy_wan(
        tiny_models, tmp_path / "a14b", transformer_2=["diffusers", "WanTransformer3DModel"], boundary_ratio=0.875
    )
    torch.manual_seed(123)
    WanTransformer3DModel.from_config(backend.transformer.config).save_pretrained(folder / "transformer_2")
    two_experts = _load(folder)
    assert two_experts.denoiser is two_experts.transformer_2, "the low-noise expert runs last and trains"
    facts = two_experts.describe()
    assert facts["has_transformer_2"] and facts["boundary_ratio"] == 0.875 and facts["denoiser"] == "transformer_2"
    expected = _pipeline_frames(WanPipeline.from_pretrained(folder, local_files_only=True), 5.0)
    ours = _our_frames(two_experts, 5.0)
    assert torch.equal(ours, expected)
    assert not torch.allclose(ours, our_frames(5.0)), "timesteps below the boundary use transformer_2"


# ----------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------


def _lora_parameters(backend: WanBackend) -> dict[str, torch.nn.Parameter]:
    params = {name: p for name, p in backend.denoiser.named_parameters() if "lora_" in name}
    assert params and all(p.requires_grad for p in params.values())
    return params


def _loss(frames: torch.Tensor) -> torch.Tensor:
    weights = torch.randn(frames.shape, generator=_seed(1))
    return (frames * weights).sum()


def _lora_grads(backend, checkpointing="none", grad_steps=2, checkpoint_vae=False, frame_indices=(0, 1, 2, 3, 4)):
    params = _lora_parameters(backend)
    for p in params.values():
        p.grad = None
    config = SamplerConfig(num_inference_steps=STEPS, guidance_scale=5.0, checkpointing=checkpointing)
    embeddings = backend.encode_prompts([PROMPT], NEGATIVE, config.guidance_scale)
    noise = backend.init_noise(SPEC, 1, _seed())
    latents = sample_latents(backend, embeddings, noise, config, grad_steps)
    frames = backend.decode(latents, frame_indices, DecodeOptions(checkpoint_per_latent_frame=checkpoint_vae))
    _loss(frames).backward()
    return {name: p.grad.clone() for name, p in params.items()}


def _reference_grads(backend, grad_steps):
    """Plain autograd over every step, with everything before the last K steps detached."""
    params = _lora_parameters(backend)
    for p in params.values():
        p.grad = None
    embeddings = backend.encode_prompts([PROMPT], NEGATIVE, 5.0)
    latents = backend.init_noise(SPEC, 1, _seed())
    scheduler = backend.new_scheduler(STEPS)
    for i, t in enumerate(scheduler.timesteps):
        before_window = i < STEPS - grad_steps
        output = backend.predict(latents, t, embeddings, 5.0)
        output = output.detach() if before_window else output
        latents = scheduler.step(output, t, latents)
        latents = latents.detach() if before_window else latents
    _loss(backend.decode(latents, (0, 1, 2, 3, 4))).backward()
    return {name: p.grad.clone() for name, p in params.items()}


def _assert_same_grads(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), f"{name}: {(actual[name] - expected[name]).abs().max()}"


def _count_calls(module: torch.nn.Module) -> list[int]:
    counter = [0]
    module.register_forward_pre_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))
    return counter


@pytest.fixture(scope="module")
def lora_grads(lora_backend):
    """Memoised `_lora_grads` runs, each with how many block-0 and decoder calls backward recomputed."""
    block_calls = _count_calls(lora_backend.denoiser.blocks[0])
    decoder_calls = _count_calls(lora_backend.vae.decoder)
    cache = {}

    def run(mode="none", grad_steps=2, checkpoint_vae=False):
        key = (mode, grad_steps, checkpoint_vae)
        if key not in cache:
            blocks_before, decoder_before = block_calls[0], decoder_calls[0]
            grads = _lora_grads(lora_backend, mode, grad_steps, checkpoint_vae)
            # Forward runs block 0 twice per step (CFG) and the decoder once per latent frame (2 hold
            # frames 0..4); anything above that is recomputation during backward.
            recomputed = (block_calls[0] - blocks_before - 2 * STEPS, decoder_calls[0] - decoder_before - 2)
            cache[key] = grads, recomputed
        return cache[key]

    return run


def test_checkpointed_gradients_equal_plain_backprop(lora_backend, lora_grads):
    plain, recomputed = lora_grads("none")
    assert recomputed == (0, 0)
    assert all(g.abs().sum() > 0 for g in plain.values()), "every LoRA weight gets gradient"
    for mode, checkpoint_vae, expected_recomputation, why in [
        ("step", False, (4, 0), "step checkpointing recomputes each denoiser call in the window (2 steps x CFG)"),
        ("block", False, (4, 0), "diffusers' block checkpointing is active (eval mode, grad on)"),
        ("block", True, (4, 2), "each latent frame's decoder call is recomputed"),
        ("step_block", False, (8, 0), "each call is recomputed, and inside that recomputation each block again"),
    ]:
        grads, recomputed = lora_grads(mode, checkpoint_vae=checkpoint_vae)
        _assert_same_grads(grads, plain)
        assert recomputed == expected_recomputation, why
    assert not lora_backend.denoiser.gradient_checkpointing, "block checkpointing is switched off after the window"
    assert all(entry is None for entry in lora_backend.vae._feat_map), "no graph stays alive in the VAE cache"


def test_per_latent_frame_vae_checkpointing_matches_plain_decode(backend):
    latents = torch.randn(1, 16, 3, 4, 4, generator=_seed(2)).requires_grad_(True)
    plain = backend.decode(latents)
    (plain_grad,) = torch.autograd.grad(_loss(plain), latents)
    checkpointed = backend.decode(latents, options=DecodeOptions(checkpoint_per_latent_frame=True))
    (checkpointed_grad,) = torch.autograd.grad(_loss(checkpointed), latents)
    assert torch.equal(checkpointed, plain)
    assert torch.equal(checkpointed_grad, plain_grad)
    assert plain_grad[:, :, 2].abs().sum() > 0, "the last latent frame receives gradient"
    assert all(entry is None for entry in backend.vae._feat_map)


def test_only_the_last_k_steps_carry_gradient(lora_backend, lora_grads):
    steps_seen = []
    config = SamplerConfig(num_inference_steps=STEPS, guidance_scale=5.0, checkpointing="none")
    embeddings = lora_backend.encode_prompts([PROMPT], NEGATIVE, 5.0)
    preview = sample_latents(
        lora_backend,
        embeddings,
        lora_backend.init_noise(SPEC, 1, _seed()),
        config,
        0,
        on_step=lambda i, n: steps_seen.append((i, n)),
    )
    assert not preview.requires_grad, "K=0 builds no graph"
    assert steps_seen == [(i, STEPS) for i in range(1, STEPS + 1)]

    last_step, _ = lora_grads(grad_steps=1)
    _assert_same_grads(last_step, _reference_grads(lora_backend, 1))
    _assert_same_grads(lora_grads(grad_steps=2)[0], _reference_grads(lora_backend, 2))
    every_step, _ = lora_grads(grad_steps=STEPS)
    assert any(not torch.allclose(every_step[n], last_step[n]) for n in last_step), "K changes the gradient"

    frozen = [
        (name, p)
        for module in (lora_backend.transformer, lora_backend.text_encoder, lora_backend.vae)
        for name, p in module.named_parameters()
        if "lora_" not in name
    ]
    assert frozen and all(not p.requires_grad and p.grad is None for _, p in frozen)


def test_should_stop_interrupts_and_restores_block_checkpointing(lora_backend):
    steps_seen = []
    config = SamplerConfig(num_inference_steps=STEPS, guidance_scale=5.0, checkpointing="block")
    embeddings = lora_backend.encode_prompts([PROMPT], NEGATIVE, 5.0)
    with pytest.raises(SamplingInterrupted, match="before denoising step 3 of 4"):
        sample_latents(
            lora_backend,
            embeddings,
            lora_backend.init_noise(SPEC, 1, _seed()),
            config,
            STEPS,
            on_step=lambda i, n: steps_seen.append(i),
            should_stop=lambda: len(steps_seen) == 2,
        )
    assert steps_seen == [1, 2]
    assert not lora_backend.denoiser.gradient_checkpointing


def test_lora_target_presets_match_the_transformer(tiny_models):
    for preset, suffixes in WanBackend.lora_target_presets.items():
        model = WanTransformer3DModel.from_pretrained(tiny_models.wan, subfolder="transformer", local_files_only=True)
        model.add_adapter(peft.LoraConfig(r=2, target_modules=suffixes))
        wrapped = {name for name, module in model.named_modules() if hasattr(module, "lora_A")}
        expected = {f"blocks.{i}.{suffix}" for i in range(model.config.num_layers) for suffix in suffixes}
        assert wrapped == expected, preset
    assert "ffn.net.2" in WanBackend.lora_target_presets["attention_ffn"]
    assert "ffn.net.2" not in WanBackend.lora_target_presets["attention"]


# ----------------------------------------------------------------------------------------------
# Decode, noise, sizes, K
# ----------------------------------------------------------------------------------------------


def test_partial_decode_equals_full_decode(backend):
    latents = torch.randn(1, 16, 3, 4, 4, generator=_seed(3))
    decoder_inputs = []
    hook = backend.vae.decoder.register_forward_pre_hook(lambda _m, args: decoder_inputs.append(args[0].shape[2]))
    try:
        with torch.no_grad():
            full = backend.decode(latents)
            assert full.shape == (1, 9, 3, 32, 32) and decoder_inputs == [1, 1, 1]
            for indices, latent_frames in [([0], 1), ([0, 2, 4], 2), ([1, 5], 3), ([8], 3)]:
                decoder_inputs.clear()
                partial = backend.decode(latents, frame_indices=indices)
                assert torch.equal(partial, full[:, indices]), indices
                assert decoder_inputs == [1] * latent_frames, f"{indices}: decode only the latent frames needed"
    finally:
        hook.remove()


def test_init_noise_and_frame_rounding(backend, caplog):
    noise = backend.init_noise(VideoSpec(64, 96, 13), 2, _seed(5))
    assert noise.shape == (2, 16, 4, 8, 12) and noise.dtype == torch.float32
    assert torch.equal(noise, torch.randn(2, 16, 4, 8, 12, generator=_seed(5)))
    with caplog.at_level(logging.WARNING):
        assert backend.num_frames_out(VideoSpec(64, 64, 11)) == 9
    assert "divisible by 4" in caplog.text


def test_truncation_steps_drawn_deterministically():
    config = SamplerConfig(num_inference_steps=6, truncated_backprop_range=(2, 4))
    generator = _seed(7)
    first = [draw_truncation_steps(config, generator) for _ in range(30)]
    generator = _seed(7)
    assert [draw_truncation_steps(config, generator) for _ in range(30)] == first
    assert set(first) == {2, 3, 4}
    assert draw_truncation_steps(SamplerConfig(truncated_backprop_steps=3), _seed()) == 3


def test_registries_list_the_choices():
    assert VIDEO_BACKENDS.names() == ["WanPipeline"]
    assert SCHEDULERS.names() == ["unipc", "flow_euler"]
    assert CHECKPOINTING.names() == ["none", "step", "block", "step_block"]


# ----------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------


def test_prompt_cache_and_release_text_encoder(tiny_models):
    backend = _load(tiny_models.wan)
    calls = _count_calls(backend.text_encoder)
    first = backend.encode_prompts([PROMPT], NEGATIVE, 5.0)
    assert calls[0] == 2 and first.negative is not None
    assert first.positive.shape == (1, 512, TINY_WAN_TEXT_DIM), "padded to the pipeline's max_sequence_length"
    assert backend.encode_prompts([PROMPT], NEGATIVE, 1.0).negative is None, "no CFG at guidance <= 1"
    again = backend.encode_prompts([PROMPT, PROMPT], NEGATIVE, 5.0)
    assert calls[0] == 2, "cached prompts are not encoded again"
    assert torch.equal(again.positive[1], first.positive[0]) and torch.equal(again.negative[1], first.negative[0])

    backend.release_text_encoder()
    assert backend.text_encoder is None and not backend.describe()["text_encoder_loaded"]
    after = backend.encode_prompts([PROMPT], NEGATIVE, 5.0)
    assert torch.equal(after.positive, first.positive) and torch.equal(after.negative, first.negative)
    with pytest.raises(DRFInputError, match=r"text encoder was released.*'a new prompt'"):
        backend.encode_prompts(["a new prompt"], NEGATIVE, 5.0)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def test_folder_errors(tiny_models, tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        load_video_backend(tmp_path / "nowhere", dtype="fp32", device="cpu")
    with pytest.raises(ModelFolderError, match=r"no model_index\.json.*transformers model.*critic"):
        load_video_backend(tiny_models.qwen, dtype="fp32", device="cpu")

    image_to_video = tmp_path / "i2v"
    image_to_video.mkdir()
    index = json.loads((tiny_models.wan / "model_index.json").read_text())
    (image_to_video / "model_index.json").write_text(json.dumps({**index, "_class_name": "WanImageToVideoPipeline"}))
    with pytest.raises(ModelFolderError, match=r"WanImageToVideoPipeline.*text-to-video.*WanPipeline"):
        load_video_backend(image_to_video, dtype="fp32", device="cpu")

    incomplete = _copy_wan(tiny_models, tmp_path / "incomplete")
    shutil.rmtree(incomplete / "transformer")
    with pytest.raises(ModelFolderError, match=r"component folder.*transformer.*missing"):
        load_video_backend(incomplete, dtype="fp32", device="cpu")


def test_setting_errors(backend):
    embeddings = backend.encode_prompts([PROMPT], NEGATIVE, 1.0)
    noise = backend.init_noise(SPEC, 1, _seed())
    with pytest.raises(DRFInputError, match=r"K=5 > T=4.*use K <= T"):
        sample_latents(backend, embeddings, noise, SamplerConfig(num_inference_steps=4, guidance_scale=1.0), 5)
    with pytest.raises(DRFInputError, match="unknown scheduler 'ddim'"):
        backend.new_scheduler(4, "ddim")
    with pytest.raises(DRFInputError, match=r"multiples of 16.*height 72: use 64 or 80"):
        backend.init_noise(VideoSpec(72, 64, 9), 1, _seed())
    with pytest.raises(DRFInputError, match="outside the video's 9 frames"):
        backend.decode(noise, frame_indices=[9])


def test_native_module_name(backend):
    pytest.importorskip("drf_core.models.wan_keys")
    assert backend.native_module_name("blocks.0.attn1.to_q") == "blocks.0.self_attn.q"


@pytest.mark.parametrize(
    ("indices", "latent_frames"),
    [([0], 1), ([1], 2), ([2], 2), ([4], 2), ([0, 4], 2), ([5], 3), ([8], 3), (None, 3)],
)
def test_latent_frames_needed_covers_the_last_wanted_frame(indices, latent_frames):
    """Latent frame 0 -> pixel frame 0, latent frame n -> pixel frames 4n-3 .. 4n (9 frames from 3 latent frames)."""
    from drf_core.models.wan import latent_frames_needed

    assert latent_frames_needed(3, indices, 4) == latent_frames


def test_latent_frames_needed_refuses_frames_outside_the_video():
    from drf_core.models.wan import latent_frames_needed

    with pytest.raises(DRFInputError, match="outside the video's 9 frames"):
        latent_frames_needed(3, [9], 4)
