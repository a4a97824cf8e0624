"""The one exception type whose message is shown to the user as is."""


class UserError(Exception):
    """A problem with the user's input, parameters or environment; printed without a traceback."""
