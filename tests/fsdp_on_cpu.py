"""``udiff`` with accelerate's FSDP plugin on CPU processes, for the FSDP test.

accelerate 1.15 switches a run to FSDP only on GPU-like devices: with ``cpu=True`` its state
stays MULTI_CPU and ``--fsdp`` is refused. torch's FSDP2 itself shards on CPU over gloo, so this
launcher lifts exactly that one gate -- after accelerate built its state with udiff's plugin it
marks the state FSDP -- and runs the ordinary CLI; accelerate's FSDP2 preparation
(``fully_shard`` per block, optimizer re-pointed to the shards) and all of udiff run unchanged.

Run as: ``python -m accelerate.commands.launch --multi_gpu --num_processes 2 fsdp_on_cpu.py
train ... --fsdp``.
"""

import sys

import accelerate.state as state
from accelerate.utils import DistributedType

accelerate_init = state.AcceleratorState.__init__


def init_allowing_cpu_fsdp(self, *args, **kwargs):
    accelerate_init(self, *args, **kwargs)
    plugin = kwargs.get("fsdp_plugin")
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, plugin
        state.PartialState._shared_state["distributed_type"] = self.distributed_type  # as it does


state.AcceleratorState.__init__ = init_allowing_cpu_fsdp

if __name__ == "__main__":
    from udiff.cli import main

    sys.exit(main(sys.argv[1:]))
