"""What the command-line entry points (`python -m cifar_ablate`, `python -m cifar_ablate.report`) share about
their output stream."""
import os


class ReaderGoneStdout:
    """sys.stdout that, once its reader has gone (`python -m cifar_ablate ... | head`), sends the rest of the
    output to /dev/null instead of failing the run with BrokenPipeError in the middle of training."""

    def __init__(self, stream):
        self._stream = stream

    def _reader_gone(self):
        os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())  # what is still buffered goes there too

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def __getattr__(self, name):  # isatty, fileno, encoding, ...
        return getattr(self._stream, name)
