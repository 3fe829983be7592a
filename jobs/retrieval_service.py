"""SERVE: start, inspect or stop the named, detached retrieval actor group.

    python jobs/retrieval_service.py start  [--index.directory DIR] [--retrieval.replicas 2]
    python jobs/retrieval_service.py status [--retrieval.group NAME]
    python jobs/retrieval_service.py repair [--retrieval.group NAME]
    python jobs/retrieval_service.py stop   [--retrieval.group NAME]

The group outlives this command on a running cluster (`ray start --head`, or RAY_ADDRESS); any job on the
cluster connects to it by name. A replica on a lost node comes back by itself when a node offering the group's
resources joins (pipeline/retrieval/placement.py); `repair` starts again members that are gone for good (killed
without restart), on the version the group serves. With no cluster running, `start` refuses (a cluster of its
own would end, and the group with it, when the command exits); `status` and `stop` say so instead of starting
one to look.
"""

import json

from pipeline.config import build_parser, parse_config
from pipeline.errors import ClusterError, RetrievalError, run_job
from pipeline.ray_session import NO_CLUSTER_HINT, connect_ray, where_ray_looks
from pipeline.retrieval.group import (
    group_status,
    repair_retrieval_group,
    start_retrieval_group,
    stop_retrieval_group,
)


def main(argv=None) -> int:
    parser = build_parser(__doc__, sections=("index", "retrieval"))
    parser.add_argument("action", choices=("start", "status", "repair", "stop"))
    config, args = parse_config(argv, __doc__, parser=parser)
    r = config.retrieval
    session = connect_ray(start=False)
    if session is None:
        if args.action == "start":
            raise ClusterError(f"no Ray cluster is running to keep retrieval group {r.group!r} after this command "
                               f"exits ({where_ray_looks()}); {NO_CLUSTER_HINT}")
        if args.action in ("status", "repair"):
            raise ClusterError(f"retrieval group {r.group!r} is not running: no Ray cluster is running "
                               f"({where_ray_looks()})")
        print(f"nothing to stop: no Ray cluster is running ({where_ray_looks()})")
        return 0
    where = f"on the Ray cluster at {session.address}"
    if args.action == "start":
        members = start_retrieval_group(config.index.directory, r)
        print(f"retrieval group {r.group!r} ({r.namespace}) serving {members[0]['index_dir']} {where}:")
        _print(members)
    elif args.action == "repair":
        members = repair_retrieval_group(r)
        print(f"retrieval group {r.group!r} ({r.namespace}) has {len(members)} members serving "
              f"{members[0]['index_dir']} {where}:")
        _print(members)
    elif args.action == "status":
        members = group_status(r.group, r.namespace)
        if not members:
            raise RetrievalError(f"retrieval group {r.group!r} not found in namespace {r.namespace!r} {where}")
        print(f"retrieval group {r.group!r} ({r.namespace}) {where}:")
        _print(members)
    else:
        print(f"stopped {stop_retrieval_group(r.group, r.namespace)} actors of group {r.group!r} {where}")
    return 0


def _print(members: list[dict]) -> None:
    for m in members:
        print(json.dumps(m, sort_keys=True))


if __name__ == "__main__":
    run_job(main)
