"""Converters from published dataset files into the project sample format (one module per family)."""
