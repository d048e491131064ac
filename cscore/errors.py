"""Errors a user can fix, and the questions asked of any error: the one-line error type that the
command line prints without a traceback, an exception's first line, and whether an error is
running out of memory."""

import sys


class CScoreError(Exception):
  """A problem the user can fix; main() prints it as one line, without a traceback."""


def first_line(error):
  """An exception's message cut to its first line (its type's name if it has none)."""
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


def out_of_memory(error):
  """Whether an error is running out of memory: the host's, or a device's. TensorFlow is not
  imported for the question: if it is not loaded, none of its errors can have been raised."""
  tensorflow = sys.modules.get('tensorflow')
  return isinstance(error, MemoryError) or (
      tensorflow is not None and isinstance(error, tensorflow.errors.ResourceExhaustedError))

