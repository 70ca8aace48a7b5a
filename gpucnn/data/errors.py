"""Exceptions raised by gpucnn.data."""


class DataError(ValueError):
    """A dataset file is missing, damaged, of the wrong kind, or could not be downloaded.

    The message always names the file (or URL) and says what is wrong with it.
    """
