"""vistune: visual instruction tuning (LLaVA) as a toolkit."""

__version__ = "0.1.0"
