"""Data-parallel training over several processes (one per GPU): who does what, and the collectives.

`process_group()` is what a training entry point opens. Run as one ordinary process (no launcher, or a
launcher with one process) it yields a `SingleProcess`, whose hooks do nothing, so the trainer behaves
exactly as without this module. Started by `accelerate launch` (or `torchrun`) with N > 1 processes it
initializes torch.distributed through accelerate's `PartialState` (nccl on CUDA, each rank on
`cuda:{local_rank}`; gloo on the CPU) and yields a `DataParallel`:

- The global batch of one optimizer step is `world_size x gradient_accumulation` micro-batches of
  `videos_per_step` videos: N ranks with accumulation A train exactly what one process with accumulation
  N x A trains. Every rank draws the noise and K of every global micro-batch from the same seeded
  generator (cheap: a latent-sized tensor each), and computes only its own (`owns`: micro-batch g
  belongs to rank g mod N), so the generator stays identical on every rank and a checkpoint written by
  rank 0 resumes all of them.
- The LoRA gradients (nothing else: the base model is frozen) are summed over the ranks in one flat
  all-reduce; each rank divides its loss by the global micro-batch count, so the sum is the mean.
- Per-step results (rewards, answers) are gathered in global micro-batch order, so every rank logs
  and decides the same; the held-out evaluation and the prompt decomposition run on rank 0 alone and
  are broadcast (`from_main`).
- Rank 0 alone writes files (`is_main`) and logs below ERROR.

Knows torch.distributed and accelerate's launch environment; nothing about models, rewards or files.
FSDP and DeepSpeed launches are refused (not supported: every rank holds the whole video model).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch

from .errors import DRFInputError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Ranks wait in a collective while rank 0 alone decomposes prompts with a language model or scores the
# held-out videos; torch's default (10-30 min) could be shorter than that on a large model.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)

# accelerate launch sets these for sharded engines, which this trainer does not implement.
_UNSUPPORTED_ENGINES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}


class SingleProcess:
    """One process does everything; every hook is the identity (the trainer's behaviour without a launcher)."""

    world_size = 1
    rank = 0
    is_main = True

    def owns(self, global_micro_batch: int) -> bool:
        """Whether this process computes micro-batch `global_micro_batch` of a step."""
        return True

    def rank_device(self, setting: str, what: str, shareable: bool) -> str:
        """The device setting this rank uses for `what` (e.g. `models.video_device`)."""
        return setting

    def all_finite(self, finite: bool) -> bool:
        """True when the step's loss was finite on every rank (any rank's failure skips the step everywhere)."""
        return finite

    def sum_gradients(self, parameters: Sequence[torch.Tensor]) -> None:
        """Sum the parameters' gradients over the ranks (missing gradients count as zeros)."""

    def broadcast_parameters(self, parameters: Sequence[torch.Tensor]) -> None:
        """Copy rank 0's values into every rank's `parameters`."""

    def gather(self, value: T) -> list[T]:
        """Every rank's `value` (picklable), in rank order, on every rank."""
        return [value]

    def from_main(self, make: Callable[[], T]) -> T:
        """Run `make` on rank 0 alone and give every rank its result (or raise its error on every rank)."""
        return make()

    def seed_step(self, seed: int, step: int) -> None:
        """Seed the global torch RNG (dropout) per rank and step, so ranks differ and resumes repeat."""

    def barrier(self) -> None:
        """Wait until every rank got here."""


class DataParallel(SingleProcess):
    """One of `world_size` processes launched by accelerate/torchrun; see the module docstring."""

    def __init__(self, state: Any) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.state = state
        self.world_size = state.num_processes
        self.rank = state.process_index
        self.local_rank = state.local_process_index
        self.is_main = state.is_main_process
        # Where collectives run: nccl needs CUDA tensors, gloo takes CPU tensors.
        self.device = torch.device(state.device) if state.device.type == "cuda" else torch.device("cpu")

    def owns(self, global_micro_batch: int) -> bool:
        return global_micro_batch % self.world_size == self.rank

    def rank_device(self, setting: str, what: str, shareable: bool) -> str:
        if setting in ("auto", "cuda"):
            return str(self.device)
        if not shareable and setting.startswith("cuda:"):
            raise DRFInputError(
                f"{what} is {setting!r}, so all {self.world_size} ranks would train on that one GPU; set it to "
                f"'auto' (rank r uses cuda:r) when launching several processes"
            )
        return setting

    def all_finite(self, finite: bool) -> bool:
        flag = torch.tensor([1.0 if finite else 0.0], device=self.device)
        self.dist.all_reduce(flag, op=self.dist.ReduceOp.MIN)
        return bool(flag.item() == 1.0)

    def sum_gradients(self, parameters: Sequence[torch.Tensor]) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.detach().reshape(-1).to(self.device, torch.float32) for g in grads])
        self.dist.all_reduce(flat, op=self.dist.ReduceOp.SUM)
        offset = 0
        for param in parameters:
            count = param.numel()
            param.grad = flat[offset : offset + count].view_as(param).to(param.device, param.dtype)
            offset += count

    def broadcast_parameters(self, parameters: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            for param in parameters:
                buffer = param.detach().to(self.device, copy=True)
                self.dist.broadcast(buffer, src=0)
                param.copy_(buffer.to(param.device))

    def gather(self, value: T) -> list[T]:
        gathered: list[Any] = [None] * self.world_size
        self.dist.all_gather_object(gathered, value)
        return gathered

    def from_main(self, make: Callable[[], T]) -> T:
        outcome: list[Any] = [None]
        if self.is_main:
            try:
                outcome[0] = ("value", make())
            except Exception as error:  # every rank raises it, instead of waiting for a result forever
                outcome[0] = ("error", error)
        self.dist.broadcast_object_list(outcome, src=0)
        kind, payload = outcome[0]
        if kind == "error":
            raise payload
        return payload

    def seed_step(self, seed: int, step: int) -> None:
        torch.manual_seed(((seed * 1_000_003 + step) * 4096 + self.rank) % 2**63)  # any seed, any rank

    def barrier(self) -> None:
        self.dist.barrier()


def launched_world_size() -> int:
    """How many processes the launcher (accelerate launch, torchrun) started; 1 without a launcher."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


@contextlib.contextmanager
def process_group() -> Iterator[SingleProcess]:
    """`SingleProcess` without a multi-process launcher, else a `DataParallel` for this rank (closed after)."""
    if launched_world_size() <= 1:
        yield SingleProcess()
        return
    for variable, engine in _UNSUPPORTED_ENGINES.items():
        if os.environ.get(variable, "false").lower() == "true":
            raise DRFInputError(
                f"{engine} is not supported: training is data-parallel, every process holds the whole video "
                "model; launch without it (accelerate launch --multi_gpu --num_processes N -m drf_core train ...)"
            )
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available(), timeout=COLLECTIVE_TIMEOUT)
    group = DataParallel(state)
    if not group.is_main:  # rank 0 speaks for the run; other ranks still report errors
        logging.getLogger("drf_core").setLevel(logging.ERROR)
    logger.info("data-parallel training on %d processes (%s)", group.world_size, state.backend)
    finished = False
    try:
        yield group
        finished = True
    finally:
        if finished:
            group.barrier()  # no rank leaves before rank 0 has written its files
        state.destroy_process_group()
