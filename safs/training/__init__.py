"""The train/eval loop, optimizers and schedules, and sparsity/MAC accounting."""
