"""Experiments on top of the runner: sweeps over config grids (:mod:`.sweep`), starting a run
from another run's weights (:mod:`.init_from`) and the loss-landscape interpolation of the RigL
paper, §5 (:mod:`.landscape`). Submodules are imported on use, so importing this package is cheap."""
