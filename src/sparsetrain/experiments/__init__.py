"""Experiments on top of the trainer: the run store (:mod:`.run_store`: run directories keyed by
the config hash, idempotent runs), sweeps over config grids (:mod:`.sweep`), the loss-landscape
interpolation of the RigL paper, §5 (:mod:`.landscape`) and sanity checks of a found mask
(:mod:`.sanity`). Submodules are imported on use, so importing this package is cheap."""
