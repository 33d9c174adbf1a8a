"""Training the challenger: the classifier on one of eight backbones or the article's
convnet, fine-tuned or trained as a head on cached features, and the MLflow model it is
logged as. Import the submodules (most load TensorFlow); this package itself stays light so
that reading params does not."""
