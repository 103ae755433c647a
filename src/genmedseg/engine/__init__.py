"""Training, evaluation and prediction for every method."""
