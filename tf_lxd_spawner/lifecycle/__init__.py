"""One server's life: its record (what exists, and the only transitions it may take), the
rules that map a phase to an action, and the steps of a start and a stop (preflight, starting,
stopping, recovery, renaming) with what they hand the notebook module."""
