"""The file MLflow logs as the model's code ("models from code"): no pickled objects."""

from mlflow.models import set_model

from pipelines.training.pyfunc import MelanomaClassifier

set_model(MelanomaClassifier())
