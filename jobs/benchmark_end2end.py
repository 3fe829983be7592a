"""BENCHMARK (end-to-end retriever training): question encoder only vs end-to-end with a stale, a background-
refreshed and a blocking-refreshed index, on a task where the pretrained context encoder is the weak side.

    python jobs/benchmark_end2end.py                      # configs/end2end_benchmark.yaml, all four runs
    python jobs/benchmark_end2end.py --runs question_only,end2end_refresh --train.max_steps 10   # a quick look

Generates the ledger data set (pipeline/demo/end2end_data.py: why question-only training cannot close the
gap), builds one index, then trains the four runs of pipeline/bench/end2end.py one after another, each on its
own copy of that index and its own retrieval group, and scores each on the test split. Writes
end2end_benchmark.{json,png} to --out and prints the comparison with the issue's targets.
"""

import json
import shutil
import sys
import time
from pathlib import Path

from pipeline.bench.end2end import (
    RUNS,
    compare_runs,
    machine_load,
    run_one,
    write_report,
)
from pipeline.config import build_parser, parse_config
from pipeline.demo.end2end_data import ensure_end2end_data
from pipeline.errors import ConfigError, run_job
from pipeline.index.build import build_index
from pipeline.index.manifest import read_manifest
from pipeline.progress import say
from pipeline.ray_session import connect_ray
from pipeline.retrieval.factory import make_retriever
from pipeline.train.evaluation import retrieval_metrics
from pipeline.train.qa_data import load_qa_examples

DEFAULT_CONFIG = "configs/end2end_benchmark.yaml"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(arg == "--config" or arg.startswith("--config=") for arg in argv):
        argv = ["--config", str(Path(__file__).resolve().parents[1] / DEFAULT_CONFIG), *argv]
    parser = build_parser(__doc__)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"Which runs, comma-separated, of {', '.join(RUNS)}.")
    parser.add_argument("--data_dir", default="runs/end2end/data", help="Where the ledger data set is generated.")
    parser.add_argument("--out", default="runs/benchmarks", help="Folder for end2end_benchmark.json and .png.")
    config, args = parse_config(argv, __doc__, parser=parser)
    names = [name for name in args.runs.split(",") if name]
    unknown = [name for name in names if name not in RUNS]
    if unknown:
        raise ConfigError(f"--runs: {', '.join(unknown)} not among {', '.join(RUNS)}")
    begun = time.perf_counter()
    load_before = machine_load()
    test, pretrained = prepare(config, args.data_dir)
    runs = {}
    for name in names:
        say(f"[benchmark_end2end] run {name}")
        runs[name] = run_one(config, name, Path(config.train.output_dir).resolve(), test)
        row = runs[name]
        say(f"[benchmark_end2end] {name}: test recall@1 {row['test_recall@1']:.3f}, EM {row['test_exact_match']:.3f}, "
            f"{row['wall_s']:.0f}s, stall {row['stall_s']:.1f}s, {row['refreshes']} refreshes, "
            f"{row['failed_calls']} failed calls")
    report = {"runs": runs, "pretrained_test_recall@1": pretrained["recall@1"], "test_examples": len(test),
              "targets": compare_runs(runs) if len(runs) == len(RUNS) else None,
              "load_before": load_before, "load_after": machine_load(),
              "wall_s": round(time.perf_counter() - begun, 1), "config": config.to_dict()}
    json_path, png_path = write_report(report, Path(args.out))
    print(json.dumps({name: {k: v for k, v in row.items() if k != "refresh_log"} for name, row in runs.items()},
                     indent=2))
    if report["targets"]:
        print(json.dumps(report["targets"], indent=2))
    say(f"[benchmark_end2end] wrote {json_path} and {png_path} in {report['wall_s']:.0f}s")
    return 0


def prepare(config, data_dir: str):
    """Generate the data (if missing), fill the config's empty paths from it, build the base index fresh,
    and measure the pretrained encoders' test recall@1 on it (in-process: no group needed)."""
    paths = ensure_end2end_data(data_dir)
    config.knowledge_base.documents = config.knowledge_base.documents or str(paths.documents.resolve())
    for split in ("train", "dev", "test"):
        if not getattr(config.data, split):
            setattr(config.data, split, str(getattr(paths, split).resolve()))
    config.model.generator = config.model.generator or str(paths.generator.resolve())
    config.index.directory = str(Path(config.index.directory).resolve())
    shutil.rmtree(config.index.directory, ignore_errors=True)  # the benchmark's own: always built from this data
    connect_ray()
    build_index(config.knowledge_base, config.index)
    manifest = read_manifest(config.index.directory)
    test = load_qa_examples(config.data.test, config.data)
    retriever = make_retriever("local", config.index.directory, config.retrieval, 0)
    pretrained = retrieval_metrics(manifest.encoder, manifest.pooling, config.model.max_question_length, test,
                                   retriever, config.model.n_docs)
    say(f"[benchmark_end2end] pretrained encoders: test recall@1 {pretrained['recall@1']:.3f}")
    return test, pretrained


if __name__ == "__main__":
    run_job(main)
