"""The two systems of record: the label registry and (later) the MLflow model registry."""
