"""Data parallelism for evaluations: the work items (images to draw, pairs to attack) are
split over processes and the results gathered, through accelerate's process state.

Launch with several processes and every process takes its share:

- GPUs: ``accelerate launch --multi_gpu --num_processes 4 -m ace_erasure.cli evaluate …``;
- CPUs: ``torchrun --standalone --nproc_per_node 2 -m ace_erasure.cli evaluate …``
  (``accelerate launch --cpu`` starts a single process unless MPI is set up; torchrun is the
  launcher accelerate itself uses for several GPUs).

Items are dealt round-robin in fixed blocks (an evaluation's generation batches), so each
block is computed exactly as in a single process; results come back in the single-process
order, on every process. Only the main process writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _launched_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class Shards:
    """This process's share of the work, and gathering of everyone's results."""

    def __init__(self, cpu: bool = True) -> None:
        self.state = None
        if _launched_distributed():
            from accelerate import PartialState

            self.state = PartialState(cpu=cpu)

    @property
    def rank(self) -> int:
        return 0 if self.state is None else int(self.state.process_index)

    @property
    def size(self) -> int:
        return 1 if self.state is None else int(self.state.num_processes)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def map_blocks(
        self, items: Sequence[T], block: int, work: Callable[[list[T]], list[R]]
    ) -> list[R]:
        """``work`` applied to consecutive blocks of ``block`` items, blocks dealt round-robin
        over the processes; the concatenated results, in order, on every process."""
        blocks = [list(items[i : i + block]) for i in range(0, len(items), block)]
        mine = [(i, work(b)) for i, b in enumerate(blocks) if i % self.size == self.rank]
        if self.size == 1:
            return [r for _, results in mine for r in results]
        from accelerate.utils import gather_object

        gathered = gather_object(mine)
        ordered = sorted(gathered, key=lambda pair: pair[0])
        return [r for _, results in ordered for r in results]

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


SINGLE = Shards.__new__(Shards)
SINGLE.state = None  # the default: everything in this process


def current(cpu: bool = True) -> Shards:
    """Shards for this process (single-process unless launched with several)."""
    return Shards(cpu) if _launched_distributed() else SINGLE
