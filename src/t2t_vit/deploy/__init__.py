"""Using trained models: export, predict, the CPU deployment runtimes, and speed measurements (model steps, input
path, runtimes). Imports the layers below it, training's data setup included (for the input path's speed)."""
