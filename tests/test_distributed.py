"""Data-parallel training launched the way a user launches it: `accelerate launch ... -m drf_core train`.

Two CPU processes (gloo) on the tiny models must train the same LoRA as one plain process whose
`gradient_accumulation` is 2 x the launched one (the same global batch). Both runs use one thread per process
(accelerate's launcher sets OMP_NUM_THREADS=1 for its workers; the reference gets the same), so every matmul
reduces in the same order: the result is then bit-identical here, and the test allows 1e-6 on LoRA weights
(magnitude ~0.1) and 1e-5 relative on grad norms for float reduction order (e.g. a different all-reduce
order with more ranks). Not looser: with different thread counts the gradients differ by ~1e-7 relative, and
AdamW's first steps (update ~ g / |g|) magnify that into 2e-4 on near-zero weights, which would hide bugs.

A `sitecustomize` put on the workers' PYTHONPATH records every file write under the run folder per rank,
so the test sees that rank 1 writes nothing there (and rank 0 does).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file

from drf_core import cli, distributed
from drf_core.config import (
    CriticInputConfig,
    DecodeConfig,
    LoRAConfig,
    ModelsConfig,
    OptimizerConfig,
    RunConfig,
    SamplerConfig,
    TrainConfig,
    VideoSpec,
)
from drf_core.errors import DRFInputError

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a red ball on a table", "a blue cube on the floor"]
LAUNCH_TIMEOUT = 900  # seconds; a launch takes ~30 s on two idle cores

AUDIT_SITECUSTOMIZE = """
import atexit, json, os, sys

