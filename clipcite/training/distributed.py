"""Data parallelism on PyTorch's own engine: ``torch.distributed`` ranks launched by ``torchrun``.

A run is distributed when a process group is initialised (:func:`process_group`, from torchrun's ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``); without one every helper here is the identity, so the single-process path is the
code that always ran. What the rest of clipcite needs:

- training: :func:`data_parallel` (DistributedDataParallel around the two towers), :class:`RankBatches` (this rank's
  contiguous part of every global batch) and :func:`gather` (the global batch's features, gradients flowing back to
  the rows this rank computed);
- teacher caching and evaluation: :func:`shard_batches` (whole batches of the one-process run, dealt round-robin,
  so every image is computed in the same batch as without ranks) and :func:`combine` (the parts of all ranks);
- :func:`is_main` (rank 0 alone writes files and talks to MLflow), :func:`broadcast` (one rank's decision for all);
- :func:`relaunch_in_ranks`: a step function that reruns itself under ``torch.distributed.run --standalone`` with
  every argument it was called with when ``CLIPCITE_NPROC_PER_NODE`` (the pipeline's, or ``clipcite ...
  --nproc-per-node N`` through :func:`add_ranks_argument`) asks for ranks, and returns rank 0's result (:func:`launch`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import inspect
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

NPROC_ENV = "CLIPCITE_NPROC_PER_NODE"  # >1: a step's run() relaunches itself with this many ranks


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (or no process group): the one process that writes outputs, checkpoints and MLflow records."""
    return rank() == 0


@contextlib.contextmanager
def process_group(device: str) -> Iterator[None]:
    """Join torchrun's process group for the duration (``nccl`` on CUDA, ``gloo`` on CPU) and leave it after.

    Does nothing in a single process (no ``WORLD_SIZE`` > 1) or when a group already exists (the caller owns it).
    On CUDA each rank takes the GPU of its ``LOCAL_RANK`` as its current device, so ``"cuda"`` means that one.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    log.info("rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), dist.get_backend())
    try:
        yield
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------- training


class _Towers(torch.nn.Module):
    """Both encoders behind one ``forward``: DDP synchronises gradients only of work done through its forward, once
    per backward, so the image and text features of a step come from a single call."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, tokens: torch.Tensor | None):
        return encode(self.model, images, tokens)


def data_parallel(model: torch.nn.Module, *, uses_text: bool) -> torch.nn.Module:
    """``model`` itself in one process, else DistributedDataParallel over its two towers (call it through
    :func:`encode`). Parameters must already have their final ``requires_grad``; ``uses_text=False`` (L_DVA only)
    leaves the text tower out of every backward, which DDP must be told."""
    if world_size() == 1:
        return model
    device_ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
    return torch.nn.parallel.DistributedDataParallel(
        _Towers(model), device_ids=device_ids, find_unused_parameters=not uses_text
    )


def encode(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor | None):
    """(image features, text features of ``tokens`` or None) through DDP when ``model`` is wrapped."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model(images, tokens)
    return model.encode_image(images), (None if tokens is None else model.encode_text(tokens))


def part_sizes(n: int) -> list[int]:
    """How many rows each rank holds, given this rank's ``n`` (one small all-gather; ``[n]`` in one process)."""
    if world_size() == 1:
        return [n]
    sizes = [torch.zeros(1, dtype=torch.long, device=_comm_device()) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([n], device=_comm_device()))
    return [int(s) for s in sizes]


class _Gather(torch.autograd.Function):
    """All ranks' rows in rank order. Backward: every rank holds the same global loss, so the gradient of the rows
    this rank computed is summed over the ranks' copies (all-reduce) and the local slice returned; that sum is the
    world-size factor that makes DDP's *average* of the ranks' gradients equal to the one-process gradient, while
    parameters the loss reaches without the gather (the head W, text features encoded on every rank) get the full
    gradient on every rank, whose average is itself."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def gather(local: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """The global batch from every rank's ``local`` rows (``sizes`` from :func:`part_sizes`), differentiable."""
    if world_size() == 1:
        return local
    return _Gather.apply(local, tuple(sizes))


class RankBatches:
    """This rank's contiguous part of every batch of ``sampler`` (a batch sampler of the global batches): the
    global order is the one-process order, the parts differ in size by at most one, and gathering them in rank
    order gives the global batch back."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __iter__(self):
        size, me = world_size(), rank()
        for batch in self.sampler:
            if len(batch) < size:
                raise ValueError(
                    f"a batch of {len(batch)} image(s) cannot be split over {size} ranks (every rank needs at least "
                    "one): lower the number of ranks, or change train.batch_size so that no batch, the last one of "
                    "an epoch included, is smaller than the number of ranks"
                )
            bounds = [len(batch) * r // size for r in range(size + 1)]
            yield batch[bounds[me] : bounds[me + 1]]

    def __len__(self) -> int:
        return len(self.sampler)


def total(count: float) -> float:
    """The sum over ranks of a per-rank count (e.g. images processed)."""
    if world_size() == 1:
        return count
    return float(combine(torch.tensor([float(count)], dtype=torch.float64)))  # the same all-reduce sum


# ---------------------------------------------------------------------------------------- teacher and evaluation


def shard_batches(n: int, batch_size: int) -> list[list[int]]:
    """This rank's batches of the one-process run over ``n`` items in order: batch k goes to rank k mod world size,
    so each image is computed in the same batch as without ranks (bit-identical features on the same hardware)."""
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    return batches[rank() :: world_size()]


def combine(part: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank, from parts each rank wrote into a zero tensor of the full shape (disjoint
    rows): an all-reduce sum, exact because every element is its one rank's value plus zeros."""
    if world_size() == 1:
        return part
    whole = part.to(_comm_device()).contiguous()
    dist.all_reduce(whole)
    return whole.to(part.device)


