"""TUNE flow: a Ray Tune sweep whose trials are whole fine-tuning runs sharing one retrieval group."""
