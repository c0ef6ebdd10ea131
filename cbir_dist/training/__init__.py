"""Training the two-stage inpainter: configuration, data, the loop, checkpoints, history, the job."""
