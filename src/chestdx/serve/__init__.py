"""The web service: ``chestdx serve`` (FastAPI app in :mod:`~chestdx.serve.app`, its page in
:mod:`~chestdx.serve.page`) over a :class:`~chestdx.predict.predictor.Predictor`. The Python API of a
trained model lives in :mod:`chestdx.predict`."""
