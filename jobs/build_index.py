"""BUILD: documents -> passages -> embeddings (Ray Data actor pool) -> FAISS index directory.

    python jobs/build_index.py                                  # the bundled demo knowledge base
    python jobs/build_index.py --knowledge_base.documents kb.jsonl --index.directory runs/kb/index \
        --index.factory HNSW32 --index.shards 2 --index.embed_concurrency 4
"""

from pipeline.config import parse_config
from pipeline.demo.defaults import fill_demo_defaults
from pipeline.errors import run_job
from pipeline.index.build import build_index
from pipeline.ray_session import connect_ray
from pipeline.retrieval.group_record import prune_unused_versions


def main(argv=None) -> int:
    config, _ = parse_config(argv, __doc__, sections=("knowledge_base", "index"))
    fill_demo_defaults(config, needs=("knowledge_base.documents",))  # no documents and default index: the demo
    connect_ray()
    build_index(config.knowledge_base, config.index)
    removed = prune_unused_versions(config.index.directory)
    if removed:
        print(f"[build_index] removed versions no retrieval group serves: {', '.join(removed)}", flush=True)
    return 0


if __name__ == "__main__":
    run_job(main)
