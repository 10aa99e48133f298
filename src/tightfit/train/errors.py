"""The one error type for bad user input in train/bench.

The CLI prints its message as a single line and exits with code 2, so every message
names the bad value and what is allowed instead of surfacing a traceback.
"""


class TrainInputError(ValueError):
    """A file, name or size given by the user cannot be used."""
