"""A booted mmhil VM: the QEMU process, its three channels, the guest's DDIs and QEMU's own view.

    with Vm(config, kernel=..., artifacts=...) as vm:       # boots; shuts down on exit
        pa = vm.mm.MmGetPhysicalAddress(va)                  # the agent's answer
        assert pa == vm.qemu.gva2gpa(va)                     # QEMU's, computed without the agent

This is the layer that turns what the channels saw into verdicts: a `!bugcheck` frame becomes
BugCheck, a closed channel becomes QemuDiedError or GuestReset, a silent guest becomes GuestTimeout.
Each carries the console tail and the log paths, so a failure reads on its own.

A crash the test did not expect leaves an ELF core of the guest in the VM's artifacts (`vm.core`,
harness.coredump): QEMU pauses on the kernel's pvpanic write and on a triple fault's reset
(machine.CRASH_ACTIONS), the harness dumps the guest, then lets the kernel's exit write end QEMU
(status 33) or quits it.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType

from harness.agent.client import AgentClient, AgentStopped, ChannelClosed, ChannelTimeout
from harness.agent.codec import PROTOCOL_VERSION, Notice, Response, Value, parse_memory_map
from harness.agent.mailbox import Mailbox
from harness.build import KernelImage
from harness.config import VmConfig
from harness.console import BOOT_COMPLETE, Console, ConsoleBadPattern, ConsoleClosed, ConsoleTimeout
from harness.coredump import CORE_NAME, CoreDump, dump_guest_core, stop_is_expected
from harness.errors import (
    AgentError,
    BugCheck,
    BugCheckRecord,
    FirmwareError,
    GuestReset,
    GuestTimeout,
    HostConnectionLost,
    InfrastructureError,
    MmhilError,
    ProtocolError,
    QemuDiedError,
)
from harness.guest import MemoryManager
from harness.hosts.base import VmHost
from harness.machine import STATUS_BUGCHECK, STATUS_FIRMWARE_FAILED, LaunchPlan, QemuMachine
from harness.monitor import QemuMonitor
from harness.pump import Pump
from harness.qmp import QmpEvent
from harness.verify import Verifier, ram_layout

FIRMWARE_SAYS = "mmhil firmware: "  # how driver_src/firmware starts the line that says why it stopped


def bugcheck_record(notice: Notice) -> BugCheckRecord:
    v = notice.values

    def number(key: str) -> int:
        value = v.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(f"bugcheck record without integer '{key}': {v!r}")
        return value

    def optional(key: str) -> int | None:
        return number(key) if key in v else None

    name = v.get("name", "")
    return BugCheckRecord(
        code=number("code"),
        parameters=(number("p1"), number("p2"), number("p3"), number("p4")),
        name=name if isinstance(name, str) else "",
        rip=number("rip"),
        cr3=number("cr3"),
        vector=optional("vector"),
        error_code=optional("error"),
        cr2=optional("cr2"),
        cpu=optional("cpu"),
    )


class Vm:
    def __init__(self, config: VmConfig, *, kernel: KernelImage, accelerator: str, artifacts: Path,
                 shared_ram: bool | None = None, gdb_socket: Path | None = None,
                 host: VmHost | None = None) -> None:
        self.config = config
        self.name = config.name
        self.kernel = kernel
        self.accelerator = accelerator
        self.artifacts = artifacts
        if shared_ram is None:
            shared_ram = config.shares_ram
        plan = LaunchPlan(kernel=kernel.path, accelerator=accelerator, artifacts=artifacts,
                          shared_ram=shared_ram, gdb_socket=gdb_socket, firmware=kernel.firmware_for(config))
        self.machine = QemuMachine(config, plan, host=host)
        self.host = self.machine.host
        self.mm = MemoryManager(self)
        self._console: Console | None = None
        self._agent: AgentClient | None = None
        self._monitor: QemuMonitor | None = None
        self._verifier: Verifier | None = None
        self._pumps: list[Pump] = []
        self.hello: dict[str, Value] = {}
        self.hello_channel = ""  # where it came: "COM2", or "the mailbox" where this host maps guest RAM
        self.memory_map: list[tuple[int, int, int]] = []
        self.boot_seconds: float | None = None
        # Host clock (time.monotonic) at each step of boot(): "launched" (QEMU started), "qmp" (its
        # monitor answered), "resumed" (`cont` sent), "ready" (the agent's hello arrived).
        self.boot_clock: dict[str, float] = {}
        self.crash: BugCheck | GuestReset | None = None
        self.core_dumps = True  # an unexpected crash leaves an ELF core (harness.coredump)
        self.log_problems: list[str] = []  # logs that could not be written in full
        self.core: CoreDump | None = None
        self.gdb_socket = gdb_socket
        # No time limits while a person steps through the kernel in gdb.
        self.timeout = 1e6 if gdb_socket else config.timeout
        self.on_gdb_wait: Callable[[Path], None] = lambda socket_path: None

    # -- boot and shutdown ----------------------------------------------------------------------

    def boot(self) -> Vm:
        machine = self.machine
        machine.launch(timeout=self.timeout)
        self.boot_clock = {"launched": machine.launched_at, "qmp": time.monotonic()}
        assert machine.console_socket is not None and machine.agent_socket is not None
        assert machine.qmp is not None
        machine.qmp.on_event = self._on_qmp_event
        # The guest boots while the harness sets up its side: the channels hold what it writes
        # until their pumps start.
        resumed = machine.resume() if machine.gdb_socket is None else None
        self.boot_clock["resumed"] = time.monotonic()
        self._pumps = [Pump(machine.console_socket, f"{self.name}-console"),
                       Pump(machine.agent_socket, f"{self.name}-agent")]
        self._console = Console(self._pumps[0].read_fd, machine.console_log)
        self._agent = AgentClient(machine.agent_socket, self._pumps[1], machine.agent_log)
        self._monitor = QemuMonitor(machine.qmp, machine.scratch)
        if resumed is not None:
            try:
                resumed.wait(self.timeout)
            except InfrastructureError as exc:
                # A guest that ends QEMU at once (the firmware stopping) can beat `cont`'s answer out.
                if machine.wait_exit(2.0) is None:
                    raise
                raise self._ended() from exc
        elif machine.gdb_socket is not None:
            self.on_gdb_wait(machine.gdb_socket)  # the person resumes the VM from gdb
        # The hello alone says the boot is over. The kernel prints its console line after it, so a
        # wait for that line would add the line's bytes and the console's lag to every boot.
        try:
            hello = self._agent.wait_hello(self._mailbox_opener(), self.timeout)
        except MmhilError as exc:
            raise self._verdict(exc, "the agent's hello") from exc
        self.hello_channel = "COM2" if self._agent.mailbox is None else "the mailbox"
        self.boot_clock["ready"] = time.monotonic()
        self.boot_seconds = self.boot_clock["ready"] - machine.launched_at
        self._check_hello(hello)
        # Boot happens once: a second banner means the machine reset under us.
        self._console.forbid("unexpected reboot", BOOT_COMPLETE, allowed=1)
        return self

    def _check_hello(self, hello: Notice) -> None:
        self.hello = hello.values
        if hello.values.get("proto") != PROTOCOL_VERSION:
            raise ProtocolError(f"{self.name}: agent speaks protocol {hello.values.get('proto')!r}, "
                                f"the harness speaks {PROTOCOL_VERSION}")
        if hello.values.get("build") != self.kernel.build_id:
            raise InfrastructureError(f"{self.name}: the guest runs build {hello.values.get('build')!r}, "
                                      f"but {self.kernel.path} is build {self.kernel.build_id!r}")
        if hello.values.get("paging") != self.config.paging_levels:
            raise InfrastructureError(
                f"{self.name}: the config asks for {self.config.paging_levels}-level paging but the kernel "
                f"runs {hello.values.get('paging')!r}-level (console: {self.machine.console_log})")
        cpus = hello.values.get("cpus")
        if cpus != self.config.smp:
            raise InfrastructureError(
                f"{self.name}: the config asks for {self.config.smp} vCPU(s) but the kernel brought up "
                f"{cpus!r} (console: {self.machine.console_log})")
        mem = hello.values.get("mem")
        self.memory_map = parse_memory_map(mem) if isinstance(mem, str) else []
        self._attach_mailbox(hello.values.get("mailbox"))

    def _mailbox_opener(self) -> Callable[[], Mailbox] | None:
        """Where this host maps the guest's RAM, it asked for the hello in the mailbox (hello=mailbox),
        which the kernel image's note locates."""
        if self.machine.shared_ram_fd is None:
            return None
        return partial(self._mailbox_at, self.kernel.mailbox_address)

    def _mailbox_at(self, physical_address: int) -> Mailbox:
        fd = self.machine.shared_ram_fd
        assert fd is not None
        return Mailbox(fd, ram_layout(self.config), physical_address, PROTOCOL_VERSION)

    def _attach_mailbox(self, physical_address: Value | None) -> None:
        """Requests go through the agent's mailbox when this host maps the guest's RAM."""
        if self.machine.shared_ram_fd is None or self._agent is None:
            return
        if isinstance(physical_address, bool) or not isinstance(physical_address, int):
            raise ProtocolError(f"{self.name}: the agent's hello names no mailbox address: {self.hello!r}")
        attached = self._agent.mailbox
        if attached is None:
            self._agent.attach_mailbox(self._mailbox_at(physical_address))
        elif attached.physical_address != physical_address:
            raise ProtocolError(f"{self.name}: the agent's hello puts its mailbox at {physical_address:#x}, but "
                                f"the hello came from the one at {attached.physical_address:#x}, "
                                f"which {self.kernel.path}'s note names")

    def shutdown(self) -> int | None:
        # QEMU exits while this side closes its own channels: the `quit` goes first.
        self.machine.request_quit()
        if self._verifier is not None:
            self._verifier.close()
            self._verifier = None
        for pump in self._pumps:
            pump.close()
        if self._agent is not None:
            try:
                self._agent.close()
            except OSError as exc:  # its transcript's last lines could not be written (a full disk)
                self.log_problems.append(f"{self.machine.agent_log}: {exc}")
        if self._console is not None:
            self._console.close()
        status = self.machine.shutdown()
        if self.gdb_socket is not None:
            self.gdb_socket.unlink(missing_ok=True)
        return status

    def __enter__(self) -> Vm:
        try:
            return self.boot()
        except BaseException:
            self.shutdown()
            raise

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    # -- channels -------------------------------------------------------------------------------

    @property
    def console(self) -> Console:
        if self._console is None:
            raise InfrastructureError(f"{self.name}: not booted")
        return self._console

    @property
    def agent(self) -> AgentClient:
        if self._agent is None:
            raise InfrastructureError(f"{self.name}: not booted")
        return self._agent

    @property
    def qemu(self) -> QemuMonitor:
        """QEMU's own answers (gva2gpa, xp, registers), computed without the agent."""
        if self._monitor is None:
            raise InfrastructureError(f"{self.name}: not booted")
        return self._monitor

    @property
    def verify(self) -> Verifier:
        """Page-table checks against guest RAM and QEMU's walker (harness.verify)."""
        if self._monitor is None:
            raise InfrastructureError(f"{self.name}: not booted")
        if self._verifier is None:
            self._verifier = Verifier(self)
        return self._verifier

    def register_dump(self) -> str:
        """Every vCPU's registers as QEMU's `info registers -a` shows them, for a failure report;
        never raises."""
        try:
            return self.qemu.hmp("info registers -a")
        except Exception as exc:  # a report must not hide the failure it reports
            return f"(register dump failed: {type(exc).__name__}: {exc})"

    def page_table_dump(self) -> str:
        """The page tables as the host walks them, for a failure report; never raises."""
        try:
            return self.verify.page_table_dump()
        except Exception as exc:  # a report must not hide the failure it reports
            return f"(page-table dump failed: {type(exc).__name__}: {exc})"

    @property
    def alive(self) -> bool:
        return self.crash is None and self.machine.running

    @property
    def vcpus(self) -> int:
        """How many CPUs the kernel brought up (its hello says; boot checked it against the config)."""
        cpus = self.hello.get("cpus")
        if isinstance(cpus, bool) or not isinstance(cpus, int):
            raise InfrastructureError(f"{self.name}: not booted, or the agent's hello names no CPU count")
        return cpus

    def request(self, command: str, *args: int | bytes, timeout: float | None = None,
                cpu: int | None = None) -> dict[str, Value]:
        """One agent request, on CPU `cpu` when given (else the BSP); its values, or the verdict on what
        happened instead."""
        if self.crash is not None:
            raise self.crash
        where = "" if cpu is None else f" on CPU {cpu}"
        seconds = timeout or self.timeout
        try:
            response = self.agent.call(command, *args, timeout=seconds, cpu=cpu)
        except MmhilError as exc:
            raise self._verdict(exc, f"the answer to {command}{where}", seconds) from exc
        if not response.ok:
            raise AgentError(self.name, command + where, response.error_kind, response.error_message)
        return response.values

    def request_batch(self, requests: Sequence[tuple[str, Sequence[int | bytes]]],
                      timeout: float | None = None) -> list[Response]:
        """Many agent requests in as few round trips as the channel allows (harness.ddi.batch); the
        responses, ok or err, in order, or the verdict on what happened instead."""
        if self.crash is not None:
            raise self.crash
        try:
            return self.agent.call_batch(requests, timeout=timeout or self.timeout)
        except MmhilError as exc:
            raise self._verdict(exc, f"the answers to a batch of {len(requests)} requests") from exc

    # -- verdicts -------------------------------------------------------------------------------

    def console_tail(self, lines: int = 25) -> str:
        return self._console.tail(lines) if self._console else ""

    def _verdict(self, exc: MmhilError, waiting_for: str, seconds: float | None = None) -> MmhilError:
        """Turn a channel-level event into the error a test should see."""
        if isinstance(exc, AgentStopped):
            return self._crashed(bugcheck_record(exc.notice))
        if isinstance(exc, ConsoleBadPattern) and self._agent is not None:
            # The console showed the STOP screen; the structured record follows on the agent channel.
            try:
                self._agent.wait_notice("bugcheck", 2.0)
            except AgentStopped as stopped:
                return self._crashed(bugcheck_record(stopped.notice))
            except MmhilError:
                pass
            return GuestReset(self.name, f"console showed {exc.name}: {exc.text}", self.console_tail())
        if isinstance(exc, ChannelClosed | ConsoleClosed):
            return self._ended()
        if isinstance(exc, ChannelTimeout | ConsoleTimeout):
            if not self.machine.running:
                return self._ended()
            return GuestTimeout(self.name, waiting_for, seconds or self.timeout, self.console_tail(),
                                self.machine.console_log)
        return exc

    def _on_qmp_event(self, event: QmpEvent) -> None:
        """A guest's reset pauses QEMU (CRASH_ACTIONS) instead of ending it, so no channel closes by
        itself: close them, so that whoever waits on the guest hears of it now, as when QEMU exits.
        (Runs on the QMP thread: nothing here blocks.)"""
        if event.name == "SHUTDOWN" and event.data.get("guest"):
            for sock in (self.machine.console_socket, self.machine.agent_socket):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def take_core(self, path: Path) -> CoreDump:
        """An ELF core of the guest as it is now, while QEMU still runs (a hung guest, a paused crash)."""
        qmp = self.machine.qmp
        if qmp is None or not self.machine.running:
            return CoreDump(None, f"no core: QEMU is not running (exit status {self.machine.exit_status})")
        return dump_guest_core(qmp, path, self.config.memory_bytes)

    def _core_of_crash(self) -> None:
        if not self.core_dumps:
            return
        if stop_is_expected():
            self.core = CoreDump(None, "no core: the test expected this stop")
            return
        self.core = self.take_core(self.artifacts / CORE_NAME)

    def _crashed(self, record: BugCheckRecord) -> BugCheck:
        machine = self.machine
        # The kernel writes pvpanic right after the record, and QEMU pauses there (CRASH_ACTIONS).
        deadline = time.monotonic() + 5.0
        while machine.running and machine.qmp is not None and time.monotonic() < deadline:
            if machine.qmp.wait_event("GUEST_PANICKED", 0.05) is not None:
                self._core_of_crash()
                with contextlib.suppress(InfrastructureError):  # QEMU may end before it answers
                    machine.qmp.command("cont", timeout=2.0)
                break
        machine.wait_exit(5.0)  # the kernel's exit write (isa-debug-exit) ends QEMU: status 33
        machine.shutdown(grace=2.0)
        self.crash = BugCheck(self.name, record, self.console_tail(), machine.console_log)
        return self.crash

    def _guest_shutdown(self) -> QmpEvent | None:
        events = self.machine.qmp.events if self.machine.qmp else []
        return next((e for e in events if e.name == "SHUTDOWN" and e.data.get("guest")), None)

    def _ended(self) -> MmhilError:
        """QEMU closed a channel: find out why it ended."""
        machine = self.machine
        deadline = time.monotonic() + 5.0
        while machine.running and self._guest_shutdown() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        status = machine.exit_status
        if machine.lost is not None:
            error: MmhilError = HostConnectionLost(
                f"{self.name}: {machine.lost}; its QEMU on {self.host.name} ends with the connection\n"
                f"console tail:\n{self.console_tail().rstrip() or '(empty)'}")
            machine.shutdown(grace=1.0)
            return error
        events = machine.qmp.events if machine.qmp else []
        shutdown = self._guest_shutdown()
        if (shutdown is not None and shutdown.data.get("reason") == "guest-reset") or any(
                e.name == "RESET" for e in events):
            self._core_of_crash()  # QEMU waits, paused, with the guest as the reset found it
            self.crash = GuestReset(self.name, "QEMU reported a guest reset", self.console_tail())
            machine.shutdown(grace=1.0)
            return self.crash
        if status == STATUS_BUGCHECK and self._agent is not None:
            notice = next((n for n in self._agent.notices if n.kind == "bugcheck"), None)
            if notice is not None:
                return self._crashed(bugcheck_record(notice))
        if status == STATUS_FIRMWARE_FAILED:
            tail = self.console_tail()
            said = [line.removeprefix(FIRMWARE_SAYS) for line in tail.splitlines() if line.startswith(FIRMWARE_SAYS)]
            machine.shutdown(grace=1.0)
            return FirmwareError(self.name, said[-1] if said else "it gave no reason on the console", tail)
        died = QemuDiedError(self.name, status, machine.stderr_tail(), self.console_tail())
        machine.shutdown(grace=1.0)
        return died
