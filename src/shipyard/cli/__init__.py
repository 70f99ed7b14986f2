"""The `shipyard` command line."""

import os

# Plain help, as click writes it: Typer's boxed Rich panels squeeze the option text into
# a narrow column that wraps word by word at 80 columns (issue 22). Read by typer.core
# when it is first imported, which is after this (every command module imports typer).
os.environ.setdefault("TYPER_USE_RICH", "0")
