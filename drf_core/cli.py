"""`python -m drf_core <command>`: the engine from a terminal, with progress bars.

Commands: `make-tiny-models`, `demo`, `train`, `critique`, `decompose`, `evaluate`, `export`. Each parses its
arguments, calls one function of `api` / `demo` / `decompose`, and reports through logging (the
JSON that `decompose` and `critique --json` produce goes to stdout, so it can be piped).
Bad input ends with the error's message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .errors import DRFInputError, TrainingDivergedError
from .io import save_image_atomic, write_text_atomic

logger = logging.getLogger("drf_core")

COMMANDS: dict[str, tuple[str, callable]] = {}  # type: ignore[valid-type]


def command(name: str, help_text: str):
    def decorator(function):
        COMMANDS[name] = (help_text, function)
        return function

    return decorator


class _TrainingProgress:
    """A trainer progress callback drawing a tqdm bar (opened at the first step, after loading)."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar: tqdm | None = None

    def __call__(self, event) -> None:
        if self.bar is None:
            self.bar = tqdm(total=event.total_steps, desc=self.description, unit="step", dynamic_ncols=True)
        self.bar.n = event.step
        aspects = " ".join(f"{k}={v:+.3f}" for k, v in event.metrics.get("reward_per_aspect", {}).items())
        self.bar.set_postfix_str(f"reward={event.metrics['reward']:+.4f} {aspects}")
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- commands ----------------------------------------------------------------------------------


@command("make-tiny-models", "write a tiny random Wan folder and a tiny Qwen2.5-VL folder (no download)")
def cmd_make_tiny_models(args: argparse.Namespace) -> int:
    from .tiny import write_tiny_models

    paths = write_tiny_models(args.directory, seed=args.seed)
    logger.info("tiny Wan text-to-video model: %s", paths.wan)
    logger.info("tiny Qwen2.5-VL critic:      %s", paths.qwen)
    return 0


@command("demo", "tiny models, a built-in prompt, training, before/after preview and report")
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    progress = _TrainingProgress("training")
    try:
        result = run_demo(args.out, steps=args.steps, seed=args.seed, progress=progress)
    finally:
        progress.close()
    verdict = "rose" if result.reward_after > result.reward_before else "did not rise"
    logger.info(
        "held-out reward %s: %+.4f -> %+.4f (training reward %+.4f -> %+.4f)",
        verdict,
        result.reward_before,
        result.reward_after,
        result.train_first,
        result.train_last,
    )
    for name, path in result.files.items():
        logger.info("  %-15s %s", name, path)
    return 0


@command("train", "train a LoRA from a run config file (real models from local folders)")
def cmd_train(args: argparse.Namespace) -> int:
    from .distributed import process_group

    with process_group() as parallel:
        return _train(args, parallel)


def _run_folder(configured: Path, resume: bool) -> Path:
    """`configured`, or the next free folder when starting a new run would overwrite an earlier one."""
    from .checkpoint import next_free_run_dir

    if resume or next_free_run_dir(configured) == configured:
        return configured
    logger.warning(
        "%s holds an earlier run, which is kept; the new run goes to %s", configured, next_free_run_dir(configured)
    )
    return next_free_run_dir(configured)


