"""Training: the LightningModule, its callbacks, checkpoint writing, test scoring, run reports
and the sweep summary."""
