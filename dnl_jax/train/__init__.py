"""Training system: config, steps, parallel drivers, checkpoints, metrics and the trainer."""
