"""The error every layer raises for input a user can fix (a bad flag, file, config or checkpoint).

Commands print such an error as one line and exit with 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Input the user can fix; the message names the problem and, where there is one, the way forward."""
