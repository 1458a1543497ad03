"""Tidy tables: statistics across prompts, profile shape, comparison reading."""
