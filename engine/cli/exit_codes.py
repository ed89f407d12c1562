"""The exit status of the ``isodose`` command."""

#: Done.
EXIT_OK = 0
#: A user error: bad input, a missing file, an option out of range (one line on stderr).
EXIT_USER_ERROR = 2
#: An unexpected failure (one line on stderr; ``--debug`` shows its traceback).
EXIT_INTERNAL_ERROR = 3
#: ``cohort run``: no case of the cohort has a result: every one failed, in this run or before (each with its reason
#: in the store and the summary).
EXIT_EVERY_CASE_FAILED = 4
#: The output could not be written at the command's end (a full disk): Python's own status for it.
EXIT_UNWRITTEN_OUTPUT = 120
#: Interrupted (Ctrl-C).
EXIT_INTERRUPTED = 130
