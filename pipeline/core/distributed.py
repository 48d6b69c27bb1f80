"""Multi-process training (`train.processes` > 1): launching the workers with torchrun's launcher,
which process is rank zero, where a worker's error goes, and what a worker does differently.

The train stage (pipeline.core.train_process) becomes torchrun's agent for its own workers: `launch`
runs torch's elastic launcher in-process with `python -m pipeline.stages.train` as the worker
command, so every worker is the same stage command a manual `torchrun` would start. Each worker
holds the whole split, draws the same shuffled global batches as a single process would and trains
on its `part` of every batch; DDP all-reduces the gradients (gloo on the CPU, NCCL on CUDA). Rank
zero (the main process) alone talks to MLflow and writes outputs; the others use the base Tracker.

Nothing here imports torch at module level: with one process the train stage only asks `wanted`.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pipeline.core.params import TrainParams

# Bounds the start-up rendezvous and every collective: a peer that died without the agent noticing
# (another machine gone silent) ends the run after this long instead of hanging it. Rank 0 works
# alone between collectives for seconds at most (opening the MLflow run, a checkpoint per epoch).
TIMEOUT_SECONDS = 300
# Several machines: the stage reads these and hands them to the launcher (docs/distributed.md).
NODES_ENV, NODE_RANK_ENV, MASTER_ENV = "PIPELINE_NNODES", "PIPELINE_NODE_RANK", "PIPELINE_MASTER"
RUN_ID = (
    "pipeline-train"  # the static rendezvous keys its store by this; every node must use the same
)
ERROR_PREFIX = "PipelineError: "  # how torchelastic's error handler records our one-line errors


@dataclass(frozen=True)
class Nodes:
    """The machines a multi-process run spans, from PIPELINE_NNODES, PIPELINE_NODE_RANK,
    PIPELINE_MASTER."""

    count: int = 1
    rank: int = 0
    master: str | None = None  # host:port of node 0, where the rendezvous store listens

    @classmethod
    def from_env(cls) -> Nodes:
        """Read and check the variables (one-line errors naming the variable)."""

        def integer(name: str, default: int, low: int) -> int:
            text = os.environ.get(name, "").strip()
            if not text:
                return default
            if not text.isdigit() or int(text) < low:
                raise PipelineError(f"{name} must be an integer >= {low}, got {text!r}")
            return int(text)

        count = integer(NODES_ENV, 1, 1)
        rank = integer(NODE_RANK_ENV, 0, 0)
        master = os.environ.get(MASTER_ENV, "").strip() or None
        if count == 1:
            return cls()
        if rank >= count:
            raise PipelineError(f"{NODE_RANK_ENV} must be < {NODES_ENV} ({count}), got {rank}")
        host, _, port = (master or "").rpartition(":")
        if not host or not port.isdigit():
            raise PipelineError(
                f"{MASTER_ENV} must be HOST:PORT of node 0 when {NODES_ENV} > 1, got {master!r}"
            )
        return cls(count, rank, master)


def is_main_process(world: World | None) -> bool:
    """Whether this process is rank zero, or the only one: the one that logs to MLflow and writes
    outputs and checkpoints."""
    return world is None or world.rank == 0


def wanted(cfg: TrainParams) -> bool:
    """Whether the train stage must launch workers rather than train itself."""
    return cfg.processes > 1 or Nodes.from_env().count > 1


def launch(cfg: TrainParams, argv: Sequence[str]) -> None:
    """Run `python argv…` as `train.processes` workers on this machine (and join the other machines'
    workers when PIPELINE_NNODES > 1) under torch's elastic agent, in this process; return when all
    finished. A failed worker stops the others at once and becomes one PipelineError line."""
    import logging

    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    nodes = Nodes.from_env()
    # The agent logs a framed report per failed worker; the stage prints the one line that matters.
    agent_log = logging.getLogger("torch.distributed.elastic")
    agent_log.addHandler(logging.NullHandler())
    agent_log.propagate = False
    if nodes.count == 1:
        # What `torchrun --standalone` does: a rendezvous store on a port the OS picks, so parallel
        # runs (`dvc queue start -j 2`) cannot collide.
        # Loopback only, store and gloo alike: a one-machine run opens no port to the network.
        rendezvous: dict[str, Any] = {
            "rdzv_backend": "c10d",
            "rdzv_endpoint": "127.0.0.1:0",
            "local_addr": "127.0.0.1",
        }
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # inherited by the workers
    else:
        # Static: node 0 (the one running `dvc repro`) holds ranks 0…processes-1, so rank 0, which
        # writes the outputs, is on the machine whose DVC expects them.
        rendezvous = {
            "rdzv_backend": "static",
            "rdzv_endpoint": nodes.master,
            "rdzv_configs": {"rank": nodes.rank, "timeout": TIMEOUT_SECONDS},
        }
    # Error files and any redirected logs go to a folder removed afterwards, not a torchelastic_*
    # left in /tmp.
    with tempfile.TemporaryDirectory(prefix="train-workers-") as logs:
        specs = _logs_specs(logs, cfg.processes)
        config = LaunchConfig(
            min_nodes=nodes.count,
            max_nodes=nodes.count,
            nproc_per_node=cfg.processes,
            run_id=RUN_ID,
            max_restarts=0,  # a restarted worker would silently change what a run means
            # Local rank 0 keeps the console (progress bars, warnings). The others have nothing to
            # say but the tracebacks of collectives their peer left ("connection closed by peer")
            # when it failed: they go to files, and the stage shows the one line that explains.
            logs_specs=specs,
            **rendezvous,
        )
        try:
            elastic_launch(config, sys.executable)(*argv)
        except ChildFailedError as exc:
            raise PipelineError(_root_cause(exc, specs.dest)) from None
        except SignalException:
            raise KeyboardInterrupt from None  # the agent has stopped the workers


def _logs_specs(log_dir: str, processes: int) -> Any:
    """torchelastic's DefaultLogsSpecs (local rank 0 keeps the console, the others' stderr goes to
    files) that keeps the LogsDest it made, so that a failed worker's stderr can be read back."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std

    class KeptLogsSpecs(DefaultLogsSpecs):  # type: ignore[misc, valid-type]
        dest: Any = None

        def reify(self, envs: Any) -> Any:
            self.dest = super().reify(envs)
            return self.dest

    return KeptLogsSpecs(log_dir=log_dir, redirects={r: Std.ERR for r in range(1, processes)})


