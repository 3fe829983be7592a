"""SERVE: start, inspect or stop the named, detached retrieval actor group.

    python jobs/retrieval_service.py start  [--index.directory DIR] [--retrieval.replicas 2]
    python jobs/retrieval_service.py status [--retrieval.group NAME]
    python jobs/retrieval_service.py stop   [--retrieval.group NAME]

The group outlives this command; any job on the cluster connects to it by name.
"""

import json

from pipeline.config import build_parser, parse_config
from pipeline.errors import RetrievalError, run_job
from pipeline.ray_session import connect_ray
from pipeline.retrieval.group import (
    group_status,
    start_retrieval_group,
    stop_retrieval_group,
)


def main(argv=None) -> int:
    parser = build_parser(__doc__, sections=("index", "retrieval"))
    parser.add_argument("action", choices=("start", "status", "stop"))
    config, args = parse_config(argv, __doc__, parser=parser)
    connect_ray()
    r = config.retrieval
    if args.action == "start":
        members = start_retrieval_group(config.index.directory, r)
        print(f"retrieval group {r.group!r} ({r.namespace}) serving {members[0]['index_dir']}:")
        _print(members)
    elif args.action == "status":
        members = group_status(r.group, r.namespace)
        if not members:
            raise RetrievalError(f"retrieval group {r.group!r} not found in namespace {r.namespace!r}")
        _print(members)
    else:
        print(f"stopped {stop_retrieval_group(r.group, r.namespace)} actors of group {r.group!r}")
    return 0


def _print(members: list[dict]) -> None:
    for m in members:
        print(json.dumps(m, sort_keys=True))


if __name__ == "__main__":
    run_job(main)
