"""EXPORT for stock transformers: an index version -> the `passages_path` and `index_path` RagRetriever reads.

    python jobs/export_hf_retriever.py --model runs/demo/finetune/model        # writes <model>/hf_retriever/
    python jobs/export_hf_retriever.py --index.directory runs/kb/index --output runs/kb/hf_retriever

then, in plain transformers:

    retriever = RagRetriever.from_pretrained(model_dir, index_name="custom",
                                             passages_path=".../hf_retriever/passages",
                                             index_path=".../hf_retriever/index.faiss")
    model = RagSequenceForGeneration.from_pretrained(model_dir, retriever=retriever)

With --model, the export first checks that transformers' RAG heads would retrieve with that model's question
encoder as we do (a DPR question encoder, pooling 'pooler'); see pipeline/index/hf_export.py.
"""

from pathlib import Path

from pipeline.config import build_parser, parse_config
from pipeline.errors import ConfigError, run_job
from pipeline.index.hf_export import export_hf_retriever


def main(argv=None) -> int:
    parser = build_parser(__doc__, sections=("index",))
    parser.add_argument("--model", help="Saved model directory (save_rag_model layout) to check and write beside.")
    parser.add_argument("--output", help="Directory to write (default: <model>/hf_retriever).")
    config, args = parse_config(argv, __doc__, parser=parser)
    if not args.output and not args.model:
        raise ConfigError("--output: give a directory to write, or --model to write beside it")
    output = Path(args.output or Path(args.model) / "hf_retriever")
    files = export_hf_retriever(config.index.directory, output, args.model)
    print(f"[export_hf_retriever] {files.count} passages ({files.dimension} dims): "
          f"passages_path={files.passages_path} index_path={files.index_path}", flush=True)
    return 0


if __name__ == "__main__":
    run_job(main)
