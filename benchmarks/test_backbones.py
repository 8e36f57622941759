"""The same cases `udiff bench` runs: every installed backbone x preset x batch, and the ratios.

    pytest benchmarks/ --udiff-quick --benchmark-json=bench.json
    pytest benchmarks/ --udiff-backbones unet,dit --udiff-batches 16,64 --benchmark-json=bench.json
"""

from udiff.bench.suite import *  # noqa: F401,F403