def _train(args: argparse.Namespace, parallel) -> int:
    """`train` in this process: the whole run, or this rank's share of a data-parallel launch (rank 0 writes)."""
    from .api import save_trained_lora, train_lora
    from .config import RunConfig, resolve_device, resolve_dtype
    from .critics import load_critic
    from .decompose import decompose
    from .memory_presets import apply_run_preset
    from .models import load_video_backend
    from .offload import HOST
    from .questions import QuestionSet
    from .reward import DRFReward

    run = apply_run_preset(RunConfig.from_file(args.config))
    resume = run.resume and not args.fresh
    output = parallel.from_main(lambda: _run_folder(Path(args.out or run.output_dir), resume))
    models = run.models
    # Several ranks: "auto" is each rank's own GPU; the critic may share a named one, the video model may not.
    video_device = resolve_device(parallel.rank_device(models.video_device, "models.video_device", shareable=False))
    critic_device = resolve_device(parallel.rank_device(models.critic_device, "models.critic_device", shareable=True))

    # With phase offload the models load into host RAM; each phase brings what it needs to its device.
    # A quantized critic loads where it runs (bitsandbytes quantizes on the GPU).
    def load_on(device: Any, movable: bool = True) -> Any:
        return HOST if movable and run.train.offload == "phase" and device.type == "cuda" else device

    video_dtype = resolve_dtype(models.video_dtype, video_device)
    backend = load_video_backend(
        models.video_model, video_dtype, load_on(video_device), weight_storage=models.video_weight_storage
    )
    backend.device = video_device
    critic_dtype = resolve_dtype(models.critic_dtype, critic_device)
    on = load_on(critic_device, models.critic_quantization == "none")
    critic = load_critic(models.critic_model, critic_dtype, on, models.critic_quantization)
    critic.device = critic_device
    if run.questions_file:
        loaded = json.loads(Path(run.questions_file).read_text(encoding="utf-8"))
        items = loaded if isinstance(loaded, list) else [loaded]
        question_sets = [QuestionSet.from_dict(item, source=run.questions_file) for item in items]
    else:  # rank 0 decomposes; every rank trains on its questions
        chat = critic if run.decomposer == "llm" else None
        question_sets = parallel.from_main(
            lambda: [decompose(p, method=run.decomposer, chat=chat) for p in run.train.prompts]
        )
    if parallel.is_main:
        output.mkdir(parents=True, exist_ok=True)
        for i, qs in enumerate(question_sets):
            qs.save(output / f"questions_{i}.json")
    progress = _TrainingProgress("training") if parallel.is_main else None
    try:
        trained = train_lora(
            backend,
            DRFReward(critic, run.train.reward, run.train.critic_input),
            question_sets,
            run.train,
            output,
            progress=progress,
            resume=resume,
            parallel=parallel,
        )
    finally:
        if progress is not None:
            progress.close()
    if not parallel.is_main:
        return 130 if trained.run.interrupted else 0
    for fmt, name in (("comfyui", "drf_lora.safetensors"), ("diffusers", "drf_lora_diffusers.safetensors")):
        path = save_trained_lora(trained.lora, output / name, trained.family, fmt)
        logger.info("LoRA (%s format): %s", fmt, path)
    save_image_atomic(trained.reward_curve(), output / "reward_curve.png")
    if trained.run.stop_reason:
        logger.warning("%s", trained.run.stop_reason)
    if trained.selected_step is not None and trained.selected_step != trained.run.final_step:
        logger.info(
            "the LoRA files hold step %d (best held-out score %+.4f), not the last step %d",
            trained.selected_step,
            trained.run.best_score,
            trained.run.final_step,
        )
    if trained.run.interrupted:
        logger.warning("stopped at step %d; run the same command again to resume", trained.run.final_step)
        return 130
    return 0


@command(
    "critique",
    "score a video (file or frames folder) or a still image against a prompt's questions, with explanations",
)
def cmd_critique(args: argparse.Namespace) -> int:
    from .api import critique_sample
    from .config import CriticInputConfig, DecodeConfig, RewardConfig
    from .critics import load_critic
    from .decompose import decompose
    from .media import load_frames, save_animation
    from .questions import QuestionSet
    from .reward import DRFReward

    critic = load_critic(args.critic, args.dtype, args.device)
    if args.questions:
        questions = QuestionSet.load(args.questions)
    else:
        if not args.prompt:
            raise DRFInputError("give --prompt (to decompose) or --questions FILE")
        questions = decompose(args.prompt, method=args.decomposer, chat=critic if args.decomposer == "llm" else None)
    frames = load_frames(args.video)
    if args.max_frames < 1:
        raise DRFInputError(f"--max-frames must be at least 1, got {args.max_frames}")
    # Up to --max-frames frames spread over a video; a still image (one frame) as a picture, without motion questions.
    decode = DecodeConfig("uniform", min(args.max_frames, len(frames)))
    visual = CriticInputConfig(height=args.size, width=args.size, video_fps=args.video_fps)
    result = critique_sample(
        DRFReward(critic, RewardConfig(), visual),
        frames,
        questions,
        decode,
        visual,
        explain_with=None if args.no_explain else critic,
        heatmaps=bool(args.out),
    )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        save_image_atomic(result.chart(), out / "scores.png")
        write_text_atomic(out / "critique.md", result.report())
        for aspect, heat in result.heatmaps.items():
            save_animation(heat, out / f"heatmap_{aspect}.gif")
        logger.info("wrote scores.png, critique.md and heatmap_*.gif to %s", out)
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(result.report() + "\n")
    return 0


