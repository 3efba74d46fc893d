"""Run one list of images over several processes started by ``accelerate launch`` (GPUs, nodes, or CPU processes).

    accelerate launch --num_processes 8 -m metricgold_engine predict photos/ --model M --out out/
    accelerate launch --num_processes 8 -m trainer eval --model A --model B --dataset nyuv2 --data-root R --out res/

Every process builds the same ordered list of work items and takes a disjoint shard of it: items ``rank``,
``rank + P``, ``rank + 2P``... (strided, so that neighbouring, similar-sized images spread evenly). Each item's
result depends only on the item (a fixed seed per image, not a random state that runs on), so the files and
numbers equal those of a single-process run. Results are gathered to every process with accelerate's
``gather_object``; only the main process prints, writes summaries and shows the one progress bar.

Without ``accelerate launch`` (``WORLD_SIZE`` unset or 1) nothing here imports accelerate or torch: a plain run is
one shard holding everything.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .core.errors import MetricGoldError

__all__ = ["Shard", "ShardingError", "current_shard", "map_sharded"]

T = TypeVar("T")


class ShardingError(MetricGoldError, RuntimeError):
    """Several processes were asked for but cannot be set up (accelerate missing, rendezvous failed)."""


@dataclass
class Shard:
    """This process's place among ``count`` processes (``index`` 0 is the main one)."""

    index: int = 0
    count: int = 1
    state: Any = None  # accelerate's PartialState when there are several processes
    local_index: int = 0

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def indices(self, n: int) -> range:
        """The items of an ``n``-item list this process handles."""
        return range(self.index, n, self.count)

    def gather(self, items: list[Any]) -> list[Any]:
        """Every process's ``items`` concatenated (in process order), on every process. A collective call: every
        process must make it, the same number of times."""
        if self.count == 1:
            return list(items)
        from accelerate.utils import gather_object  # type: ignore[import-untyped]

        return list(gather_object(list(items)))

    def device(self, requested: str = "auto") -> str:
        """The device this process should load the model on. With several processes, ``auto`` and a bare ``cuda``
        (or ``xpu``) mean this process's own accelerator (``cuda:LOCAL_RANK``), not all on the first one."""
        if self.count == 1 or self.state is None:
            return requested
        own = str(self.state.device)
        if requested == "auto":
            return own if not own.startswith("cpu") else "cpu"
        if requested in ("cuda", "xpu") and own.startswith(requested):
            return own
        return requested

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the body on the main process first, then on the others (a Hub download happens once, the others
        then read the cache)."""
        if self.count > 1 and self.state is not None:
            with self.state.main_process_first():
                yield
        else:
            yield

    def wait(self) -> None:
        """Block until every process gets here."""
        if self.count > 1 and self.state is not None:
            self.state.wait_for_everyone()


def _has_accelerator() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return bool(torch.cuda.is_available() or (mps is not None and mps.is_available())
                or (xpu is not None and xpu.is_available()))


_CURRENT: Shard | None = None


def current_shard() -> Shard:
    """This process's shard: the whole list in a plain run; under ``accelerate launch`` (``WORLD_SIZE`` > 1) its
    part, with the process group set up (gloo on CPUs, NCCL on GPUs). The same object on every call."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    if world <= 1:
        _CURRENT = Shard()
        return _CURRENT
    try:
        from accelerate import PartialState  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ShardingError(
            f"WORLD_SIZE={world}: running over several processes needs accelerate (pip install accelerate, or "
            "pip install 'metricgold[train]')") from exc
    try:
        # Without a GPU backend, accelerate must be told it is on CPUs to run several processes over gloo.
        state = PartialState(cpu=not _has_accelerator())
    except (RuntimeError, ValueError) as exc:
        raise ShardingError(f"could not join the {world} processes started by accelerate launch: {exc}") from exc
    _CURRENT = Shard(int(state.process_index), int(state.num_processes), state, int(state.local_process_index))
    return _CURRENT


def map_sharded(
    items: Sequence[T],
    work: Callable[[int, T], Any],
    shard: Shard | None = None,
    *,
    desc: str = "images",
    progress: bool = True,
) -> list[tuple[int, Any]]:
    """``[(i, work(i, items[i])), ...]`` for every item, each computed by exactly one process, gathered on every
    process and sorted by ``i``. ``work`` must not raise for a bad item (return a failure record instead):
    a process that dies leaves the others waiting until the launcher ends them.

    One tqdm bar, on the main process only; it counts the main process's items times the number of processes
    (the shards are strided, so the others are about as far).
    """
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    shard = shard or current_shard()
    n = len(items)
    mine = shard.indices(n)
    bar = tqdm(total=n, desc=desc, unit="img", disable=not (progress and shard.is_main), file=sys.stderr)
    results = []
    done = 0
    for i in mine:
        results.append((i, work(i, items[i])))
        step = min(shard.count, n - done)
        done += step
        bar.update(step)
    bar.close()
    gathered = shard.gather(results)
    gathered.sort(key=lambda pair: pair[0])
    if [i for i, _ in gathered] != list(range(n)):  # a shard lost or counted twice would silently skew results
        raise ShardingError(f"gathered {len(gathered)} results for {n} items from {shard.count} processes")
    return gathered
