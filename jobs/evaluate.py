"""EVALUATE: a fine-tuned RAG model on a QA file -> metrics (printed, JSON) + predictions (jsonl).

    python jobs/evaluate.py                                   # the demo's model on the demo's test split
    python jobs/evaluate.py --model runs/x/finetune/model --qa_file data/test.jsonl --predictions preds.jsonl

Retrieval uses `retrieval.mode`: the running group (`ray`, started if missing) or the index in-process (`local`).
"""

import json
from pathlib import Path

from pipeline.config import build_parser, parse_config
from pipeline.demo.defaults import fill_demo_defaults
from pipeline.errors import run_job
from pipeline.retrieval.factory import open_retriever
from pipeline.train.evaluation import evaluate_model
from pipeline.train.qa_data import load_qa_examples


def main(argv=None) -> int:
    parser = build_parser(__doc__)
    parser.add_argument("--model", help="Saved model directory (default: <train.output_dir>/model).")
    parser.add_argument("--qa_file", help="QA file to score (same as --data.test).")
    parser.add_argument("--predictions", help="Where to write predictions jsonl (default: next to the model).")
    parser.add_argument("--limit", type=int, default=-1, help="Score only the first N examples.")
    config, args = parse_config(argv, __doc__, parser=parser)
    config.data.test = args.qa_file or config.data.test
    fill_demo_defaults(config, needs=("data.test",))  # a run naming no data: the demo's test split and model
    model_dir = Path(args.model or Path(config.train.output_dir) / "model")
    qa_file = config.data.test
    examples = load_qa_examples(qa_file, config.data, limit=args.limit)
    retriever = open_retriever(config)
    metrics, rows = evaluate_model(str(model_dir), examples, retriever, config)
    out = Path(args.predictions or model_dir.parent / f"predictions_{Path(qa_file).stem}.jsonl")
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (out.with_suffix(".metrics.json")).write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    print(f"[evaluate] {len(rows)} predictions -> {out}")
    return 0


if __name__ == "__main__":
    run_job(main)
