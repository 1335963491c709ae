"""Rendering the documents (MODEL_CARD.md, the figure blocks of README.md and docs/) from benchmarks/results."""
