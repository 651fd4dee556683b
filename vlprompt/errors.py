"""The one exception type the CLI turns into a single clear error line."""


class VLPromptError(Exception):
    """Bad input or a missing resource: the message names what is wrong and what is valid."""
