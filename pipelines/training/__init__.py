"""Training the challenger: the ResNet50 classifier, its two-phase fine-tuning, and the
MLflow model it is logged as. Import the submodules (they load TensorFlow); this package
itself stays light so that reading params does not."""
