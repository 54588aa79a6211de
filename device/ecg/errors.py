"""The ECG data path's user-facing error, in a module light enough for the CLI to import at
start-up (the pipeline itself pulls in scipy.signal, about a second on a Raspberry Pi)."""


class RecordError(ValueError):
    """A record that cannot be read or has no usable beats; the message says what to do."""
