"""sftgate: fine-tune a causal LM on retrieval-augmented QA until it passes a quality gate."""

__version__ = "0.1.0"
