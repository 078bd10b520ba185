"""esm2ae: ESM-2 protein language model training with packed sequences, and an autoencoder
over per-protein embeddings."""

__version__ = "0.1.0"