@command("decompose", "print the QuestionSet JSON for a prompt")
def cmd_decompose(args: argparse.Namespace) -> int:
    from .chat_models import load_chat_model
    from .decompose import decompose_with_report

    chat = load_chat_model(args.model, args.dtype, args.device) if args.model else None
    result = decompose_with_report(args.prompt, method=args.method, chat=chat, max_new_tokens=args.max_new_tokens)
    logger.info("%s", result.summary())
    questions = result.question_set
    if args.out:
        questions.save(args.out)
        logger.info("wrote %s", args.out)
    sys.stdout.write(questions.to_json() + "\n")
    return 0


@command("evaluate", "base model vs a LoRA on prompts x seeds: per-aspect intervals, win rate, question changes")
def cmd_evaluate(args: argparse.Namespace) -> int:
    from .api import load_lora
    from .config import CriticInputConfig, DecodeConfig, EvaluateConfig, SamplerConfig, VideoSpec
    from .critics import load_critic
    from .decompose import decompose
    from .evaluate import evaluate_lora, parse_seeds
    from .models import load_video_backend

    question_sets = _question_sets(args.questions) if args.questions else []
    question_sets += [decompose(prompt, method="rules") for prompt in args.prompt or []]
    if not question_sets:
        raise DRFInputError("give --prompt (one or more, e.g. held-out prompts) or --questions FILE")
    critic_input = CriticInputConfig()
    if args.critic_size:
        critic_input = CriticInputConfig(height=args.critic_size, width=args.critic_size)
    config = EvaluateConfig(
        seeds=parse_seeds(args.seeds, "--seeds"),
        negative_prompt=args.negative_prompt,
        strength=args.strength,
        video=VideoSpec(height=args.height, width=args.width, num_frames=args.frames),
        sampler=SamplerConfig(num_inference_steps=args.steps, guidance_scale=args.guidance),
        decode=DecodeConfig(frame_selection_count=args.frames_scored),
        critic_input=critic_input,
        interval=args.interval,
        confidence=args.confidence,
    )
    config.validate()
    backend = load_video_backend(args.video_model, args.dtype, args.device)
    critic = load_critic(args.critic, args.dtype, args.device)
    lora = load_lora(args.lora, backend.family)
    bar = tqdm(total=2 * len(question_sets) * len(config.seeds), desc="videos", unit="video", dynamic_ncols=True)
    try:
        evaluation = evaluate_lora(backend, critic, question_sets, lora, config, progress=lambda done, _: bar.update(1))
    finally:
        bar.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "evaluation.md", evaluation.report())
    save_image_atomic(evaluation.chart(), out / "evaluation.png")
    write_text_atomic(out / "evaluation.json", json.dumps(evaluation.to_dict(), indent=2) + "\n")
    logger.info("%s", evaluation.summary())
    logger.info("wrote evaluation.md, evaluation.png and evaluation.json to %s", out)
    return 0


def _question_sets(path: str) -> list:
    from .questions import QuestionSet

    loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    items = loaded if isinstance(loaded, list) else [loaded]
    return [QuestionSet.from_dict(item, source=path) for item in items]


