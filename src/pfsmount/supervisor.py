"""Keeping user code running against the datum loop, in both of Pachyderm's modes.

With datum batching one process serves many datums. When it exits (whatever its status),
is killed, or overstays `datum_timeout`, its datum attempt fails, `err_cmd` runs, the
process group is stopped and a fresh process is started; the datum is retried when that
process asks for it. A process that dies before asking for any datum several times in a
row is a crash loop and fails the job instead of spinning.

Without datum batching (Pachyderm's default) `cmd` runs once per datum with the datum's
environment as its own; exit 0 is success, and so is any code in `accept_return_code`.

With N workers each runs this alone, side by side: its own process (and sandbox, and
environment: its own NextDatum endpoint), its own restarts and crash-loop count. A crash loop
on any worker stops the job.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence

import trio

from pfsmount import usercode
from pfsmount.console import Console
from pfsmount.joblog import JobLog
from pfsmount.sandbox import NO_SANDBOX, Sandbox
from pfsmount.spec import PipelineSpec
from pfsmount.worker import DatumLoop, DatumRecord, Worker

log = logging.getLogger(__name__)

MAX_CRASH_RESTARTS = 3  # consecutive deaths before the first NextDatum call


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


class Supervisor:
    """Runs the user code of one job and drives `loop` with it."""

    def __init__(
        self,
        loop: DatumLoop,
        spec: PipelineSpec,
        console: Console,
        joblog: JobLog,
        env: Mapping[str, str],
        *,
        workdir: str | None,
        stop_grace: float,
        exit_grace: float,
        problems: list[str],
        sandbox: Sandbox = NO_SANDBOX,
        worker_envs: Sequence[Mapping[str, str]] = (),
        worker_sandboxes: Sequence[Sandbox] = (),
    ) -> None:
        self.loop = loop
        self.spec = spec
        self.console = console
        self.joblog = joblog
        self.env = dict(env)  # what every worker's processes share
        workers = len(loop.workers)
        # Each worker's own process environment and sandbox (its endpoint, its /pfs).
        self.worker_envs = [dict(e) for e in worker_envs] or [dict(env)] * workers
        self.worker_sandboxes = list(worker_sandboxes) or [sandbox] * workers
        self.workdir = workdir
        self.stop_grace = stop_grace
        self.exit_grace = exit_grace
        self.problems = problems
        self.sandbox = sandbox
        self.restarts = 0
        self._live: dict[usercode.UserProcess, int] = {}  # process -> its worker
        self._nursery: trio.Nursery | None = None

    async def run(self) -> str:
        """Process every datum; returns "success" when the loop completed, else "failed"."""
        t = self.spec.transform
        self.loop.configure(self.env, self._run_err_cmd if t.err_cmd else None, t.env)
        # Datums arrive while the repos are listed: the user code starts with the first.
        if not await self.loop.has_work():
            log.info("no datum needs to run; the user code is not started")
            return "success"
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                return await self._all_workers(
                    self._batching if t.datum_batching else self._classic)
            finally:
                with trio.CancelScope(shield=True):
                    await self.stop_all()
                    # Output pipes may be held open by escaped grandchildren; don't wait.
                    with trio.move_on_after(1.0):
                        while len(nursery.child_tasks) > 0:
                            await trio.sleep(0.01)
                    nursery.cancel_scope.cancel()

    def live_pids(self, worker: int | None = None) -> list[int]:
        """The root pids of the live process trees of `worker` (None: of every worker).

        Read from gRPC threads too.
        """
        return [proc.pid for proc, w in list(self._live.items()) if worker in (None, w)]

    async def stop_all(self) -> None:
        """Stop every process this supervisor started that may still run."""
        procs = list(self._live)
        async with trio.open_nursery() as nursery:
            # At once: N workers each given the full grace period one after the other
            # would stretch the stop N times.
            for proc in procs:
                nursery.start_soon(proc.stop, self.stop_grace)
        for proc in procs:
            self._live.pop(proc, None)

    async def _all_workers(self, drive: Callable[[Worker], Awaitable[str]]) -> str:
        """Drive every worker with `drive` side by side: "failed" as soon as one fails."""
        outcome = "success"
        async with trio.open_nursery() as nursery:
            async def one(worker: Worker) -> None:
                nonlocal outcome
                if await drive(worker) != "success":
                    outcome = "failed"
                    nursery.cancel_scope.cancel()

            for worker in self.loop.workers:
                nursery.start_soon(one, worker)
        return outcome

    # ----- starting processes ---------------------------------------------------------

    async def _start(self, worker: int, cmd: tuple[str, ...], env: Mapping[str, str],
                     stdin: tuple[str, ...], sink: usercode.LineSink) -> usercode.UserProcess:
        assert self._nursery is not None
        proc = await usercode.start(self._nursery, cmd, env, self.workdir, stdin, sink,
                                    self.worker_sandboxes[worker])
        self._live[proc] = worker
        return proc

    async def _stop(self, proc: usercode.UserProcess) -> None:
        with trio.CancelScope(shield=True):
            await proc.stop(self.stop_grace)
        self._live.pop(proc, None)

    def _user_sink(self, worker: Worker) -> usercode.LineSink:
        def sink(stream: str, line: bytes) -> None:
            # The datum of *this* worker: lines of several workers interleave.
            record = worker.current
            self.console.user_line(stream, line)
            self.joblog.line(record.datum.id if record else "",
                             record.attempts if record else 0, "user", stream, line)

        return sink

    async def _run_err_cmd(self, record: DatumRecord, env: Mapping[str, str],
                           worker: int) -> int:
        def sink(stream: str, line: bytes) -> None:
            self.console.user_line(stream, line)
            self.joblog.line(record.datum.id, record.attempts, "err_cmd", stream, line)

        t = self.spec.transform
        # In the failing worker's sandbox: its /pfs still shows the failed datum.
        proc = await self._start(worker, t.err_cmd, {**self.worker_envs[worker], **env},
                                 t.err_stdin, sink)
        timeout = self.spec.datum_timeout or math.inf
        with trio.move_on_after(timeout) as scope:
            code = await proc.wait()
        await self._stop(proc)
        if scope.cancelled_caught:
            log.warning("err_cmd for datum %s overran datum_timeout and was stopped",
                        record.datum.id[:12])
            return -1
        log.info("err_cmd for datum %s %s", record.datum.id[:12], usercode.describe_exit(code))
        return code

    # ----- datum batching -------------------------------------------------------------

    async def _batching(self, worker: Worker) -> str:
        crashes = 0
        cmd = self.spec.transform
        while True:
            worker.resume()
            proc = await self._start(worker.index, cmd.cmd, self.worker_envs[worker.index],
                                     cmd.stdin, self._user_sink(worker))
            event = await self._wait(proc, worker)
            if event == "finished":
                await self._end_after_last(proc, worker)
                return "success"
            calls = worker.process_calls
            if event == "timeout":
                reason = (f"datum_timeout of {fmt_seconds(self.spec.datum_timeout or 0)} "
                          "expired; the user code was stopped")
            else:
                await worker.pause()
                reason = f"user code {usercode.describe_exit(proc.returncode or 0)}"
            await self._stop(proc)
            await worker.process_died(reason)
            if self.loop.finished.is_set():
                return "success"
            crashes = crashes + 1 if calls == 0 else 0
            if crashes >= MAX_CRASH_RESTARTS:
                problem = (f"user code {usercode.describe_exit(proc.returncode or 0)} before "
                           f"asking for a datum, {crashes} times in a row; stopping instead of "
                           "restarting it again (crash loop)")
                if not self.spec.transform.datum_batching or calls == 0:
                    problem += (": with datum_batching it must call NextDatum (pfsmount's "
                                "client, `pachctl next datum` or pachyderm-sdk's "
                                "batch_all_datums) — check transform.cmd and its output above")
                self.problems.append(problem)
                await self.loop.abort("the job stopped: crash loop")
                return "failed"
            self.restarts += 1
            log.warning("%s; starting it again", reason)

    async def _wait(self, proc: usercode.UserProcess, worker: Worker) -> str:
        """"finished", "exited" or "timeout": whichever happens first."""
        result: list[str] = []

        async with trio.open_nursery() as n:
            def done(event: str) -> None:
                if not result:
                    result.append(event)
                n.cancel_scope.cancel()

            async def exited() -> None:
                await proc.wait()
                done("exited")

            async def finished() -> None:
                await self.loop.finished.wait()
                done("finished")

            async def timer() -> None:
                while True:
                    changed, deadline = worker.changed, worker.deadline
                    attempt = worker.current_attempt()
                    if deadline is None:
                        await changed.wait()
                        continue
                    with trio.move_on_at(deadline):
                        await changed.wait()
                    if not changed.is_set() and await worker.pause(attempt):
                        done("timeout")
                        return

            n.start_soon(exited)
            n.start_soon(finished)
            n.start_soon(timer)
        if self.loop.finished.is_set():
            return "finished"
        return result[0]

    async def _end_after_last(self, proc: usercode.UserProcess, worker: Worker) -> None:
        if worker.last_caller_own:
            # pfsmount's clients are told "no more datums" and should leave on their own.
            with trio.move_on_after(self.exit_grace) as waited:
                await proc.wait()
            if waited.cancelled_caught:
                log.warning("user code did not exit within %s of the last datum; stopping it",
                            fmt_seconds(self.exit_grace))
        # A Pachyderm client is blocked in NextDatum forever: end it, as Pachyderm does.
        await self._stop(proc)

    # ----- one process per datum ------------------------------------------------------

    async def _classic(self, worker: Worker) -> str:
        t = self.spec.transform
        timeout = self.spec.datum_timeout or math.inf
        error = ""
        while True:
            reply = await worker.advance(error)
            if reply.done:
                return "success"
            # The datum's variables on top of the inherited environment, as Pachyderm does.
            env = {**self.worker_envs[worker.index],
                   **dict(item.split("=", 1) for item in reply.env)}
            proc = await self._start(worker.index, t.cmd, env, t.stdin, self._user_sink(worker))
            with trio.move_on_after(timeout) as scope:
                code = await proc.wait()
            await self._stop(proc)
            if scope.cancelled_caught:
                error = (f"datum_timeout of {fmt_seconds(self.spec.datum_timeout or 0)} "
                         "expired; cmd was stopped")
            elif code != 0 and code not in t.accept_return_code:
                error = f"cmd {usercode.describe_exit(code)}"
            else:
                error = ""
