"""Training experiments: equal-budget comparisons of architectures, recipes and losses."""
