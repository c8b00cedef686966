"""The one exception type for bad input.

Anything a user can fix (a wrong name, a missing file, an option out of range) raises
`InputError` with one line that names what is wrong and how to fix it. The command line turns it
into that line on stderr and exit code 2; everything else is a failure while running (exit 1).
"""


class InputError(ValueError):
    """Bad input: the message is one line, naming the problem and the fix."""