_rank, _watch, _log = os.environ.get("RANK"), os.environ.get("DRF_AUDIT_DIR"), os.environ.get("DRF_AUDIT_LOG")
if _rank is not None and _watch and _log:  # a launched worker (the launcher itself has no RANK)
    _watch = os.path.realpath(_watch)
    _writes = []
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    _PATH_EVENTS = {"os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate", "os.link",
                    "os.symlink", "shutil.copyfile"}

    def _under(path):
        try:
            path = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return path == _watch or path.startswith(_watch + os.sep)

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
            if writing and _under(path):
                _writes.append([event, os.fsdecode(path)])
        elif event in _PATH_EVENTS and any(_under(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
            target = args[1] if event == "os.rename" else args[0]  # a rename: where the file ends up
            _writes.append([event, os.fsdecode(target)])

    sys.addaudithook(_hook)
    atexit.register(lambda: open(os.path.join(_log, f"rank{_rank}.json"), "w").write(json.dumps(_writes)))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_config(tiny_models, output: Path, steps: int, accumulation: int) -> RunConfig:
    return RunConfig(
        models=ModelsConfig(str(tiny_models.wan), str(tiny_models.qwen), "fp32", "fp32", "auto", "auto"),
        train=TrainConfig(
            prompts=PROMPTS,
            steps=steps,
            gradient_accumulation=accumulation,
            video=VideoSpec(32, 32, 5),
            sampler=SamplerConfig(num_inference_steps=3, truncated_backprop_steps=1, guidance_scale=2.0),
            decode=DecodeConfig("all", 1),
            critic_input=CriticInputConfig(height=28, width=28),
            lora=LoRAConfig(rank=2, alpha=2.0),
            optimizer=OptimizerConfig(learning_rate=5e-2),
            checkpoint_interval=1,
        ),
        output_dir=str(output),
    )


def write_config(config: RunConfig, path: Path) -> Path:
    path.write_text(config.to_json())
    return path


def base_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path (gloo) even on a machine with GPUs
    env["HF_HOME"] = str(tmp / "hf_home")  # no accelerate default_config.yaml of this machine's user
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def launch(config_path: Path, tmp: Path, processes: int = 2, audit: Path | None = None) -> None:
    """`accelerate launch --multi_gpu --num_processes N -m drf_core train --config FILE`, as README says."""
    env = base_env(tmp)
    if audit is not None:
        site = tmp / "audit_site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(textwrap.dedent(AUDIT_SITECUSTOMIZE))
        audit.mkdir(exist_ok=True)
        env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
        env["DRF_AUDIT_DIR"] = json.loads(config_path.read_text())["output_dir"]
        env["DRF_AUDIT_LOG"] = str(audit)
    command = [
        sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu",
        "--num_processes", str(processes), "--num_machines", "1", "--main_process_port", str(free_port()),
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "drf_core", "train", "--config", str(config_path),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 0, f"launch failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def plain(config_path: Path, tmp: Path) -> None:
    """`python -m drf_core train --config FILE` in one process, one thread (the launched workers' count)."""
    command = [sys.executable, "-m", "drf_core", "train", "--config", str(config_path)]
    done = subprocess.run(command, cwd=REPO, env=base_env(tmp), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 0, f"plain run failed ({done.returncode}):\n{done.stderr[-6000:]}"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def checkpoint_lora(run: Path, step: int) -> dict:
    return load_file(str(run / "checkpoints" / f"step_{step:06d}" / "lora.safetensors"))


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory):
    """One process x accumulation 2 for 3 steps; two processes x accumulation 1 for 2 steps, then resumed to 3."""
    tmp = tmp_path_factory.mktemp("distributed")
    one = tmp / "one_process"
    plain(write_config(run_config(tiny_models, one, steps=3, accumulation=2), tmp / "one.json"), tmp)
    two = tmp / "two_processes"
    two_config = write_config(run_config(tiny_models, two, steps=2, accumulation=1), tmp / "two.json")
    launch(two_config, tmp, audit=tmp / "audit")
    after_two_steps = {"metrics": metrics(two), "checkpoints": sorted(p.name for p in (two / "checkpoints").iterdir())}
    write_config(run_config(tiny_models, two, steps=3, accumulation=1), two_config)
    launch(two_config, tmp)
    return {"one": one, "two": two, "tmp": tmp, "two_config": two_config, "after_two_steps": after_two_steps}


@pytest.mark.slow
def test_two_processes_train_the_same_lora_as_one_with_the_same_global_batch(runs):
    one, two = runs["one"], runs["two"]
    for step in (1, 2, 3):  # step 3 comes from the resumed launch: resume with the same world size is exact
        expected, got = checkpoint_lora(one, step), checkpoint_lora(two, step)
        assert set(got) == set(expected)
        worst = max(float((got[name] - expected[name]).abs().max()) for name in expected)
        assert worst <= 1e-6, f"step {step}: LoRA differs by {worst}"
    first = checkpoint_lora(two, 1)
    assert max(float(t.abs().max()) for t in first.values()) > 1e-3, "the LoRA must have moved for this to mean much"
    rows_one, rows_two = metrics(one), metrics(two)
    assert [r["step"] for r in rows_two] == [1, 2, 3]
    for a, b in zip(rows_one, rows_two, strict=True):
        # the gradient norm is of the summed gradient: a missing all-reduce or a wrong 1/N shows here
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
        assert b["reward"] == pytest.approx(a["reward"], rel=1e-6, abs=1e-6)
        assert b["answers"].keys() == a["answers"].keys()  # both prompts' questions: each rank had its own prompt
        assert b["answers"] == pytest.approx(a["answers"], abs=1e-6)
    state = json.loads((two / "checkpoints" / "step_000003" / "state.json").read_text())
    assert state["world_size"] == 2


@pytest.mark.slow
def test_only_rank_0_writes_files(runs):
    audit = runs["tmp"] / "audit"
    rank0 = json.loads((audit / "rank0.json").read_text())
    rank1 = json.loads((audit / "rank1.json").read_text())
    assert rank1 == [], f"rank 1 wrote into the run folder: {rank1[:5]}"
    written = {Path(path).name for _, path in rank0}  # the audit does see rank 0's writes
    expected = {"metrics.jsonl", "questions_0.json", "questions_1.json", "drf_lora.safetensors", "reward_curve.png"}
    assert expected | {"step_000001", "step_000002"} <= written, sorted(written)
    assert runs["after_two_steps"]["checkpoints"] == ["step_000001", "step_000002"]
    assert [r["step"] for r in runs["after_two_steps"]["metrics"]] == [1, 2]  # one row per step, not per rank


@pytest.mark.slow
def test_resume_with_another_world_size_is_refused(runs, tiny_models, capsys, caplog):
    two, config_path = runs["two"], runs["two_config"]
    write_config(run_config(tiny_models, two, steps=4, accumulation=1), config_path)
    before = sorted(p.name for p in (two / "checkpoints").iterdir())
    with caplog.at_level(logging.ERROR):
        code = cli.main(["train", "--config", str(config_path)])  # one plain process, no launcher
    assert code == 2
    message = caplog.text
    assert "world size 2" in message and "world size 1" in message and "--fresh" in message, message
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == before
    assert [r["step"] for r in metrics(two)] == [1, 2, 3]


def rank(index: int, world_size: int = 2) -> distributed.DataParallel:
    """A `DataParallel` for rank `index` of a CPU launch, without a process group (only the local decisions)."""
    import torch

    state = SimpleNamespace(
        num_processes=world_size, process_index=index, local_process_index=index, is_main_process=index == 0,
        device=torch.device("cpu"),
    )  # fmt: skip
    return distributed.DataParallel(state)


def test_ranks_split_every_micro_batch_exactly_once():
    for world_size in (2, 3):
        ranks = [rank(i, world_size) for i in range(world_size)]
        for micro in range(7):
            assert sum(r.owns(micro) for r in ranks) == 1


def test_devices_per_rank():
    second = rank(1)
    assert second.rank_device("auto", "models.video_device", shareable=False) == "cpu"
    assert second.rank_device("cpu", "models.critic_device", shareable=True) == "cpu"
    assert second.rank_device("cuda:3", "models.critic_device", shareable=True) == "cuda:3"  # a configured one
    with pytest.raises(DRFInputError, match="all 2 ranks would train on that one GPU"):
        second.rank_device("cuda:0", "models.video_device", shareable=False)
    single = distributed.SingleProcess()
    assert single.rank_device("cuda:1", "models.video_device", shareable=False) == "cuda:1"  # unchanged


def test_no_launcher_means_one_plain_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.process_group() as group:
        assert type(group) is distributed.SingleProcess


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_sharded_launches_are_refused(monkeypatch, variable):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(variable, "true")
    with pytest.raises(DRFInputError, match="is not supported"), distributed.process_group():
        pass
