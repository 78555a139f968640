"""The pretraining loop's pieces: arguments, gradients, optimizer, schedule, checkpoints, logging."""
