"""Train LoRA with the guard settings of Training Options, and Evaluate LoRA, through the local host."""

from __future__ import annotations

import pytest

from tests.conftest import NODE_PROMPT
from tests.conftest import run_node as run

PACK_NAME = "comfyui_diffusiondrf"
PROMPT = NODE_PROMPT
SMALL_VIDEO = {"width": 32, "height": 32, "num_frames": 5}
SMALL_TRAIN = {
    **SMALL_VIDEO,
    "num_inference_steps": 2,
    "truncated_backprop_steps": 1,
    "lora_rank": 4,
    "lora_alpha": 4.0,
    "learning_rate": 3e-2,
    "checkpoint_interval": 0,
}


def test_train_with_held_out_monitoring_early_stop_and_drift(pack_nodes, local, ctx, loaded):
    options = run(
        pack_nodes, local, ctx, "DRFTrainingOptions", held_out_every=1, held_out_seeds="7",
        held_out_prompts="a green cube on a white floor", early_stop_patience=1, early_stop_min_delta=10.0,
        drift_weight=1.0,
    ).outputs[0]  # fmt: skip
    result = run(pack_nodes, local, ctx, "DRFTrainLoRA", steps=4, seed=1, run_name="guarded", options=options,
                 **loaded, **SMALL_TRAIN)  # fmt: skip
    lora, curve, _, metrics = result.outputs
    assert [row["step"] for row in metrics] == [0, 1]  # step 0: the evaluation before training
    assert {"reward", "questions_reward", "prompts_reward", "question_gap"} <= set(metrics[1]["held_out"])
    assert "drift" in metrics[1]
    assert "early stop at step 1" in result.text and "held-out reward" in result.text
    assert "the LoRA returned is step 0's" in result.text
    assert all(float(w.up.abs().max()) == 0.0 for w in lora.weights.modules.values())  # step 0: B = 0
    assert "held-out reward" in ctx.texts[-1] and "drift from the base model" in ctx.texts[-1]
    assert curve.shape[1] > 600  # two panels: training and held-out


def test_training_options_refuse_bad_guard_settings(pack_nodes, local, ctx, loaded):
    from comfyui_diffusiondrf.drf_core.errors import DRFInputError

    options = run(pack_nodes, local, ctx, "DRFTrainingOptions", held_out_every=0, early_stop_patience=2).outputs[0]
    with pytest.raises(DRFInputError, match="early stop needs held-out monitoring"):
        run(pack_nodes, local, ctx, "DRFTrainLoRA", steps=1, options=options, **loaded, **SMALL_TRAIN)
    with pytest.raises(DRFInputError, match="held_out_seeds"):  # refused on Training Options itself
        run(pack_nodes, local, ctx, "DRFTrainingOptions", held_out_every=2, held_out_seeds="1, x")
    with pytest.raises(DRFInputError, match="held_out_questions"):
        run(pack_nodes, local, ctx, "DRFTrainingOptions", held_out_questions="no-such-method")


def test_evaluate_node_reports_and_ties_at_strength_zero(pack_nodes, local, ctx, loaded):
    trained = run(pack_nodes, local, ctx, "DRFTrainLoRA", steps=1, seed=1, run_name="e", **loaded, **SMALL_TRAIN)
    inputs = dict(
        video_model=loaded["video_model"], critic=loaded["critic"], questions=loaded["questions"],
        lora=trained.outputs[0], reward=loaded["reward"], seeds="3, 4", steps=2, **SMALL_VIDEO,
    )  # fmt: skip
    result = run(pack_nodes, local, ctx, "DRFEvaluateLoRA", lora_strength=0.0, **inputs)
    report, chart, win_rate = result.outputs
    assert win_rate == 0.5 and "(0 wins, 2 ties, 0 losses)" in report and result.text == report
    assert chart.ndim == 4 and chart.shape[-1] == 3
    assert [v for v, _, _ in ctx.progress_calls][-1] == 4  # 2 seeds x (base, LoRA)
    result = run(pack_nodes, local, ctx, "DRFEvaluateLoRA", lora_strength=1.0, **inputs)
    assert 0.0 <= result.outputs[2] <= 1.0 and "| TA |" in result.outputs[0]
