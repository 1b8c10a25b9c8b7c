"""The registered model's code (MLflow models-from-code): MLflow runs this file to build the pyfunc model."""

from clipcite.tracking.served_model import ClassifierModel, set_model

set_model(ClassifierModel())
