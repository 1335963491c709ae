"""Stress tools: decoder fuzzing, server load, slow clients."""
