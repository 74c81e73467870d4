"""The one exception type that means "the user's input or config is wrong" (exit code 2)."""


class UserError(Exception):
    """Bad usage, config or input. The message is one line naming the file, key or row and the fix."""
