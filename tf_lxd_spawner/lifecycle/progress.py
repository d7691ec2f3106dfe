"""The spawn page's progress bar: events a start emits, Terraform's events turned into them,
and the stream JupyterHub reads (`Spawner.progress`)."""

from __future__ import annotations

import asyncio
import time


class Progress:
    """Progress events of one start, in order; `stream()` yields them until the start ends."""

    def __init__(self):
        self.events: list[dict] = []
        self._changed = asyncio.Event()
        self._done = True
        self._apply_started: float | None = None

    def begin(self) -> None:
        self.events = []
        self._done = False

    def end(self) -> None:
        self._done = True
        self._changed.set()

    def emit(self, progress: int, message: str) -> None:
        self.events.append({"progress": progress, "message": message})
        self._changed.set()

    async def stream(self):
        seen = 0
        while True:
            while seen < len(self.events):
                yield self.events[seen]
                seen += 1
            if self._done:
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), 1)
            except asyncio.TimeoutError:
                pass

    def terraform_listener(self, instance: str, target: str | None):
        """A handler for `terraform apply -json` events: the instance's create/remove and errors."""
        where = f" on {target}" if target else ""

        def on_event(event: dict) -> None:
            kind = event.get("type")
            hook = event.get("hook") or {}
            addr = (hook.get("resource") or {}).get("addr", "")
            if kind == "apply_start" and "lxd_container" in addr:
                self._apply_started = time.monotonic()
                action = "Removing" if hook.get("action") == "delete" else "Creating"
                self.emit(40, f"{action} instance {instance}{where}")
            elif kind == "apply_complete" and "lxd_container" in addr:
                self._apply_started = None
                self.emit(85, f"Instance {instance} is running{where} ({hook.get('elapsed_seconds', 0)} s)")
            # Terraform's and LXD's own words stay in the hub's log and the run log: they can
            # name hosts, paths and other users' settings.
            elif kind == "apply_errored":
                self.emit(85, f"Terraform failed on {addr} (the details are in the hub's log)")
            elif kind == "diagnostic" and (event.get("diagnostic") or {}).get("severity") == "error":
                self.emit(85, "Terraform reported an error (the details are in the hub's log)")

        return on_event

    async def tick_while_creating(self, instance: str) -> None:
        """Move the bar while the provider creates the instance (Terraform is silent meanwhile)."""
        while True:
            await asyncio.sleep(1)
            if self._apply_started is not None:
                elapsed = time.monotonic() - self._apply_started
                pct = 40 + min(int(elapsed * 4), 40)
                self.emit(pct, f"Creating instance {instance}: {elapsed:.0f} s elapsed")
