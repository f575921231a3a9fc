"""The one exception the data stage raises for bad input.

Its message is a single line that names the cause (file and line, config key) and what to do;
`python -m data` prints it without a traceback and exits with status 1.
"""


class DataError(Exception):
    """Bad input to data preparation: the message says what and where."""
