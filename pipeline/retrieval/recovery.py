"""Bringing back a retrieval group lost under a running training run: once per run, on the same version.

A group is lost when members of it are gone from the cluster (stopped by `retrieval_service stop`, killed
without restart) rather than restarting: Ray restarts a killed replica by itself (max_restarts=-1) and the
client fails over meanwhile. A worker whose call finds its group lost restarts it where it stands, inside the
same call, on the version directory that call was using (`start_retrieval_group` creates only what is missing,
and workers doing it at once create one group between them), then asks again: no step is lost, and no Ray
Train restart is spent.

At most once per run: the first loss is claimed in Ray's internal KV under the run's id (the first worker to
claim it says so in one line; the others just reconnect). A second loss, or a version no longer on disk, raises
GroupLostError, which the training loop turns into the end of the run on every rank at once (see
pipeline/train/loop.py), and the driver into one `error:` line. Nothing here imports torch.
"""

from __future__ import annotations

import json
import time

import ray
from ray.experimental.internal_kv import (
    _internal_kv_del,
    _internal_kv_get,
    _internal_kv_list,
    _internal_kv_put,
)

from pipeline.config import RetrievalConfig
from pipeline.errors import PipelineError, RetrievalError
from pipeline.progress import say
from pipeline.retrieval.client import RetrievalClient, ShardUnavailable
from pipeline.retrieval.group import start_retrieval_group
from pipeline.retrieval.group_record import list_members, read_group_record

_KV_NAMESPACE = "rag-retrieval-recoveries"
RESTARTS_PER_RUN = 1
# A group being stopped is gone from the name list a moment before `stop_retrieval_group` deletes its record;
# a restart inside that moment would have its new record deleted. Waited for at most this long.
_STOP_SETTLE_S = 5.0


class GroupLostError(RetrievalError):
    """The run's retrieval group was lost and cannot be brought back (lost again, or its version is gone)."""


def _key(run_id: str, *parts) -> bytes:
    return "/".join((run_id, *map(str, parts))).encode()


def restarts_so_far(run_id: str, cfg: RetrievalConfig) -> list[dict]:
    """The run's restarts of `cfg.group`, oldest first ({"step", "version"} each)."""
    keys = sorted(_internal_kv_list(_key(run_id, cfg.namespace, cfg.group, "lost"), namespace=_KV_NAMESPACE))
    rows = [_internal_kv_get(k, namespace=_KV_NAMESPACE) for k in keys]
    return [json.loads(row) for row in rows if row]


def record_run_failure(run_id: str, message: str) -> None:
    """Note why the run ended (the first message wins), for the driver to raise after fit() returns."""
    _internal_kv_put(_key(run_id, "failure"), message.encode(), overwrite=False, namespace=_KV_NAMESPACE)


def run_failure(run_id: str) -> str | None:
    raw = _internal_kv_get(_key(run_id, "failure"), namespace=_KV_NAMESPACE)
    return raw.decode() if raw else None


def forget_run(run_id: str) -> None:
    """Drop what the run kept here (its restarts and failure)."""
    for key in _internal_kv_list(_key(run_id, ""), namespace=_KV_NAMESPACE):
        _internal_kv_del(key, namespace=_KV_NAMESPACE)


def _actor_id(name: str, namespace: str):
    try:
        return ray.get_actor(name, namespace=namespace)._actor_id
    except ValueError:  # gone between listing and looking
        return None


class RecoveringClient:
    """A RetrievalClient that restarts its group, once per run, when the group is lost under a call.

    `step()` gives the run's current optimizer step (for the one line said about it).
    """

    def __init__(self, cfg: RetrievalConfig, run_id: str, rank: int, step):
        self.cfg, self.run_id, self.rank, self.step = cfg, run_id, rank, step
        self.client = self._connect()
        # A worker that Ray Train restarted after a restart of the group counts that one too.
        self.generation = len(restarts_so_far(run_id, cfg))

    def _connect(self) -> RetrievalClient:
        c = self.cfg
        # offset=rank: concurrent trainers start on different replicas instead of all on replica 0.
        return RetrievalClient(c.group, c.namespace, timeout_s=c.call_timeout_s, offset=self.rank,
                               version_check_s=c.version_check_s)

    def __getattr__(self, name):  # dimension, count, version, last_call_s, ...: the client's
        client = self.__dict__.get("client")
        if client is None:
            raise AttributeError(name)
        return getattr(client, name)

    def retrieve(self, vectors, k: int):
        """RetrievalClient.retrieve; a lost group is restarted on the same version and the call asked again."""
        try:
            return self.client.retrieve(vectors, k)
        except ShardUnavailable:
            if not self._lost():
                raise  # every member is there (restarting or slow): the client's own error stands
        self._bring_back()
        return self.retrieve(vectors, k)

    def _lost(self) -> bool:
        """Whether a member this client calls is gone: no actor by its name, or another one (a peer restarted
        the group after a loss this client has not seen yet)."""
        listed = {(m.shard, m.replica): m.name for m in list_members(self.cfg.group, self.cfg.namespace)}
        for shard, handles in enumerate(self.client.replicas):
            for replica, handle in enumerate(handles):
                name = listed.get((shard, replica))
                if name is None or _actor_id(name, self.cfg.namespace) != handle._actor_id:
                    return True
        return False

    def _bring_back(self) -> None:
        step, version, c = self.step(), self.client.version, self.cfg
        self.generation += 1
        claim = json.dumps({"step": step, "version": version})
        first = not _internal_kv_put(_key(self.run_id, c.namespace, c.group, "lost", f"{self.generation:04d}"),
                                     claim.encode(), overwrite=False, namespace=_KV_NAMESPACE)
        if self.generation > RESTARTS_PER_RUN:
            earlier = restarts_so_far(self.run_id, c)[0]
            raise GroupLostError(
                f"retrieval group {c.group!r} was lost again at step {step} (restarted once already, at step "
                f"{earlier['step']}); ending the run: find out what stops it, then rerun to resume from the "
                f"latest checkpoint")
        deadline = time.monotonic() + _STOP_SETTLE_S
        while read_group_record(c.group, c.namespace) and time.monotonic() < deadline \
                and not list_members(c.group, c.namespace):
            time.sleep(0.1)
        started = time.perf_counter()
        try:
            members = start_retrieval_group(version, c)
        except PipelineError as e:
            raise GroupLostError(f"retrieval group {c.group!r} was lost at step {step} and cannot be restarted on "
                                 f"{version}: {e}") from None
        self.client = self._connect()
        if first:
            say(f"[retrieval] group {c.group!r} was lost at step {step}; restarted on {members[0]['version']} "
                f"({len(members)} actor(s), {time.perf_counter() - started:.1f}s); the run goes on (a second loss "
                f"ends it)")
