"""Bolt listeners, grouped by kind; each module exposes one ``register(app)``."""
