"""One module per benchmark family; importing this package registers every task by name."""

from tinygroundinggpt.eval.benchmarks import choice, judged, mme, pope, rec, vqa  # noqa: F401
