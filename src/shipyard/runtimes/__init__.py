"""One module per model framework behind one small interface (see base.py)."""
