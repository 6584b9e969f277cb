"""Built-in experiment trackers (``bench run --tracker tensorboard,mlflow``); their packages are optional."""
