"""TensorBoard event files for ``jaxmix train --tensorboard``, exact across kills and resumes.

Scalars are written with tensorboardX's ``SummaryWriter`` into ``<run_dir>/tensorboard``,
by process 0 only. They are buffered and written only after the checkpoint that covers
them is saved, so a kill never leaves events of steps that a resume will train again; on
resume, events of steps after the restored one (a checkpoint set aside as damaged) are
dropped from the files, so every (tag, step) appears once.
"""

from __future__ import annotations

import os
import struct
from typing import Iterator, Optional

__all__ = ("EventLog", "read_scalars")

_DIRNAME = "tensorboard"


def _writer_class():
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    raise ValueError("--tensorboard needs tensorboardX: pip install 'jaxmix[tensorboard]' (or tensorboardX).") from None
  return SummaryWriter


def check_available() -> None:
  """Raises ValueError (naming the package to install) if tensorboardX is missing."""
  _writer_class()


def _records(path: str) -> Iterator[bytes]:
  """The records of a TFRecord file (length, its CRC, data, its CRC); a truncated tail ends it."""
  with open(path, "rb") as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        return
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        return
      yield data


def _events(path: str):
  from tensorboardX.proto import event_pb2

  for record in _records(path):
    event = event_pb2.Event()
    event.ParseFromString(record)
    yield event


def read_scalars(run_dir: str) -> list[tuple[str, int, float]]:
  """Every ``(tag, step, value)`` scalar in the run's event files, in file order."""
  out = []
  for path in _event_files(os.path.join(run_dir, _DIRNAME)):
    for event in _events(path):
      for value in event.summary.value:
        out.append((value.tag, int(event.step), float(value.simple_value)))
  return out


def _event_files(logdir: str) -> list[str]:
  if not os.path.isdir(logdir):
    return []
  return sorted(os.path.join(logdir, n) for n in os.listdir(logdir) if "tfevents" in n)


class EventLog:
  """Buffered scalars, written to the event files when :meth:`flush` is called (after a save).

  Args:
    run_dir: the run directory.
    resume_step: the step the run resumed from (events after it are dropped), or
      ``None`` for a new run.
    enabled: ``False`` makes every method a no-op (``--tensorboard`` unset, or a
      process other than 0).
  """

  def __init__(self, run_dir: str, resume_step: Optional[int], enabled: bool):
    self._pending: list[tuple[str, float, int]] = []
    self._writer = None
    if not enabled:
      return
    logdir = os.path.join(run_dir, _DIRNAME)
    if resume_step is not None:
      _drop_after(logdir, resume_step)
    self._writer = _writer_class()(logdir=logdir, flush_secs=3600)

  def add(self, tag: str, value: float, step: int) -> None:
    if self._writer is not None:
      self._pending.append((tag, float(value), int(step)))

  def flush(self) -> None:
    """Writes the buffered scalars (call it once the checkpoint covering them is saved)."""
    if self._writer is None:
      return
    for tag, value, step in self._pending:
      self._writer.add_scalar(tag, value, step)
    self._pending.clear()
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self.flush()
      self._writer.close()


def _drop_after(logdir: str, step: int) -> None:
  """Rewrites the event files without the scalars of steps after ``step``."""
  from tensorboardX.event_file_writer import EventFileWriter

  files = _event_files(logdir)
  events = [e for path in files for e in _events(path)]
  kept = [e for e in events if not e.summary.value or e.step <= step]
  if len(kept) == len(events):  # nothing after ``step`` (or no files): leave them as they are
    return
  writer = EventFileWriter(logdir, flush_secs=3600, filename_suffix=".resumed")
  for event in kept:
    if event.summary.value:
      writer.add_event(event)
  writer.close()
  new = set(_event_files(logdir)) - set(files)
  if new:
    for path in files:
      os.remove(path)
