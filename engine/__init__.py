"""LLaVA-1.5 inference: prompts, images, checkpoints, backends, structured output, the predictor.

On a CPU shared with other busy processes, OpenMP's default spin-waiting makes torch's
intra-op threads wait on each other for whole scheduler slices: with one other busy
process on this 2-core machine, the tiny model served 0.3-0.7 requests/s instead of
20-30. Passive waiting costs little when cores are free, so it is the default for every
process that imports the engine before torch (the CLI, workers, the predictor, tests,
benchmarks); an explicit OMP_WAIT_POLICY in the environment wins.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
