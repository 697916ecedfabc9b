"""Exit codes of every safs command, and the exceptions a stage ends with."""

EXIT_FAILED = 1  # a stage failed; a cluster could not be reached, refused, or does not know a job
EXIT_BAD_INPUT = 2  # rejected before anything ran or was written
EXIT_INTERRUPTED = 130  # stopped cleanly (Ctrl-C, SIGTERM, `safs jobs stop`): the same command continues


class StageFailed(RuntimeError):
    """A stage ended without a usable result (its record says ``failed``)."""


class StageInterrupted(RuntimeError):
    """A stage stopped before it finished; the same command continues it."""
