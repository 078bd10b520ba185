"""hlbd: the HLBD quick-learning benchmark (APT seq2seq on HLBD pairs), as fast as the hardware allows."""

__version__ = "0.1.0"
