"""Evaluation: benchmarks as declarative tasks, a cached data-parallel runner, paper-layout reports.

```python
from tinygroundinggpt.eval import evaluate, get_task
results = evaluate(pipe, [get_task("refcoco_val"), get_task("pope_adversarial")], "data", "eval_out")
```
"""

from tinygroundinggpt.eval.runner import evaluate
from tinygroundinggpt.eval.task import EvalOptions, Item, Task, get_task, register, task_names

__all__ = ["EvalOptions", "Item", "Task", "evaluate", "get_task", "register", "task_names"]
