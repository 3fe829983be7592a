"""Our index and model, served by stock transformers: jobs/export_hf_retriever.py writes the passages folder and the
FAISS file, the real `RagRetriever` (datasets + faiss) loads them beside the saved model, and the real RAG head
retrieves the same passage ids and generates the same answers as our own path (RagWithRetrieval.answer, what
jobs/ask.py runs).

The question encoder is a DPR one (the bundled MiniLM's weights): transformers' heads retrieve with
`question_encoder(...)[0]`, which is DPR's pooler output (our pooling 'pooler'); a BERT-style encoder's first
output is its token states, and that export is refused.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import RagRetriever, RagSequenceForGeneration, RagTokenForGeneration

from jobs import export_hf_retriever
from pipeline.config import IndexConfig, KnowledgeBaseConfig, ModelConfig
from pipeline.errors import ConfigError
from pipeline.index.build import build_index
from pipeline.model.encoders import default_encoder_path, load_encoder
from pipeline.model.rag import build_rag_model, load_rag_model, save_rag_model
from pipeline.model.rag_with_retrieval import RagWithRetrieval
from pipeline.retrieval.local import LocalRetriever
from tests.conftest import WORDS
from tests.model.test_rag import save_tiny_bart, save_tiny_bert

N_DOCS = 4
PASSAGE_WORDS = 20
# Every question 8 generator tokens and every passage "doc N / <20 words>": every context is 1 + 2 + 1 + 20 + 1 + 8
# + 1 tokens, none padded. RagRetriever pads each context to max_combined_length, and RAG-Sequence's generate
# drafts its candidates without the context attention mask (transformers drops it), so pads would change them.
QUESTIONS = [f"what is the key of {a} {b} ?" for a, b in zip(WORDS, WORDS[3:] + WORDS[:3])][:30]
CONTEXT_TOKENS = 34
HEADS = {"rag_sequence": RagSequenceForGeneration, "rag_token": RagTokenForGeneration}


def save_minilm_as_dpr(directory):
    """The bundled MiniLM's weights in a DPRQuestionEncoder (pooler output = the [CLS] state): a random tiny
    encoder puts every passage at nearly the same score, and ties fall either way."""
    from transformers import DPRConfig, DPRQuestionEncoder

    tokenizer, bert = load_encoder(default_encoder_path())
    config = DPRConfig(**{key: getattr(bert.config, key) for key in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "max_position_embeddings", "type_vocab_size", "layer_norm_eps")}, projection_dim=0)
    dpr = DPRQuestionEncoder(config)
    missing, unexpected = dpr.question_encoder.bert_model.load_state_dict(bert.state_dict(), strict=False)
    assert not missing and all(name.startswith("pooler.") for name in unexpected)
    dpr.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def dpr_world(ray_cluster, tmp_path_factory):
    """A DPR-encoded (MiniLM weights) 2-shard exact index of 60 one-passage documents, and the encoder's and
    the tiny BART generator's paths."""
    root = tmp_path_factory.mktemp("hf_export")
    rng = random.Random(5)
    (root / "documents.jsonl").write_text("".join(json.dumps(
        {"title": f"Doc {i}", "text": " ".join(rng.choice(WORDS) for _ in range(PASSAGE_WORDS))}) + "\n"
        for i in range(60)))
    encoder = str(save_minilm_as_dpr(root / "dpr"))
    build_index(KnowledgeBaseConfig(documents=str(root / "documents.jsonl"), passage_words=PASSAGE_WORDS),
                IndexConfig(directory=str(root / "index"), encoder=encoder, pooling="pooler", shards=2,
                            embed_batch_size=32))
    return {"root": root, "index": root / "index", "encoder": encoder, "generator": str(save_tiny_bart(root / "bart"))}


def _saved_model(world, model_type: str):
    directory = world["root"] / f"model_{model_type}"
    if not directory.exists():
        parts = build_rag_model(world["encoder"], world["generator"], model_type, "pooler")
        save_rag_model(parts, directory)
    return directory


def _ours(model_dir, index):
    cfg = ModelConfig(n_docs=N_DOCS, max_source_length=CONTEXT_TOKENS)
    return RagWithRetrieval(load_rag_model(model_dir), LocalRetriever(index), cfg)


def _stock(model_dir, exported, head):
    retriever = RagRetriever.from_pretrained(
        str(model_dir), index_name="custom", passages_path=str(exported / "passages"),
        index_path=str(exported / "index.faiss"), max_combined_length=CONTEXT_TOKENS, n_docs=N_DOCS)
    # n_docs in the head's config too: RAG-Sequence's generate rescores with config.n_docs, not its argument.
    return head.from_pretrained(str(model_dir), retriever=retriever, n_docs=N_DOCS).eval(), retriever