def _message(failure: Any) -> str:
    """The `Type: message` line torchelastic's error handler recorded for a worker ("" for none)."""
    message = failure.message
    return str(message.get("message", "")) if isinstance(message, dict) else ""


def _root_cause(exc: Any, dest: Any) -> str:
    """The line to show for a failed launch: a worker's own one-line error (lowest rank), else which
    worker died how, with its recorded exception or the last line of its stderr."""
    ours = sorted(r for r, f in exc.failures.items() if _message(f).startswith(ERROR_PREFIX))
    if ours:
        return _message(exc.failures[ours[0]]).removeprefix(ERROR_PREFIX)
    # The ranks the agent stopped after the first failure are not its cause (they record a broken
    # collective).
    causes = {
        r: f for r, f in exc.failures.items() if f.exitcode != -signal.SIGTERM
    } or exc.failures
    rank = min(causes, key=lambda r: (causes[r].timestamp, r))
    failure = causes[rank]
    if _message(failure):
        return f"training process rank {rank} failed: {_message(failure)}"
    how = (
        f"was killed by {failure.signal_name()}"
        if failure.exitcode < 0
        else f"exited {failure.exitcode}"
    )
    path = dest.stderrs.get(failure.local_rank) if dest is not None else None
    last = (
        [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()][-1:]
        if path
        else []
    )
    return f"training process rank {rank} {how}" + (
        f": {last[0].strip()}" if last else " (its output is above)"
    )


def record_error(exc: BaseException) -> bool:
    """In a worker, hand the one-line error to the agent (torchelastic's error file, through its
    public error handler) instead of printing it, so N identical lines become one; False when there
    is no agent."""
    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return False
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    get_error_handler().record_exception(exc)
    return True


@dataclass(frozen=True)
class World:
    """This worker's place among all of them, as torchrun's agent describes it in the
    environment."""

    rank: int
    size: int
    local_rank: int
    local_size: int

    @classmethod
    def from_env(cls) -> World | None:
        """The world of a process started by torchrun (or by `launch`); None for a plain process."""
        env = os.environ
        if "LOCAL_RANK" not in env or "WORLD_SIZE" not in env:
            return None
        return cls(
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            int(env["LOCAL_RANK"]),
            int(env["LOCAL_WORLD_SIZE"]),
        )

    def check(self, cfg: TrainParams) -> None:
        """The parameters fit the world torchrun started (a manual torchrun may disagree with
        them)."""
        if self.local_size != cfg.processes:
            raise PipelineError(
                f"train.processes is {cfg.processes}, but {self.local_size} processes were started "
                f"on this machine (torchrun --nproc-per-node); make them equal"
            )
        if isinstance(cfg.batch_size, int) and cfg.batch_size < self.size:  # auto: chosen >= it
            raise PipelineError(
                f"train.batch_size must be >= the {self.size} processes of all machines, got "
                f"{cfg.batch_size}"
            )

    def threads(self) -> int:
        """CPU threads for this worker when train.threads is 0: its share of the cores it may run
        on."""
        return max(1, len(os.sched_getaffinity(0)) // self.local_size)

    def part(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of `batch`; shares differ by at most one item."""
        import torch

        return torch.tensor_split(batch, self.size)[self.rank]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over every rank (a new tensor on `tensor`'s device)."""
        import torch.distributed as dist

        out = tensor.clone()
        if dist.get_backend() == "nccl" and not out.is_cuda:  # NCCL reduces GPU tensors only
            out = out.cuda()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(tensor.device)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (pickled; for small things such as the resumed
        checkpoint)."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def data_parallel(self, model: nn.Module, device: torch.device) -> nn.Module:
        """`model` wrapped in DDP: its backward all-reduces (averages) the gradients over the ranks.
        The optimizer keeps stepping `model`'s own parameters, which stay identical on every
        rank."""
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank: each updated them with its
        own part of the last batch, and validation and the saved weights must see one model."""
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

    def reseed(self, generator: torch.Generator) -> None:
        """Give this rank's global RNG (dropout) its own stream for the next epoch, drawn from the
        shared shuffling generator: ranks differ, runs repeat, and a resume needs no per-rank RNG
        state."""
        import torch

        base = int(torch.randint(0, 1 << 62, (1,), generator=generator))
        torch.manual_seed(base + self.rank)


def session(world: World | None, device: torch.device) -> AbstractContextManager[None]:
    """Join the process group for the duration: NCCL when training on CUDA `device`, else gloo (a
    no-op without a world)."""
    return nullcontext() if world is None else _process_group(device)


@contextmanager
def _process_group(device: torch.device) -> Iterator[None]:
    from datetime import timedelta

    import torch.distributed as dist

    cuda = device if device.type == "cuda" else None
    dist.init_process_group(
        "nccl" if cuda is not None else "gloo",
        timeout=timedelta(seconds=TIMEOUT_SECONDS),
        device_id=cuda,
    )
    try:
        yield
    finally:
        dist.destroy_process_group()
