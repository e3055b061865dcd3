"""The engine: one LightningModule (:class:`~chestdx.engine.task.ChestTask`) and DataModule for every
recipe, the run folder, training and inference procedures."""
