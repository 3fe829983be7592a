"""BENCHMARK (learning quality): does retrieval matter on the demo, and does fine-tuning improve the retriever?

    python jobs/benchmark_demo.py --train.profile true   # writes runs/benchmarks/demo.json (+ demo.png)

Trains the default demo run twice, side by side in one invocation: with retrieval, and with the retrieved
passages replaced by random ones (model.random_passages). Scores both on the held-out test split, as well
as the RAG model before fine-tuning, and the retriever's recall@1 on test with the pretrained question
encoder vs the fine-tuned one.
Targets: EM >= 0.8 with retrieval, <= 0.2 without, recall@1 gain >= 0.2.
"""

import json
import time
from pathlib import Path

from pipeline.config import apply_overrides, build_parser, parse_config
from pipeline.demo.defaults import fill_demo_defaults, training_needs
from pipeline.errors import run_job
from pipeline.model.rag import build_rag_model, save_rag_model
from pipeline.ray_session import connect_ray
from pipeline.retrieval.factory import make_retriever
from pipeline.train.evaluation import evaluate_model, retrieval_metrics
from pipeline.train.finetune import prepare_run, run_finetune
from pipeline.train.qa_data import load_qa_examples


def main(argv=None) -> int:
    parser = build_parser(__doc__)
    parser.add_argument("--out", default="runs/benchmarks", help="Folder for demo.json and demo.png.")
    config, args = parse_config(argv, __doc__, parser=parser)
    begun = time.perf_counter()
    fill_demo_defaults(config, needs=training_needs(config) + ("data.test",))  # scores the test split too
    connect_ray()
    index = prepare_run(config).index  # demo data, index and retrieval group, shared by both runs
    test = load_qa_examples(config.data.test, config.data)
    retriever = make_retriever("ray", config.index.directory, config.retrieval, rank=0)
    before = retrieval_metrics(index.encoder, index.pooling, config.model.max_question_length, test,
                               retriever, config.model.n_docs)
    # The same RAG model as training starts from (pretrained question encoder, the generator as given).
    untrained_dir = runs_dir(config) / "before_finetuning"
    save_rag_model(build_rag_model(index.question_encoder(config.model.question_encoder), config.model.generator,
                                   config.model.model_type, index.pooling, config.model.label_smoothing,
                                   config.model.dropout),
                   untrained_dir)
    untrained, _ = evaluate_model(str(untrained_dir), test, retriever, config)
    print(f"[benchmark_demo] before fine-tuning: test EM {untrained['exact_match']:.3f}", flush=True)
    runs = {}
    for name, random_passages in (("with_retrieval", False), ("random_passages", True)):
        run_cfg = apply_overrides(config, {"model.random_passages": random_passages, "train.resume": False,
                                           "train.output_dir": str(Path(config.train.output_dir) / "bench" / name)})
        started = time.perf_counter()
        result = run_finetune(run_cfg)
        train_s = time.perf_counter() - started
        metrics, _ = evaluate_model(str(result.model_dir), test, retriever, run_cfg)
        runs[name] = {"train_wall_s": round(train_s, 1), "test": metrics, "history": result.history}
        print(f"[benchmark_demo] {name}: test EM {metrics['exact_match']:.3f} in {train_s:.0f}s", flush=True)
    after = retrieval_metrics(str(runs_dir(config) / "with_retrieval" / "model" / "question_encoder"),
                              index.pooling, config.model.max_question_length, test, retriever, config.model.n_docs)
    em_with = runs["with_retrieval"]["test"]["exact_match"]
    em_random = runs["random_passages"]["test"]["exact_match"]
    report = {
        "test_examples": len(test),
        "exact_match_before_finetuning": untrained["exact_match"],
        "exact_match_with_retrieval": em_with, "exact_match_random_passages": em_random,
        "recall@1_pretrained": before["recall@1"], "recall@1_finetuned": after["recall@1"],
        "hit@k_pretrained": before["hit@k"], "hit@k_finetuned": after["hit@k"],
        # Present with --train.profile: mean seconds of one retrieval-group call in the last training epoch.
        "retrieval_s_per_call": runs["with_retrieval"]["history"][-1].get("retrieval_s_per_call"),
        "wall_s": round(time.perf_counter() - begun, 1),
        "targets": {"em_with_retrieval>=0.8": em_with >= 0.8, "em_random<=0.2": em_random <= 0.2,
                    "recall@1_gain>=0.2": after["recall@1"] - before["recall@1"] >= 0.2},
        "runs": runs, "config": config.to_dict(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps(report, indent=2))
    plot(report, out / "demo.png")
    print(json.dumps({k: v for k, v in report.items() if k not in ("runs", "config")}, indent=2))
    return 0


def runs_dir(config) -> Path:
    return Path(config.train.output_dir) / "bench"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(["before fine-tuning", "fine-tuned,\nretrieved passages", "fine-tuned,\nrandom passages"],
             [report["exact_match_before_finetuning"], report["exact_match_with_retrieval"],
              report["exact_match_random_passages"]], color=["#999", "#2a7", "#c44"])
    left.set(ylabel="test exact match", ylim=(0, 1.1), title="RAG model: answers need retrieval")
    right.bar(["pretrained", "fine-tuned"], [report["recall@1_pretrained"], report["recall@1_finetuned"]],
              color=["#999", "#2a7"])
    right.set(ylabel="test recall@1 of the gold passage", ylim=(0, 1.1), title="Retriever: question encoder")
    for axes in (left, right):
        for bar in axes.patches:
            axes.annotate(f"{bar.get_height():.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                          ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    run_job(main)
