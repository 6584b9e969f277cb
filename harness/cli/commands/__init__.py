"""One module per ``bench`` sub-command group; each has ``register(app)``."""
