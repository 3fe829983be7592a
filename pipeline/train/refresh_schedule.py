"""Rank 0's side of the index refresh: every refresh.every_steps steps, publish the context encoder's weights to
the object store and start a refresh task (pipeline/train/refresh_task.py) that re-embeds the knowledge base, builds
a new index version and rolls the retrieval group forward. Training does not wait for it: the task is polled
after each step, a refresh still running when the next is due makes that one skip (said, and counted), and a
refresh that fails leaves the served version in place with a warning. `refresh.blocking` waits instead (the way
other systems refresh), for comparison; the seconds training spends waiting are counted as stall either way.

Its counters live in TrainState.refresh, saved with every checkpoint, so a resumed run continues the schedule.
"""

from __future__ import annotations

import time

import ray

from pipeline.config import RunConfig
from pipeline.errors import unwrap_pipeline_error
from pipeline.index.settings import IndexSettings
from pipeline.progress import say
from pipeline.retrieval.group_record import served_version
from pipeline.train.checkpoints import TrainState
from pipeline.train.refresh_task import refresh_index


class IndexRefresh:
    """Starts, polls and reports background refreshes from the training loop of rank 0."""

    def __init__(self, cfg: RunConfig, index: IndexSettings, state: TrainState):
        self.cfg = cfg
        self.base_encoder = index.context_encoder(cfg.model.context_encoder)  # the weights refresh into it
        self.state = state.refresh  # dict, updated in place: saved with the TrainState
        for key, value in {"done": [], "skipped": 0, "failed": 0, "stall_s": 0.0}.items():
            self.state.setdefault(key, value)
        self.pending = None  # (ObjectRef of the task, step its weights are from)
        self.initial_version = self.served().name  # served before this run's first refresh

    def after_step(self, step: int, parts) -> None:
        """Called after every optimizer step: finish a refresh that is done; start one when due. Every second
        spent here is training time lost, so all of it counts as stall."""
        started = time.perf_counter()
        try:
            self.poll(step)
            if step % self.cfg.refresh.every_steps:
                return
            if self.pending is not None:
                self.state["skipped"] += 1
                say(f"[refresh] step {step}: skipped, the refresh of step {self.pending[1]} is still running")
                return
            self.pending = (self._start(step, parts), step)
            if self.cfg.refresh.blocking:
                self.wait(step)
        finally:
            self.state["stall_s"] += time.perf_counter() - started

    def _start(self, step: int, parts):

        # CPU copies: the task may run on another node, and the object store holds them until it reads them.
        weights = ray.put({name: tensor.detach().cpu() for name, tensor in parts.context_encoder.state_dict().items()})
        cfg = self.cfg
        location = cfg.refresh.location or str(self.served().location)
        return refresh_index.remote(location, self.base_encoder, [weights], step, cfg.to_dict())

    def served(self):
        """The IndexVersion the retrieval group serves now."""
        return served_version(self.cfg.retrieval.group, self.cfg.retrieval.namespace)

    def poll(self, step: int | None = None) -> None:
        """Finish the pending refresh if its task has ended (never blocks)."""
        if self.pending is not None and ray.wait([self.pending[0]], timeout=0)[0]:
            self._finish(step)

    def wait(self, step: int | None = None) -> None:
        """Block until the pending refresh ends (blocking mode, and at the end of training)."""
        if self.pending is not None:
            ray.wait([self.pending[0]])
            self._finish(step)

    def _finish(self, step: int | None) -> None:

        task, from_step = self.pending
        self.pending = None
        try:
            stats = ray.get(task)
        except ray.exceptions.RayError as e:
            self.state["failed"] += 1
            reason = str(unwrap_pipeline_error(e)).strip().splitlines()
            say(f"[refresh] warning: the refresh of step {from_step} failed, the index keeps serving its "
                f"version ({reason[-1][:300] if reason else type(e).__name__})")
            return
        stats["behind_steps"] = (step if step is not None else from_step) - from_step
        self.state["done"].append(stats)
        say(f"[refresh] {stats['version']} serving from step {step if step is not None else from_step} "
            f"(weights of step {from_step}, {stats['behind_steps']} steps behind): {stats['passages']} passages, "
            f"embed {stats['embed_s']:.1f}s, build {stats['build_s']:.1f}s, swap {stats['swap_s']:.1f}s")

    def metrics(self) -> dict:
        """Counters for the epoch's report."""
        done = self.state["done"]
        return {"refreshes": len(done), "refresh_skipped": self.state["skipped"],
                "refresh_failed": self.state["failed"], "refresh_stall_s": round(self.state["stall_s"], 3),
                "refresh_final_wait_s": round(self.state.get("final_wait_s", 0.0), 3),
                "served_version": done[-1]["version"] if done else self.initial_version}

    def finish(self, step: int) -> None:
        """After the last step: wait for a running refresh, so the final evaluation and checkpoint see its
        version. Not counted as stall (no training is left to delay); its seconds are reported on their own."""
        started = time.perf_counter()
        self.wait(step)
        self.state["final_wait_s"] = self.state.get("final_wait_s", 0.0) + time.perf_counter() - started

    def close(self, step: int | None = None) -> None:
        """When the worker stops (also on error): never leave a refresh task running without its owner."""
        self.wait(step)
