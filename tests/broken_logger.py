"""A logger whose tracking server goes away in round 2 (tests/test_loggers.py)."""
from fedexp.callbacks import Callback


class GoneInRound2(Callback):
    def __init__(self):
        self.calls = 0

    def on_step(self, run, record):
        self.calls += 1
        if record["round"] == 2:
            raise ConnectionError("tracking server at http://127.0.0.1:9 stopped answering\nsecond line")
