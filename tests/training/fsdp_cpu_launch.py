"""Launch script for the FSDP test: the real CLI under accelerate's FSDP2 on CPU processes (gloo).

accelerate applies an FSDP config only to GPU process types; on CPU it trains DDP instead (and ``tgg train`` then
refuses, see ``engine._check_fsdp_applies``). So that FSDP itself — torch's ``fully_shard``, the Trainer's sharded
checkpoints, our full-state-dict save — can run in CI, this script gives a multi-CPU launch the FSDP type and the
plugin accelerate would build from the same environment, and changes nothing else.
"""

import os
import runpy
import sys

from accelerate import state
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_init = state.AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if os.environ.get("ACCELERATE_USE_FSDP") == "true" and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin or FullyShardedDataParallelPlugin()
        state.PartialState._shared_state["distributed_type"] = self.distributed_type  # as accelerate does for GPUs


state.AcceleratorState.__init__ = _init_with_fsdp_on_cpu
sys.argv = ["tgg", *sys.argv[1:]]
runpy.run_module("tinygroundinggpt.cli", run_name="__main__")
