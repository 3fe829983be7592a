"""Ray-native fine-tuning of Retrieval-Augmented Generation models.

One folder per flow (see README): BUILD an index (`pipeline.index`), SERVE it from a
named detached actor group (`pipeline.retrieval`), TRAIN a RAG model against it
(`pipeline.train`, with the model math in `pipeline.model`), TUNE whole training runs
(`pipeline.tune`); the bundled demo (`pipeline.demo`) and benchmark pieces (`pipeline.bench`).
"""

import logging

# faiss reports at INFO which CPU build it loaded; Ray Train workers log INFO, so every worker would print it.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
