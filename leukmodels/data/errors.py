"""The one exception the data layer raises for bad input: a missing folder, a file that does not parse or decode,
a labels CSV that does not match its images, a split that cannot be made.

Messages are one line and name the offending path (or patient, or value) so a user can go straight to it.
"""


class DataError(ValueError):
    """Bad or inconsistent data on disk (or an impossible split of it); the message names the path."""
