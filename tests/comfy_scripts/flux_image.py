"""Flux dev through Video Model from ComfyUI, in ComfyUI's interpreter; a JSON report.

    python flux_image.py --comfyui-dir DIR --pack-dir REPO --qwen TINY_QWEN_DIR --out-dir DIR

The smallest Flux ComfyUI loads (`comfy_models.smallest_flux_state`: its fixed width, one double and
one single block, random weights) is written as a file and loaded by core UNETLoader ("default"
weight dtype), Flux's VAE (fixed size, random weights) by core VAELoader; the text is conditioning
tensors (T5-XXL and CLIP-L have fixed sizes) with a pooled output, through core FluxGuidance 3.5,
the negative through ConditioningZeroOut, as ComfyUI's Flux dev template wires them (euler, simple,
cfg 1.0, EmptySD3LatentImage). Reports:

1. sampling with gradients off equals core KSampler (latents), and Sample Video (the node) equals
   core VAEDecode of them (pixels, one frame);
2. one training step with gradient through the last step, the VAE decode and the tiny Qwen critic
   in image mode: finite gradient on every adapter, none on Flux's or the VAE's weights;
3. the pack's trainer on the image: the critic is asked about a picture (mode "images") and no
   question about motion; the saved LoRA (`diffusion_model.<ComfyUI name>` keys) applied by core
   LoraLoaderModelOnly + KSampler equals Sample Video with that LoRA, and differs from the base;
4. Critique Video on Sample Video's IMAGE (one frame) and Evaluate LoRA on the trained LoRA score
   the images as the trainer does: a picture, no motion question, the trainer's reward;
5. num_frames other than 1 is refused by Sample Video, Train LoRA and Evaluate LoRA (naming the
   setting), before the text is encoded or the critic loaded.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from comfy_boot import start

SEED, STEPS, CFG, FLUX_GUIDANCE = 3, 2, 1.0, 3.5
WIDTH = HEIGHT = 32
TEXT_TOKENS, TEXT_WIDTH, POOLED_WIDTH = 8, 4096, 768
PROMPT = "two red apples on a wooden table"
UNET_FILE, VAE_FILE, LORA_FILE = "flux1-dev.safetensors", "ae.safetensors", "drf_flux.safetensors"


def main() -> int:
    options = start("--qwen", "--out-dir")
    out_dir = Path(options.out_dir)
    started = time.monotonic()

    import comfy.utils
    import folder_paths
    import torch
    from comfy_extras.nodes_flux import FluxGuidance
    from comfy_extras.nodes_sd3 import EmptySD3LatentImage
    from comfy_models import random_flux_vae_state, smallest_flux_state
    from drf_pack.drf_core import api
    from drf_pack.drf_core.config import (
        CriticInputConfig,
        DecodeConfig,
        LoRAConfig,
        OptimizerConfig,
        RewardConfig,
        SamplerConfig,
        TrainConfig,
        VideoSpec,
    )
    from drf_pack.drf_core.critics import load_critic
    from drf_pack.drf_core.decompose import decompose
    from drf_pack.drf_core.errors import DRFInputError
    from drf_pack.drf_core.questions import TEMPORAL_TAGS, for_still_image
    from drf_pack.drf_core.reward import DRFReward
    from drf_pack.drf_core.sampler import sample_latents
    from drf_pack.nodes.critic import CritiqueVideo
    from drf_pack.nodes.evaluate import EvaluateLoRA
    from drf_pack.nodes.loaders import VideoModelFromComfy
    from drf_pack.nodes.local import LocalContext, LocalFolders, run_node
    from drf_pack.nodes.lora import TrainedLoRAWire
    from drf_pack.nodes.reward import RewardSettings
    from drf_pack.nodes.sample import SampleVideo
    from drf_pack.nodes.spec import engine_frames
    from drf_pack.nodes.train import TrainLoRA

    import nodes as core

    report: dict = {}
    for kind in ("diffusion_models", "vae", "loras"):
        (out_dir / kind).mkdir(exist_ok=True)
        folder_paths.add_model_folder_path(kind, str(out_dir / kind))
    comfy.utils.save_torch_file(smallest_flux_state(torch), str(out_dir / "diffusion_models" / UNET_FILE))
    comfy.utils.save_torch_file(random_flux_vae_state(torch), str(out_dir / "vae" / VAE_FILE))
    report["seconds"] = {"write models": time.monotonic() - started}

    def lap(name: str) -> None:
        report["seconds"][name] = time.monotonic() - started - sum(report["seconds"].values())

    spec = VideoSpec(height=HEIGHT, width=WIDTH, num_frames=1)
    with torch.inference_mode():  # as ComfyUI runs every prompt
        (model,) = core.UNETLoader().load_unet(UNET_FILE, "default")
        (vae,) = core.VAELoader().load_vae(VAE_FILE)
        generator = torch.Generator().manual_seed(1)
        text = torch.randn(1, TEXT_TOKENS, TEXT_WIDTH, generator=generator)
        pooled = torch.randn(1, POOLED_WIDTH, generator=generator)
        (positive,) = FluxGuidance().append([[text, {"pooled_output": pooled}]], FLUX_GUIDANCE)
        (negative,) = core.ConditioningZeroOut().zero_out(positive)
        (latent,) = EmptySD3LatentImage().generate(WIDTH, HEIGHT, 1)
    report["model_class"] = type(model.model).__name__
    report["model_config"] = {
        k: model.model.model_config.unet_config.get(k)
        for k in ("image_model", "hidden_size", "depth", "guidance_embed")
    }
    report["model_dtype"] = str(model.model_dtype())
    report["parameters"] = sum(p.numel() for p in model.model.diffusion_model.parameters())
    report["vae_class"] = type(vae.first_stage_model).__name__
    ctx = LocalContext(LocalFolders(out_dir / "local"))
    (wire,) = VideoModelFromComfy.run(
        ctx, model, vae, "euler", "simple", PROMPT, "", positive=positive, negative=negative
    ).outputs  # fmt: skip
    backend = wire.get()
    report["family"] = backend.family

    def core_sample(patcher):
        with torch.inference_mode():
            (samples,) = core.common_ksampler(patcher, SEED, STEPS, CFG, "euler", "simple", positive, negative, latent)
            (pixels,) = core.VAEDecode().decode(vae, samples)
        return samples["samples"], pixels

    def ours(grad_steps=0, checkpointing="step_block"):
        embeddings = backend.encode_prompts([PROMPT], "", CFG)
        noise = backend.init_noise(spec, 1, torch.Generator().manual_seed(SEED))
        config = SamplerConfig(num_inference_steps=STEPS, guidance_scale=CFG, checkpointing=checkpointing)
        return sample_latents(backend, embeddings, noise, config, grad_steps)

    sample_node = dict(
        video_model=wire, prompt=PROMPT, negative_prompt="", width=WIDTH, height=HEIGHT, num_frames=1, steps=STEPS,
        guidance_scale=CFG, scheduler="default", seed=SEED, lora_strength=1.0,
    )  # fmt: skip

    # 1. sampling equals core KSampler; Sample Video equals core VAEDecode
    core_latents, core_pixels = core_sample(model)
    with torch.inference_mode(False), torch.no_grad():
        latents = ours().cpu()
    with torch.inference_mode(), torch.inference_mode(False):
        (node_frames,) = SampleVideo.run(ctx, **sample_node).outputs
    lap("sampling")
    report["sampling"] = {
        "latent_shape": list(latents.shape),
        "latent_max_abs_diff": (latents - core_latents).abs().max().item(),
        "latent_scale": core_latents.abs().max().item(),
        "frames_shape": list(node_frames.shape),
        "pixels_max_abs_diff": (node_frames.cpu() - core_pixels.cpu()).abs().max().item(),
        "pixels_std": core_pixels.std().item(),
    }

    # 2. one training step through the critic in image mode
    critic = load_critic(options.qwen, "fp32", "cpu")
    modes: list[str] = []
    asked: list[str] = []
    score = critic.score

    def recording(frames, questions, queries, answers, visual):  # what the critic is handed
        modes.append(visual.mode)
        asked.extend([*questions, *queries])
        return score(frames, questions, queries, answers, visual)

    critic.score = recording
    reward = DRFReward(critic, RewardConfig(), CriticInputConfig(height=28, width=28))
    questions = decompose(PROMPT, still_image=True)
    with torch.inference_mode(False):
        named = backend.add_lora(LoRAConfig(rank=2, alpha=2.0, target_preset="attention_ffn"), "probe")
        image_reward = reward.for_frames([0], still_image=True)
        frames = backend.decode(ours(grad_steps=STEPS, checkpointing="none"))  # through every step
        result = image_reward(frames[0], questions)
        (-result.total).backward()
        downs = {n: p.grad for n, p in named.items() if n.endswith("lora_down.weight")}
        # The gradient along its own direction against a central difference of the reward (the blocks change
        # tensors in place, so a wrong recomputation would show here).
        norm = torch.sqrt(sum((g * g).sum() for g in downs.values()))
        step = 1e-3
        with torch.no_grad():
            moved = []
            for sign in (1.0, -1.0):
                for n, g in downs.items():
                    named[n].add_(sign * step * g / norm)
                moved.append(image_reward(backend.decode(ours())[0], questions).total.item())
                for n, g in downs.items():
                    named[n].sub_(sign * step * g / norm)
        report["directional_derivative"] = {
            "autograd": -norm.item(),  # d(reward)/d(step along the gradient of -reward)
            "central_difference": (moved[0] - moved[1]) / (2 * step),
        }
        report["gradients"] = {
            "frames_shape": list(frames.shape),
            "reward": result.total.item(),
            "critic_modes": sorted(set(modes)),
            "adapters": len(downs),
            "adapter_layers": sorted({n.rsplit(".", 2)[0].split(".", 2)[-1] for n in downs}),
            "with_gradient": sum(1 for g in downs.values() if g is not None and bool(g.abs().sum() > 0)),
            "finite": all(g is not None and bool(torch.isfinite(g).all()) for g in downs.values()),
            "model_weights_with_grad": sum(1 for p in model.model.parameters() if p.grad is not None),
            "vae_weights_with_grad": sum(1 for p in vae.first_stage_model.parameters() if p.grad is not None),
        }
        backend.remove_lora("probe")
    lap("gradient step")

    # 3. the trainer; the saved LoRA in core LoraLoaderModelOnly + KSampler vs Sample Video with it
    modes.clear()
    asked.clear()
    config = TrainConfig(
        prompts=[PROMPT], negative_prompt="", steps=1, seed=0, video=VideoSpec(HEIGHT, WIDTH, 1),
        sampler=SamplerConfig(num_inference_steps=STEPS, truncated_backprop_steps=1, guidance_scale=CFG),
        decode=DecodeConfig("all", 1), critic_input=CriticInputConfig(height=28, width=28),
        lora=LoRAConfig(rank=4, alpha=4.0, target_preset="attention"),
        optimizer=OptimizerConfig(learning_rate=5e-2), checkpoint_interval=0,
    )  # fmt: skip
    video_questions = decompose(PROMPT)  # the trainer makes them image questions itself (one frame)
    with torch.inference_mode(False):
        trained = api.train_lora(backend, reward, [video_questions], config, out_dir / "run", resume=False)
    temporal_questions = {q.question for a in video_questions.aspects for q in a.yes_no if q.tag in TEMPORAL_TAGS}
    lap("training")
    lora_file = api.save_trained_lora(trained.lora, out_dir / "loras" / LORA_FILE, trained.family, "comfyui")
    keys = sorted(comfy.utils.load_torch_file(str(lora_file)))
    report["training"] = {
        "rewards": [row["reward"] for row in trained.run.metrics],
        "critic_modes": sorted(set(modes)),
        "temporal_questions_in_set": len(temporal_questions),
        "temporal_questions_asked": sorted(temporal_questions & set(asked)),
        "questions_asked": len(set(asked)),
        "lora_keys": len(keys),
        "lora_key_examples": keys[:4],
        "lora_family": trained.family,
    }
    with torch.inference_mode():
        (core_lora_model,) = core.LoraLoaderModelOnly().load_lora_model_only(model, LORA_FILE, 1.0)
    lora_latents, lora_pixels = core_sample(core_lora_model)
    lora_wire = TrainedLoRAWire(trained.lora, trained.family, "trained")
    with torch.inference_mode(False), torch.no_grad():
        backend.apply_lora(api.load_lora(lora_file, "flux"), "preview")
        preview_latents = ours().cpu()
        backend.remove_lora("preview")
    with torch.inference_mode(), torch.inference_mode(False):
        (node_lora,) = SampleVideo.run(ctx, **sample_node, lora=lora_wire).outputs
    report["lora"] = {
        "latent_max_abs_diff": (preview_latents - lora_latents).abs().max().item(),
        "pixels_max_abs_diff": (node_lora.cpu() - lora_pixels.cpu()).abs().max().item(),
        "lora_changes_latents": (lora_latents - core_latents).abs().max().item(),
        "lora_changes_pixels": (lora_pixels - core_pixels).abs().max().item(),
    }
    lap("lora")

    # 4. Critique Video and Evaluate LoRA in image mode, against the trainer's reward for the same image
    class Loaded:  # the critic wire: the recording critic above
        def get(self):
            return critic

    settings = RewardSettings(critic_input=CriticInputConfig(height=28, width=28))  # frame selection: 8 of a video
    modes.clear()
    asked.clear()
    with torch.inference_mode(), torch.inference_mode(False):
        critique = run_node(
            CritiqueVideo, ctx, critic=Loaded(), frames=node_frames, questions=[video_questions], explain=False,
            heatmaps=False, reward=settings,
        )  # fmt: skip
    report_text, _, _, critique_total = critique.outputs
    image_questions = for_still_image(video_questions)
    with torch.inference_mode(False), torch.no_grad():
        trainers = reward.for_frames([0], still_image=True)(engine_frames(node_frames.cpu(), "frames"), image_questions)
    report["critique"] = {
        "critic_modes": sorted(set(modes)),
        "temporal_questions_asked": sorted(temporal_questions & set(asked)),
        "questions_asked": len(set(asked)),
        "says_still_image": "still image" in report_text,
        "total": critique_total,
        "trainer_reward": trainers.total.item(),
    }
    modes.clear()
    asked.clear()
    evaluate_node = dict(
        video_model=wire, critic=Loaded(), questions=[video_questions], lora=lora_wire, seeds=str(SEED), width=WIDTH,
        height=HEIGHT, num_frames=1, steps=STEPS, guidance_scale=CFG, reward=settings,
    )  # fmt: skip
    with torch.inference_mode(), torch.inference_mode(False):
        evaluation_text, _, win_rate = run_node(EvaluateLoRA, ctx, **evaluate_node).outputs
    base_row = next(line for line in evaluation_text.splitlines() if line.startswith(f"| {PROMPT} | {SEED} |"))
    report["evaluate"] = {
        "critic_modes": sorted(set(modes)),
        "temporal_questions_asked": sorted(temporal_questions & set(asked)),
        "questions_asked": len(set(asked)),
        "says_one_image": "one image (scored as a still image" in evaluation_text,
        "base_cell": base_row.split("|")[3].strip(),  # Sample Video's image at the same seed: node_frames
        "win_rate": win_rate,
    }
    lap("critique and evaluate")

    # 5. num_frames other than 1: refused before the text encoder or the critic runs
    class NotLoaded:
        def get(self):
            raise AssertionError("the critic was loaded before num_frames was checked")

    encoded: list[object] = []
    encode = backend.encode_prompts
    backend.encode_prompts = lambda *args, **kw: encoded.append(args) or encode(*args, **kw)
    refusals = {}
    train_node = dict(
        video_model=wire, critic=NotLoaded(), questions=[video_questions], run_name="refused", width=WIDTH,
        height=HEIGHT, num_frames=5,
    )  # fmt: skip
    for name, node, inputs in (
        ("sample", SampleVideo, {**sample_node, "num_frames": 5}),
        ("train", TrainLoRA, train_node),
        ("evaluate", EvaluateLoRA, {**evaluate_node, "critic": NotLoaded(), "num_frames": 5}),
    ):
        try:
            with torch.inference_mode(), torch.inference_mode(False):
                run_node(node, ctx, **inputs)
            refusals[name] = None
        except (DRFInputError, AssertionError) as error:  # AssertionError: the critic was loaded first
            refusals[name] = f"{type(error).__name__}: {error}"
    backend.encode_prompts = encode
    report["num_frames_refused"] = {"messages": refusals, "prompts_encoded": len(encoded)}
    lap("refusals")
    (out_dir / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
