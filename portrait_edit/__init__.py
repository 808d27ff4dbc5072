"""portrait_edit: feature-preserving portrait editing from generated pairs."""

__version__ = "0.1.0"
