"""Training runs: the run (orchestration), run_dir (the run directory's one owner), budget (the clock), setup
(builders), tasks (what classification and the dense tasks do differently: data, model, a step's loss), state (save =
resume), process (torchrun, seeds, signals), engine (one epoch), metrics, evaluate. Imports the layers below it:
models, factory, checkpoint, data, dense, config; never study/ or deploy/."""