def barrier() -> None:
    """Wait for every rank (e.g. for rank 0 to finish writing a step's outputs before any rank returns)."""
    if world_size() > 1:
        dist.barrier()


def broadcast(value):
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


# ---------------------------------------------------------------------------------------------------- launching


def requested_ranks() -> int:
    """Ranks asked for by ``CLIPCITE_NPROC_PER_NODE`` when this process is not a rank already (else 1)."""
    if "WORLD_SIZE" in os.environ:
        return 1
    raw = os.environ.get(NPROC_ENV, "1") or "1"
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{NPROC_ENV}={raw!r}: must be a whole number of ranks (1 = no torchrun)") from None
    if n < 1:
        raise ValueError(f"{NPROC_ENV}={n}: must be at least 1")
    return n


class _RanksFlag(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None) -> None:
        if not str(value).isdigit() or int(value) < 1:
            raise ValueError(f"--nproc-per-node {value!r}: give the number of ranks (processes) to start, e.g. 2")
        os.environ[NPROC_ENV] = str(int(value))
        setattr(namespace, self.dest, int(value))


def add_ranks_argument(parser: argparse.ArgumentParser) -> None:
    """``--nproc-per-node N`` on a step's command line. It asks for ranks the way the pipeline does, through
    ``CLIPCITE_NPROC_PER_NODE``, so :func:`requested_ranks` is the one place a step reads the count from."""
    parser.add_argument(
        "--nproc-per-node",
        action=_RanksFlag,
        metavar="N",
        help=f"N data-parallel torchrun ranks on this machine (default: ${NPROC_ENV}, else 1)",
    )


Step = TypeVar("Step", bound=Callable[..., Any])


def relaunch_in_ranks(*, local_only: tuple[str, ...] = ()) -> Callable[[Step], Step]:
    """Decorate a step function that joins the ranks' process group itself: called with more than one rank asked
    for (:func:`requested_ranks`), it runs again in that many ranks (:func:`launch`) with every argument of the
    call, bound to its signature so that a parameter added later travels without being named here, and returns rank
    0's result. In a rank already, or with one rank, it is the function as written.

    ``local_only``: parameters whose values cannot leave this process (a callback into it); the ranks run with
    their defaults, and a value given for one is dropped with a warning. Any other argument that cannot be pickled
    stops the call before a rank starts, naming the parameter."""

    def decorate(function: Step) -> Step:
        signature = inspect.signature(function)
        for name in local_only:
            parameter = signature.parameters.get(name)
            if parameter is None or parameter.default is inspect.Parameter.empty:
                raise TypeError(f"{function.__qualname__}: local_only {name!r} must be a parameter with a default")

        @functools.wraps(function)
        def relaunching(*args: Any, **kwargs: Any) -> Any:
            ranks = requested_ranks()
            if ranks == 1:
                return function(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            for name in local_only:
                if bound.arguments.pop(name, None) is not None:
                    log.warning(
                        "%s: %s stays in this process; the %d ranks run without it", function.__name__, name, ranks
                    )
            for name, value in bound.arguments.items():
                try:
                    pickle.dumps(value)
                except Exception as e:
                    raise TypeError(
                        f"{function.__qualname__}: argument {name!r} cannot travel to the ranks ({e}); name it in "
                        "relaunch_in_ranks(local_only=...) if the ranks can do without it"
                    ) from e
            return launch(relaunching, *bound.args, nproc=ranks, **bound.kwargs)

        return cast(Step, relaunching)

    return decorate


def launch(function, *args, nproc: int, **kwargs):
    """``function(*args, **kwargs)`` in ``nproc`` ranks on this machine (``python -m torch.distributed.run
    --standalone``), returning rank 0's result. ``function`` must be importable by name and set up the process
    group itself (the steps' ``run`` do); arguments and result travel pickled through a private temp folder."""
    with tempfile.TemporaryDirectory(prefix="clipcite-ranks-") as tmp:
        call, result = Path(tmp, "call.pkl"), Path(tmp, "result.pkl")
        call.write_bytes(pickle.dumps((_importable_module(function), function.__qualname__, args, kwargs)))
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            __name__,
            str(call),
            str(result),
        ]
        log.info("launching %d ranks: %s", nproc, " ".join(command))
        env = {k: v for k, v in os.environ.items() if k != NPROC_ENV}
        done = subprocess.run(command, env=env, check=False)
        if done.returncode != 0 or not result.is_file():
            raise RuntimeError(
                f"{function.__module__}.{function.__qualname__} failed under torchrun with {nproc} ranks (exit code "
                f"{done.returncode}); the ranks' errors are in the log above"
            )
        return pickle.loads(result.read_bytes())


def _importable_module(function) -> str:
    """The module the ranks import ``function`` from: its own, or, for a step run as ``python -m
    clipcite.steps.<step>`` (where it is ``__main__``), the name it was run by."""
    if function.__module__ != "__main__":
        return str(function.__module__)
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None:
        raise ValueError(f"{function.__qualname__}: a script's function cannot run in ranks; run it with python -m")
    return str(spec.name)


def _rank_main(call: str, result: str) -> None:
    module, qualname, args, kwargs = pickle.loads(Path(call).read_bytes())
    function = importlib.import_module(module)
    for name in qualname.split("."):
        function = getattr(function, name)
    value = function(*args, **kwargs)
    if int(os.environ.get("RANK", "0")) == 0:
        tmp = Path(result).with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(value))
        os.replace(tmp, result)


if __name__ == "__main__":
    from clipcite.logs import setup_logging

    setup_logging()
    _rank_main(*sys.argv[1:3])
