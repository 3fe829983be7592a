"""Which runs are the bundled demo, and the demo's paths filled into them.

A run is the demo when it names no data at all: `knowledge_base.documents`, `data.train`, `data.dev`,
`data.test` and `model.generator` are all empty and `index.directory` is at its default. Only such a run
gets the demo's paths (the demo is generated on first use; docs/results.md gives the time). Any other run must
name what its job reads; an empty one is a ConfigError naming the key, never a silent switch to the demo's
file.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import IndexConfig, RunConfig
from pipeline.demo import (
    data as demo_data,  # read at call time: where the demo lives can be pointed elsewhere
)
from pipeline.demo.causal_generator import CAUSAL_DIR, ensure_causal_generator
from pipeline.errors import ConfigError

DATA_KEYS = ("knowledge_base.documents", "data.train", "data.dev", "data.test", "model.generator")
TRAINING_NEEDS = ("data.train", "data.dev", "model.generator")  # + documents when the index must be built

_WHAT_TO_GIVE = {
    "knowledge_base.documents": "give the documents file to build the index from",
    "data.train": "give a training QA file",
    "data.dev": "give a dev QA file",
    "data.test": "give a test QA file",
    "model.generator": "give a generator (Hugging Face name or path, e.g. facebook/bart-large or Qwen/Qwen2.5-0.5B)",
}


def _get(config: RunConfig, dotted: str) -> str:
    section, _, name = dotted.partition(".")
    return getattr(getattr(config, section), name)


def demo_causal_generator() -> str:
    """Where the demo's causal generator lives: a run naming it as model.generator (configs/demo_causal.yaml) and
    no other data is the demo with a decoder-only generator, built on first use."""
    return str(Path(demo_data.DEMO_DIR) / CAUSAL_DIR)


def _is_demo_causal(generator: str) -> bool:
    return bool(generator) and Path(generator).resolve() == Path(demo_causal_generator()).resolve()


def is_demo_run(config: RunConfig) -> bool:
    """True when the run names no data: every key of DATA_KEYS empty (model.generator may name the demo's causal
    generator) and index.directory at its default."""
    named = [key for key in DATA_KEYS if _get(config, key)
             and not (key == "model.generator" and _is_demo_causal(config.model.generator))]
    return not named and config.index.directory == IndexConfig().directory


def training_needs(config: RunConfig) -> tuple[str, ...]:
    """The keys a fine-tuning run (or a Tune sweep) reads: QA splits, generator, and the documents only when
    the index directory does not exist yet (they are read to build it). data.test is not read by training."""
    needs_documents = not Path(config.index.directory).exists()
    return TRAINING_NEEDS + (("knowledge_base.documents",) if needs_documents else ())


def _is_demo_file(path: str) -> bool:
    """Whether `path` is the demo's documents file (a demo run's config, filled once already)."""
    return Path(path).resolve() == demo_data.DemoPaths.at(demo_data.DEMO_DIR).documents.resolve()


def fill_demo_defaults(config: RunConfig, needs: tuple[str, ...] | None = None) -> RunConfig:
    """A demo run (`is_demo_run`) gets every data path of the demo, generating it if missing; any other run
    must have set every key in `needs` (default: `training_needs(config)`), else ConfigError naming the empty
    keys. A run that names its own documents but keeps the demo's index directory is refused too: a demo
    index already there would be served in place of an index of those documents."""
    if is_demo_run(config):
        demo = demo_data.ensure_demo_data()
        config.knowledge_base.documents = str(demo.documents)
        if _is_demo_causal(config.model.generator):
            config.model.generator = str(ensure_causal_generator(demo, lambda: demo_data.shadow_reading_examples(0)))
        else:
            config.model.generator = str(demo.generator)
        config.data.train, config.data.dev, config.data.test = str(demo.train), str(demo.dev), str(demo.test)
        return config
    needs = training_needs(config) if needs is None else needs
    empty = [key for key in needs if not _get(config, key)]
    if empty:
        what = "; ".join(f"{key}: empty ({_WHAT_TO_GIVE.get(key, 'give a path')})" for key in empty)
        raise ConfigError(f"{what}; or name no data at all to run the bundled demo")
    if (config.knowledge_base.documents and config.index.directory == IndexConfig().directory
            and not _is_demo_file(config.knowledge_base.documents)):
        raise ConfigError(f"index.directory: {config.index.directory} is where the bundled demo's index lives; "
                          f"name a directory for the index of {config.knowledge_base.documents}")
    return config