@pytest.mark.parametrize("model_type", sorted(HEADS))
def test_stock_transformers_retrieves_and_answers_as_we_do(dpr_world, model_type):
    model_dir = _saved_model(dpr_world, model_type)
    assert export_hf_retriever.main(["--index.directory", str(dpr_world["index"]), "--model", str(model_dir)]) == 0
    model, retriever = _stock(model_dir, model_dir / "hf_retriever", HEADS[model_type])
    ours = _ours(model_dir, dpr_world["index"])

    batch = retriever.question_encoder_tokenizer(QUESTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.question_encoder(batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    stock = retriever(batch["input_ids"].numpy(), hidden.numpy(), n_docs=N_DOCS, return_tensors="np")
    stock_ids = stock["doc_ids"]
    assert stock["context_attention_mask"].all()  # no context padded (see CONTEXT_TOKENS)
    _, hits = ours.answer(QUESTIONS)
    assert stock_ids.tolist() == hits.ids.tolist()
    assert len({tuple(row) for row in hits.ids.tolist()}) > len(QUESTIONS) // 2  # the questions differ in passages

    stock_answers, our_answers = [], []
    for question in QUESTIONS:  # one at a time, as jobs/ask.py asks (no padded question batch)
        ids = retriever.question_encoder_tokenizer([question], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            sequences = model.generate(input_ids=ids, n_docs=N_DOCS, num_beams=1,
                                       max_length=ours.cfg.max_target_length)
        stock_answers.append(retriever.generator_tokenizer.batch_decode(sequences, skip_special_tokens=True)[0].strip())
        our_answers.append(ours.answer([question])[0][0])
    assert stock_answers == our_answers
    assert len(set(our_answers)) > 1  # the generator's answers depend on the question and its passages


def _export_error(world, model_dir, capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        export_hf_retriever.run_job(lambda: export_hf_retriever.main(
            ["--index.directory", str(world["index"]), "--model", str(model_dir)]))
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and "\n" not in err
    assert not (model_dir / "hf_retriever").exists()
    return err


def test_a_model_whose_first_encoder_output_is_not_our_pooling_is_refused(dpr_world, tmp_path, capsys):
    # The bundled MiniLM as a plain BertModel, mean-pooled: its first output is the token states [B, L, 384].
    save_rag_model(build_rag_model(default_encoder_path(), dpr_world["generator"], "rag_sequence", "mean"),
                   tmp_path / "model")
    err = _export_error(dpr_world, tmp_path / "model", capsys)
    assert err.startswith(f"error: {tmp_path / 'model'}: transformers' RAG heads retrieve with question_encoder")
    assert "BertModel: shape [3," in err and "pools 'mean' [3, 384]" in err


def test_a_model_of_another_dimension_than_the_index_is_refused(dpr_world, tmp_path, capsys):
    parts = build_rag_model(str(save_tiny_bert(tmp_path / "bert")), dpr_world["generator"], "rag_sequence", "pooler")
    save_rag_model(parts, tmp_path / "model")
    err = _export_error(dpr_world, tmp_path / "model", capsys)
    assert err == f"error: {tmp_path / 'model'}: question vectors of 32 dims, the index's are 384"


def test_the_index_alone_exports_for_callers_that_pass_their_own_question_vectors(dpr_world, tmp_path):
    import datasets
    import numpy as np

    from pipeline.index.manifest import open_passages, open_vectors, read_manifest

    assert export_hf_retriever.main(["--index.directory", str(dpr_world["index"]),
                                     "--output", str(tmp_path / "out")]) == 0
    passages = datasets.load_from_disk(str(tmp_path / "out" / "passages"))
    manifest = read_manifest(dpr_world["index"])
    assert passages.column_names == ["title", "text", "embeddings"] and len(passages) == manifest.count
    ours = open_passages(dpr_world["index"]).to_pydict()
    assert passages["text"] == ours["text"] and passages["title"] == ours["title"]
    np.testing.assert_array_equal(np.asarray(passages["embeddings"], np.float32),
                                  open_vectors(dpr_world["index"], manifest))


def test_without_output_or_model_the_export_says_what_it_needs():
    with pytest.raises(ConfigError, match="^--output: give a directory to write, or --model"):
        export_hf_retriever.main([])
