"""Phase 2 on Dask: the same bucket tasks, mapped over a Dask scheduler instead of a local process pool.

For registry scale beyond one machine: phase 1 writes the bucket files into a work folder that every Dask
worker can read (a shared filesystem), each task grades one bucket with the same pure grading code and
writes its part files beside it, and the parent assembles them exactly as a local run does. The scheduler
is a name Dask knows ("synchronous", "threads", "processes") or the address of a dask.distributed scheduler
("tcp://host:8786", which needs the `distributed` package). Dask is optional: `pip install cart-fhir[dask]`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from ..errors import ConfigError
from .worker import Outputs, Task, TaskResult, grade_task, init

LOCAL_SCHEDULERS = ("synchronous", "threads", "processes")


def grade_on_dask(tasks: Sequence[Task], initargs: tuple[list[tuple[str, dict[str, Any]]], datetime, Outputs],
                  scheduler: str) -> Iterator[TaskResult]:
    """Every task's result (in task order) from a Dask bag of tasks, one task per partition."""
    try:
        import dask.bag as db
    except ImportError as exc:
        raise ConfigError("--dask needs Dask: pip install 'cart-fhir[dask]'") from exc
    if not tasks:
        return iter(())
    bag = db.from_sequence(list(tasks), npartitions=len(tasks)).map(_grade, initargs)
    if scheduler in LOCAL_SCHEDULERS:
        results = bag.compute(scheduler=scheduler)
    else:
        results = _on_cluster(bag, scheduler)
    return iter(results)


def _grade(task: Task, initargs: tuple[list[tuple[str, dict[str, Any]]], datetime, Outputs]) -> TaskResult:
    """Runs on a Dask worker: build the Engine once per process (init reuses it), then grade the bucket."""
    init(*initargs)
    return grade_task(task)


def _on_cluster(bag: Any, address: str) -> list[TaskResult]:
    if not address.startswith(("tcp://", "tls://", "inproc://")):
        raise ConfigError(f"--dask {address!r}: give one of {', '.join(LOCAL_SCHEDULERS)} or a scheduler address "
                          "such as tcp://host:8786")
    try:
        from distributed import Client
    except ImportError as exc:
        raise ConfigError("--dask with a scheduler address needs dask.distributed: pip install distributed") from exc
    with Client(address) as client:
        return list(client.compute(bag).result())
