"""Both generator kinds behind the one interface the training step, evaluation and `ask` use (RagWithRetrieval):
the kind read from the generator's config, the loss and the answers through it, save/load, the distillation loss
with a frozen generator, RAG-Sequence decoding of a causal LM, bf16 autocast on the CPU. No Ray: the retriever is
an exact numpy search over a handful of passages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pipeline.config import RunConfig, apply_overrides
from pipeline.errors import ConfigError
from pipeline.model.causal import answer_log_probs
from pipeline.model.causal_inputs import tokenize_causal_training
from pipeline.model.doc_scores import score_documents
from pipeline.model.generators import kind_of, kind_of_config
from pipeline.model.rag import build_rag_model, load_rag_model, save_rag_model
from pipeline.model.rag_with_retrieval import RagWithRetrieval
from pipeline.model.retriever_losses import distillation_loss
from pipeline.retrieval.result import RetrievalResult
from pipeline.train.loop import _autocast
from pipeline.train.optimizer import build_optimizer
from tests.model.test_causal_rag import TEXTS, save_tiny_causal_lm
from tests.model.test_rag import save_tiny_bart, save_tiny_bert
from tests.model.tiny_text import ANSWERS, QUESTIONS, TITLES, K


class ExactPassages:
    """The retrieval contract over the six passages of TITLES/TEXTS with fixed random vectors (exact search)."""

    def __init__(self, dimension: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.vectors = rng.standard_normal((6, dimension)).astype(np.float32)
        self.titles = [t for row in TITLES for t in row]
        self.texts = [t for row in TEXTS for t in row]

    def retrieve(self, queries: np.ndarray, k: int) -> RetrievalResult:
        scores = queries @ self.vectors.T
        ids = np.argsort(-scores, axis=1)[:, :k]
        return RetrievalResult(ids, np.take_along_axis(scores, ids, 1), self.vectors[ids],
                               [[self.titles[i] for i in row] for row in ids],
                               [[self.texts[i] for i in row] for row in ids])


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    save_tiny_causal_lm(root / "llama", "llama")
    save_tiny_causal_lm(root / "gpt2", "gpt2")
    return {"bert": str(save_tiny_bert(root / "bert")), "bart": str(save_tiny_bart(root / "bart")),
            "llama": str(root / "llama"), "gpt2": str(root / "gpt2")}


def run_config(**overrides) -> RunConfig:
    return apply_overrides(RunConfig(), {"model.n_docs": K, "model.max_source_length": 40,
                                         "model.max_target_length": 6, **overrides})


def rag_for(paths, generator: str, model_type: str = "rag_sequence", **overrides) -> RagWithRetrieval:
    cfg = run_config(**{"model.model_type": model_type, **overrides})
    parts = build_rag_model(paths["bert"], paths[generator], model_type, pooling="mean", dropout=cfg.model.dropout)
    kind_of(parts).configure(parts, cfg.model)
    return RagWithRetrieval(parts, ExactPassages(32), cfg.model, passage_max_length=64)


def batch_for(rag: RagWithRetrieval) -> tuple:
    parts = rag.parts
    questions = parts.question_tokenizer(QUESTIONS, padding=True, return_tensors="pt")
    labels = torch.as_tensor(rag.kind.targets(parts.generator_tokenizer, parts.head.config.generator, ANSWERS,
                                              rag.cfg.max_target_length))
    return QUESTIONS, questions["input_ids"], questions["attention_mask"], labels


@pytest.mark.parametrize("generator, kind", [("bart", "seq2seq"), ("llama", "causal"), ("gpt2", "causal")])
def test_the_kind_is_read_from_the_generator_config(paths, generator, kind):
    assert kind_of_config(AutoConfig.from_pretrained(paths[generator])).name == kind
    assert kind_of(build_rag_model(paths["bert"], paths[generator], "rag_token", pooling="mean")).name == kind


@pytest.mark.parametrize("generator", ["bart", "llama", "gpt2"])
@pytest.mark.parametrize("model_type", ["rag_sequence", "rag_token"])
def test_every_kind_trains_and_answers_through_the_same_module(paths, generator, model_type):
    rag = rag_for(paths, generator, model_type)
    rag.train()
    loss = rag(*batch_for(rag))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    encoder_grad = sum(p.grad.abs().sum() for p in rag.parts.head.question_encoder.parameters() if p.grad is not None)
    generator_grad = sum(p.grad.abs().sum() for p in rag.parts.head.generator.parameters() if p.grad is not None)
    assert encoder_grad > 0 and generator_grad > 0
    answers, hits = rag.answer(QUESTIONS)
    assert len(answers) == len(QUESTIONS) and all(isinstance(a, str) for a in answers)
    assert hits.ids.shape == (len(QUESTIONS), K)
    assert rag.training  # answering restores the training mode


def test_causal_targets_are_the_answer_then_eos_padded_with_an_ignored_id(paths):
    rag = rag_for(paths, "gpt2")
    labels = batch_for(rag)[3]
    eos = rag.parts.generator_tokenizer.eos_token_id
    first = [t for t in labels[0].tolist() if t != -100]
    assert labels.shape == (2, 6) and first[-1] == eos and len(first) == 2  # "stone" + eos, the pad id ignored
    assert labels[0, 2:].eq(-100).all()


@pytest.mark.parametrize("model_type", ["rag_sequence", "rag_token"])
def test_a_saved_causal_model_loads_with_the_same_loss_and_answers(paths, tmp_path, model_type):
    rag = rag_for(paths, "llama", model_type)
    save_rag_model(rag.parts, tmp_path / "model")
    loaded = load_rag_model(tmp_path / "model")
    again = RagWithRetrieval(loaded, rag.retriever, rag.cfg, passage_max_length=64)
    assert kind_of(loaded).name == "causal" and loaded.model_type == model_type
    with torch.no_grad():
        assert again(*batch_for(again)).item() == pytest.approx(rag(*batch_for(rag)).item(), abs=1e-6)
    assert again.answer(QUESTIONS)[0] == rag.answer(QUESTIONS)[0]
    alone = AutoModelForCausalLM.from_pretrained(tmp_path / "model" / "generator")  # the generator alone loads
    assert sum(p.numel() for p in alone.parameters()) == sum(p.numel() for p in rag.parts.head.generator.parameters())


def test_causal_rag_sequence_answers_are_the_per_passage_candidate_with_the_best_marginal(paths):
    rag = rag_for(paths, "llama", "rag_sequence")
    rag.eval()
    answers, hits = rag.answer(QUESTIONS)
    tokenizer, generator = rag.parts.generator_tokenizer, rag.parts.head.generator
    with torch.no_grad():
        batch = rag.parts.question_tokenizer(QUESTIONS, padding=True, return_tensors="pt")
        doc_scores = score_documents(rag.question_vectors(batch["input_ids"], batch["attention_mask"]), hits.vectors)
    for b in range(len(QUESTIONS)):
        # Brute force: every passage's own greedy answer, each scored by the marginal over all k passages.
        candidates = set()
        for j in range(K):
            candidates.add(rag.kind.generate(rag.parts, doc_scores[b:b + 1, j:j + 1], [hits.titles[b][j:j + 1]],
                                             [hits.texts[b][j:j + 1]], [QUESTIONS[b]], rag.cfg)[0])
        best, best_value = None, -float("inf")
        for candidate in sorted(candidates):
            ids = [tokenizer(candidate, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]]
            rows = tokenize_causal_training(tokenizer, [hits.titles[b]], [hits.texts[b]], [QUESTIONS[b]], ids,
                                            rag.cfg.max_source_length, prompt_only=True)
            with torch.no_grad():
                tokens = answer_log_probs(generator, *rows).tokens.sum(dim=1)
            value = torch.logsumexp(tokens + torch.log_softmax(doc_scores[b], dim=0), dim=0).item()
            if value > best_value:
                best, best_value = candidate, value
        assert answers[b] == best


@pytest.mark.parametrize("generator", ["bart", "llama"])
def test_distill_with_a_frozen_generator_trains_only_the_retriever(paths, generator):
    rag = rag_for(paths, generator, "rag_sequence", **{"model.retriever_loss": "distill"})
    optimizer, _ = build_optimizer(rag.parts, run_config(**{"train.train_generator": False}), total_steps=10)
    rag.train()
    rag(*batch_for(rag)).backward()
    assert all(not p.requires_grad for p in rag.parts.head.generator.parameters())
    assert sum(p.grad.abs().sum() for p in rag.parts.head.question_encoder.parameters() if p.grad is not None) > 0
    assert all(id(p) not in {id(g) for g in rag.parts.head.generator.parameters()}
               for group in optimizer.param_groups for p in group["params"])


def test_the_distillation_loss_is_the_kl_from_the_generator_posterior_to_the_retriever():
    doc_scores = torch.tensor([[1.0, 0.0, -1.0]], requires_grad=True)
    likelihood = torch.tensor([[-1.0, -3.0, -0.5]])
    for temperature in (1.0, 2.0):
        target = torch.softmax(likelihood / temperature, dim=1)
        expected = (target * (target.log() - torch.log_softmax(doc_scores, dim=1))).sum()
        assert distillation_loss(doc_scores, likelihood, temperature).item() == pytest.approx(expected.item(), abs=1e-6)
    # The retriever is pulled toward the passage the generator likes best (index 2).
    distillation_loss(doc_scores, likelihood).backward()
    assert doc_scores.grad[0, 2] < 0 < doc_scores.grad[0, 1]


@pytest.mark.parametrize("generator", ["bart", "llama"])
def test_bf16_autocast_runs_the_step_on_the_cpu(paths, generator):
    cfg = run_config(**{"train.precision": "bf16"})
    rag = rag_for(paths, generator, **{"model.dropout": 0.0})  # no dropout: both passes compute the same function
    rag.train()
    inputs = batch_for(rag)
    torch.manual_seed(0)  # the question encoder's dropout: the same masks in both passes
    with torch.no_grad():
        full = rag(*inputs).item()
    torch.manual_seed(0)
    with _autocast(cfg, torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")
        loss = rag(*inputs)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(full, rel=0.02)


def test_gradient_checkpointing_gives_the_same_gradient(paths):
    grads = []
    for checkpointing in (False, True):
        rag = rag_for(paths, "llama", **{"model.dropout": 0.0})
        if checkpointing:
            rag.parts.head.generator.activation_checkpointing_enable()
        rag.train()
        torch.manual_seed(0)  # the question encoder's dropout draws the same masks in both runs
        rag(*batch_for(rag)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in rag.parts.head.generator.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_a_causal_model_keeps_its_prompt_template_through_save_and_load(paths, tmp_path):
    template = "question: {question}\npassage: {text}\nanswer:"
    rag = rag_for(paths, "gpt2", **{"model.prompt_template": template})
    save_rag_model(rag.parts, tmp_path / "model")
    loaded = load_rag_model(tmp_path / "model")
    assert loaded.head.prompt_template == template
    # Evaluation with the default template in its config still prompts as training did.
    again = RagWithRetrieval(loaded, rag.retriever, run_config().model, passage_max_length=64)
    assert again.answer(QUESTIONS)[0] == rag.answer(QUESTIONS)[0]


def test_a_template_without_question_is_refused_when_the_run_is_configured(paths):
    with pytest.raises(ConfigError, match="model.prompt_template"):
        rag_for(paths, "gpt2", **{"model.prompt_template": "{text} answer:"})
