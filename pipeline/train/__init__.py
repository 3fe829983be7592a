"""TRAIN flow: QA data (Ray Data) -> TorchTrainer workers -> retrieval group -> RAG loss; evaluation and metrics."""
