"""The model side's choices, listed once: how an encoder pools, and which RAG head marginalises.

Light on purpose (no torch, no transformers), so the configuration can offer these names as its choices.
"""

# How `pipeline.model.encoders.pool` turns token states into one vector: DPR's pooler output, the first
# token's state, or the mask-weighted mean.
POOLINGS = ("pooler", "cls", "mean")

# RAG marginalisation -> transformers' head class that computes it (imported when a model is built).
RAG_HEADS = {"rag_sequence": "RagSequenceForGeneration", "rag_token": "RagTokenForGeneration"}

# How the retriever learns from the generator (pipeline/model/retriever_losses.py).
RETRIEVER_LOSSES = ("marginal", "distill")

# A causal generator's prompt per retrieved passage (pipeline/model/causal_inputs.py fills and cuts it).
DEFAULT_PROMPT_TEMPLATE = "{title} / {text} // {question}\n"
