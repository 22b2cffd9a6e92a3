"""Evaluation: benchmarks as declarative tasks, a cached data-parallel runner, paper-layout reports.

```python
from tinygroundinggpt.eval import checkpoint_id, evaluate, get_task
tasks = [get_task("refcoco_val"), get_task("pope_adversarial")]
results = evaluate(pipe, tasks, "data", "eval_out", model_id=checkpoint_id(CKPT))  # who answers: kept with the answers
```
"""

from tinygroundinggpt.eval.runner import checkpoint_id, evaluate
from tinygroundinggpt.eval.task import EvalOptions, Item, Task, get_task, register, task_names

__all__ = ["EvalOptions", "Item", "Task", "checkpoint_id", "evaluate", "get_task", "register", "task_names"]
