"""Training runs: the run (orchestration), its setup (builders), state (save = resume), process (torchrun, seeds,
signals), engine (one epoch), metrics. Imports the layers below it: models, factory, checkpoint, data, config."""
