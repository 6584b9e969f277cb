"""Training: the engine, DDP primitives, augmentation, perturbations, losses, schedules, devices."""
