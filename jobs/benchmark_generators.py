"""BENCHMARK (generators): the seq2seq and causal generator kinds side by side on the same RAG work.

    python jobs/benchmark_generators.py                      # the demo's tiny BART vs its tiny Llama, CPU
    python jobs/benchmark_generators.py --generators bart=facebook/bart-base qwen=Qwen/Qwen2.5-0.5B

Seconds per training step (loss + backward + AdamW step) and per answer batch, batch 8 x 5 passages, the same
questions, passages and question encoder for every generator, turns interleaved. Writes
runs/benchmarks/generators.{json,png}. The demo's generators are generated on first use.
"""

import argparse
import json

import torch

from pipeline.bench.generators import bench_questions, compare_generators
from pipeline.bench.report_files import write_report_files
from pipeline.bench.timing import load_average, machine_info
from pipeline.demo.causal_generator import ensure_causal_generator
from pipeline.demo.data import ensure_demo_data, shadow_reading_examples
from pipeline.errors import run_job
from pipeline.model.encoders import default_encoder_path


def plot(report: dict, png_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["generators"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, title in zip(axes, ("train_step_s_p50", "answer_batch_s_p50"), ("train step", "answer batch")):
        ax.bar(names, [report["generators"][n][key] for n in names], color=["tab:blue", "tab:orange"][: len(names)])
        ax.set_title(f"{title} (batch {report['batch']} x {report['n_docs']} passages)")
        ax.set_ylabel("seconds (p50)")
    fig.suptitle(f"generator kinds, {report['model_type']}, {report['threads']} thread(s)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generators", nargs="*", default=[], help="name=path pairs (default: the demo's two)")
    parser.add_argument("--model_type", default="rag_sequence", choices=("rag_sequence", "rag_token"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--n_docs", type=int, default=5)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output_dir", default="runs/benchmarks")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    demo = ensure_demo_data()
    generators = dict(pair.split("=", 1) for pair in args.generators) or {
        "seq2seq (demo BART)": str(demo.generator),
        "causal (demo Llama)": str(ensure_causal_generator(demo, lambda: shadow_reading_examples(0)))}
    documents = [json.loads(line) for line in demo.documents.read_text().splitlines()]
    rows = [json.loads(line) for line in demo.dev.read_text().splitlines()]
    batch = bench_questions(documents, rows, args.batch, args.n_docs)
    results = compare_generators(default_encoder_path(), generators, batch, args.model_type, args.turns)
    report = {"model_type": args.model_type, "batch": args.batch, "n_docs": args.n_docs, "turns": args.turns,
              "threads": args.threads, "load_average": load_average(), "machine": machine_info(),
              "generators": results}
    json_path, png_path = write_report_files(report, args.output_dir, "generators", plot)
    for name, r in results.items():
        print(f"{name:>24}: {r['kind']:>7}, {r['generator_parameters'] / 1e6:.2f}M generator parameters, "
              f"train step {r['train_step_s_p50'] * 1e3:.0f} ms, answer batch {r['answer_batch_s_p50'] * 1e3:.0f} ms")
    print(f"[benchmark] {json_path}, {png_path}")
    return 0


if __name__ == "__main__":
    run_job(main)
