"""SLEB block pruning: the pure selection loop (`select.py`), the scorers (`scoring.py`), the stage (`stage.py`)."""
