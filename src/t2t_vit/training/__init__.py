"""Training runs: the run (orchestration), run_dir (the run directory's one owner), budget (the clock), setup
(builders), state (save = resume), process (torchrun, seeds, signals), engine (one epoch), metrics, evaluate.
Imports the layers below it: models, factory, checkpoint, data, config; never study/ or deploy/."""
