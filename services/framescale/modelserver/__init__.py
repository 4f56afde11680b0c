"""A TF-Serving-protocol model server for local runs and tests, and the model exporter.

``python -m framescale.modelserver`` stands in for the ``tensorflow/serving`` image (its
binary cannot be installed everywhere): it serves SavedModels from TF Serving's folder
layout with real TensorFlow over TF Serving's gRPC and REST APIs.
``python -m framescale.modelserver.export`` writes the detector SavedModels it serves.

Importing this package is cheap; TensorFlow is imported only by the modules that need it
(``detectors``, ``repository``, ``export``'s work), so ``--help`` answers at once.
"""
