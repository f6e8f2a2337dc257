"""Training: the Trainer (:mod:`.trainer`, implements the run protocol of
:mod:`sparsetrain.sparsity.run`), its builders (:mod:`.runner`), the loop, callbacks, checkpoints,
evaluation, processes and threads. The run directory is :mod:`sparsetrain.experiments.run_store`'s."""
