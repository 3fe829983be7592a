"""Ray-native fine-tuning of Retrieval-Augmented Generation models.

Flows (see README): BUILD an index (`pipeline.index`), SERVE it from a named
detached actor group (`pipeline.retrieval`), TRAIN a RAG model against it
(`pipeline.training`), TUNE whole training runs (`pipeline.tuning`).
"""

import logging

# faiss reports at INFO which CPU build it loaded; Ray Train workers log INFO, so every worker would print it.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
