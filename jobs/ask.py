"""ASK: one question -> the fine-tuned model's answer and the passages it was generated from.

    python jobs/ask.py "Where was Brenlon Damla born?"
    python jobs/ask.py --model runs/x/finetune/model --retrieval.mode local "Who founded Vodas Works?"
"""

from pathlib import Path

from pipeline.config import build_parser, parse_config
from pipeline.errors import run_job
from pipeline.index.settings import IndexSettings
from pipeline.model.rag import load_rag_model
from pipeline.model.rag_with_retrieval import RagWithRetrieval
from pipeline.retrieval.factory import open_retriever


def main(argv=None) -> int:
    parser = build_parser(__doc__)
    parser.add_argument("question", help="The question to answer.")
    parser.add_argument("--model", help="Saved model directory (default: <train.output_dir>/model).")
    config, args = parse_config(argv, __doc__, parser=parser)
    rag = RagWithRetrieval.for_run(load_rag_model(args.model or Path(config.train.output_dir) / "model"),
                                   open_retriever(config), config, IndexSettings.read(config.index.directory))
    answers, hits = rag.answer([args.question])
    print(f"answer: {answers[0]}")
    for rank, (title, text, score) in enumerate(zip(hits.titles[0], hits.texts[0], hits.scores[0]), start=1):
        print(f"  [{rank}] {score:.3f} {title}: {text[:160]}")
    return 0


if __name__ == "__main__":
    run_job(main)
