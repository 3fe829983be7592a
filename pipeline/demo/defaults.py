"""Empty paths in a RunConfig mean "the bundled demo": fill them, generating the demo on first use."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import RunConfig


def fill_demo_defaults(config: RunConfig) -> RunConfig:
    """Point every empty data/model path of `config` at the demo (generated under runs/demo/data if missing)."""
    # Documents only matter when the index has to be built.
    needs_documents = not config.knowledge_base.documents and not Path(config.index.directory).exists()
    needs_demo = (needs_documents or not config.model.generator
                  or not (config.data.train and config.data.dev and config.data.test))
    if not needs_demo:
        return config
    from pipeline.demo.data import ensure_demo_data

    demo = ensure_demo_data()
    if needs_documents:
        config.knowledge_base.documents = str(demo.documents)
    config.model.generator = config.model.generator or str(demo.generator)
    config.data.train = config.data.train or str(demo.train)
    config.data.dev = config.data.dev or str(demo.dev)
    config.data.test = config.data.test or str(demo.test)
    return config
