"""trainstack-core: parts shared by the trainstack training packages."""

__version__ = "0.1.0"