@command("export", "convert a LoRA file between formats (comfyui, diffusers)")
def cmd_export(args: argparse.Namespace) -> int:
    from .api import export_lora

    path = export_lora(args.lora, args.out, args.to, family=args.family)
    logger.info("wrote %s (%s format)", path, args.to)
    return 0


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from .config import DecodeConfig
    from .decompose import DECOMPOSERS
    from .lora import LORA_FORMATS

    parser = argparse.ArgumentParser(prog="python -m drf_core", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    parsers = {name: sub.add_parser(name, help=help_text) for name, (help_text, _) in COMMANDS.items()}

    p = parsers["make-tiny-models"]
    p.add_argument("directory", help="where to write wan/ and qwen2_5_vl/")
    p.add_argument("--seed", type=int, default=0)

    p = parsers["demo"]
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--steps", type=int, default=30, help="training steps (default: 30)")
    p.add_argument("--seed", type=int, default=0)

    p = parsers["train"]
    p.add_argument("--config", required=True, help="run config JSON (see README)")
    p.add_argument("--out", help="output folder (default: the config's output_dir)")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start a new run; an earlier run in the output folder is kept and the new one goes to <out>_2",
    )

    p = parsers["critique"]
    p.add_argument("--critic", required=True, help="local Qwen2.5-VL folder")
    p.add_argument(
        "--video",
        required=True,
        help="video file, animated GIF/WebP, folder of frames, or a still image (a picture: no motion questions)",
    )
    p.add_argument("--prompt", help="the prompt the video was made from")
    p.add_argument("--questions", help="a QuestionSet JSON file instead of --prompt")
    p.add_argument("--decomposer", default="rules", choices=DECOMPOSERS.names())
    p.add_argument(
        "--size",
        type=int,
        default=0,
        help="square VLM input size, a multiple of 28; 0 (default): the model's own size rule, aspect ratio kept",
    )
    p.add_argument(
        "--max-frames", type=int, default=8, help="frames scored, evenly spaced over the whole video (default 8)"
    )
    p.add_argument("--video-fps", type=float, default=16.0, help="the video's frame rate (default 16, Wan's)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-explain", action="store_true", help="skip the critic's free-text answers")
    p.add_argument("--out", help="folder for scores.png, critique.md and gradient heatmaps")
    p.add_argument("--json", action="store_true", help="print JSON instead of the markdown report")

    p = parsers["decompose"]
    p.add_argument("--prompt", required=True)
    p.add_argument("--method", default="rules", choices=DECOMPOSERS.names())
    p.add_argument(
        "--model", help="for --method llm: a local vision-language model folder (the critic's) or instruct LLM folder"
    )
    p.add_argument("--max-new-tokens", type=int, default=1024, help="the longest reply of the language model")
    p.add_argument("--dtype", default="auto", help="the language model's dtype (auto, bf16, fp16, fp32)")
    p.add_argument("--device", default="auto", help="the language model's device (auto, cpu, cuda, cuda:N)")
    p.add_argument("--out", help="also save the JSON to this file")

    p = parsers["evaluate"]
    p.add_argument("--video-model", required=True, help="local diffusers Wan folder (the base model)")
    p.add_argument("--critic", required=True, help="local Qwen2.5-VL folder")
    p.add_argument("--lora", required=True, help="the LoRA .safetensors file to judge")
    p.add_argument("--prompt", action="append", help="a prompt to evaluate (repeat for several; held-out ones)")
    p.add_argument("--questions", help="a QuestionSet JSON file (or a list of them) instead of / besides --prompt")
    p.add_argument("--seeds", default="0,1,2,3", help="comma-separated seeds (default 0,1,2,3)")
    p.add_argument("--strength", type=float, default=1.0, help="LoRA strength (default 1.0)")
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--critic-size", type=int, default=0, help="critic input size (default: the reward default)")
    p.add_argument(
        "--frames-scored",
        type=int,
        default=DecodeConfig().frame_selection_count,
        help="frames the critic scores, spread over the clip (default: the reward default; at most --frames)",
    )
    p.add_argument("--interval", default="t", choices=("t", "bootstrap"), help="t (default) or bootstrap")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="evaluation", help="folder for evaluation.md/.png/.json (default: evaluation)")

    p = parsers["export"]
    p.add_argument("--lora", required=True, help="LoRA .safetensors file (any supported layout)")
    p.add_argument("--to", required=True, choices=LORA_FORMATS.names())
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--family", help="model family, if the file's header does not say (e.g. wan)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("httpx", "urllib3", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _, function = COMMANDS[args.command]
    try:
        return function(args)
    except (DRFInputError, TrainingDivergedError) as error:
        logger.error("%s", error)
        return 2
    except KeyboardInterrupt:
        logger.warning("interrupted")
        return 130
