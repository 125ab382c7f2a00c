"""User-facing errors: one line naming the thing, what was expected, and the fix."""


class WmpoError(Exception):
    """A user mistake or bad input. The CLI prints it as one line, without a traceback."""


class CheckpointError(WmpoError):
    """A checkpoint that is missing, tampered, pickled or does not match the robot."""


class BagError(WmpoError):
    """A bag that is corrupt, truncated or lacks what training needs."""


class StoreError(WmpoError):
    """An episode store that is missing or inconsistent."""
