"""Exit codes of every safs command."""

EXIT_FAILED = 1  # a stage failed; a cluster could not be reached, refused, or does not know a job
EXIT_BAD_INPUT = 2  # rejected before anything ran or was written
EXIT_INTERRUPTED = 130  # stopped cleanly (Ctrl-C, SIGTERM, `safs jobs stop`): the same command continues
