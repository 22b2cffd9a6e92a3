"""Synthesis pipeline: a multi-scale fine-grained data synthesis pipeline (paper §3.2)."""
