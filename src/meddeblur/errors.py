"""The one exception type for problems a user can fix."""


class UserError(Exception):
    """A problem caused by the user's input (path, image, weights, option).

    The CLI prints ``str(error)`` as a single line and exits with code 2, so the
    message must name the offending file or option and say what to do.
    """
