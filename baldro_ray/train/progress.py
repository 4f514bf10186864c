"""Per-step progress of a training run, sent from rank 0 to the driver while ``trainer.fit()`` runs.

Rank 0 sends one :class:`StepEvent` per optimizer step to a small actor (without waiting, so training never waits
on the driver); a driver thread drains the actor and hands each event to a view, by default the console's bar
and epoch lines (:class:`TrainingView`). Invariant: the view sees every step of a fit once and in order: rank 0
waits for the actor at each epoch's last step, and the driver drains it once more after ``fit`` returns.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from baldro_ray import console
from baldro_ray.bars import Bar, open_bar
from baldro_ray.train.telemetry import format_metrics, format_progress

DRAIN_SECONDS = 0.25


@dataclass(frozen=True)
class StepEvent:
    """One optimizer step: ``step`` of ``steps`` in ``epoch`` of ``epochs`` (all 1-based), and its metrics."""

    epoch: int
    epochs: int
    step: int
    steps: int
    metrics: dict[str, float]

    @property
    def global_step(self) -> int:
        return (self.epoch - 1) * self.steps + self.step

    @property
    def total(self) -> int:
        return self.epochs * self.steps


class _Mailbox:
    """The actor between rank 0 and the driver: events in arrival order until drained."""

    def __init__(self) -> None:
        self.events: list[StepEvent] = []

    def push(self, event: StepEvent) -> None:
        self.events.append(event)

    def drain(self) -> list[StepEvent]:
        events, self.events = self.events, []
        return events


def send_step(mailbox: Any, event: StepEvent) -> None:
    """Rank 0's side: queue ``event``; at an epoch's last step, wait until every event so far has arrived."""
    import ray

    ref = mailbox.push.remote(event)
    if event.step == event.steps:
        ray.get(ref)


@contextlib.contextmanager
def watch_steps(view: Callable[[StepEvent], None]) -> Iterator[Any]:
    """A mailbox for the trainer's workers (``train_loop_config["progress"]``), drained into ``view`` until the
    block ends; the mailbox is removed afterwards."""
    import ray

    mailbox = ray.remote(num_cpus=0)(_Mailbox).remote()
    stop = threading.Event()

    def drain() -> None:
        for event in ray.get(mailbox.drain.remote()):
            view(event)

    def loop() -> None:
        while not stop.wait(DRAIN_SECONDS):
            try:
                drain()
            except ray.exceptions.RayError:  # the mailbox's node went away: training goes on without a bar
                return

    thread = threading.Thread(target=loop, name="baldro-ray-progress", daemon=True)
    thread.start()
    finished = False
    try:
        yield mailbox
        finished = True
    finally:
        stop.set()
        thread.join()
        try:
            if finished:
                drain()
        finally:
            ray.kill(mailbox)


class TrainingView:
    """A step bar with the losses, DRO ESS and lr of the latest step, and one line at each epoch's end."""

    def __init__(self, desc: str = "unlearning") -> None:
        self.desc = desc
        self.bar: Bar | None = None

    def __call__(self, event: StepEvent) -> None:
        if self.bar is None:
            self.bar = open_bar(event.total, self.desc, "step", event.global_step - 1)
        self.bar.update_to(event.global_step, format_metrics(event.metrics))
        if event.step == event.steps:
            self.bar.write(format_progress(event.epoch, event.epochs, event.step, event.steps, event.metrics))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def training_progress(desc: str = "unlearning") -> Iterator[Any]:
    """The mailbox to give the trainer (None where this process draws no bars: library use, Tune trials),
    drawn as a :class:`TrainingView`."""
    if not console.live():
        yield None
        return
    view = TrainingView(desc)
    try:
        with watch_steps(view) as mailbox:
            yield mailbox
    finally:
        view.close()
