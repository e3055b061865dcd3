"""The engine: the generic LightningModule (:class:`~chestdx.engine.task.ChestTask`) and the 2D
DataModule that the tasks (:mod:`chestdx.tasks`) use and extend, the run folder, training and
inference procedures."""
