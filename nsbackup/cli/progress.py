"""Progress of ``backup run`` on a terminal: one line per module (bytes, files, percent, ETA),
drawn by rich. Nothing when stdout is not a terminal or with ``--json``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from nsbackup.cli.base import Context


@contextlib.contextmanager
def progress_display(ctx: Context) -> Iterator[Any]:
    """A progress callback for ``cluster.runs.run`` (``None`` when nothing is shown)."""
    if ctx.json or not ctx.out.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    console = Console(file=ctx.err)
    columns = (
        TextColumn("{task.description:<20}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[files]} files"),
        TimeRemainingColumn(),
    )
    lock = threading.Lock()
    tasks: dict[str, Any] = {}
    with Progress(*columns, console=console, transient=False) as bar:

        def update(module_id: str, event: str, data: dict[str, Any]) -> None:
            with lock:
                task = tasks.get(module_id)
                if task is None:
                    task = tasks[module_id] = bar.add_task(module_id, total=None, files=0)
                if event == "progress":
                    bar.update(
                        task,
                        total=data.get("total_bytes") or None,
                        completed=data.get("bytes_done", 0),
                        files=data.get("files_done", 0),
                    )
                elif event == "end":
                    state = "ok" if data.get("success") else "FAILED"
                    total = bar.tasks[task].total or bar.tasks[task].completed or 1
                    bar.update(
                        task, description=f"{module_id} {state}", total=total, completed=total
                    )

        yield update
