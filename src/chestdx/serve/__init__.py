"""Using a trained model: predict files from Python, the command line and (later) a web service."""

from chestdx.serve.predictor import Prediction, Predictor

__all__ = ["Prediction", "Predictor"]
