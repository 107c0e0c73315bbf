"""Boots one VM in a child process for the hygiene tests, reports what it holds, then waits to be ended.

usage: python _boot_child.py CONFIG ACCELERATOR ARTIFACTS (exit|wait) [VM_HOST]
"""

import json
import os
import signal
import stat
import sys
import time
from pathlib import Path

from harness.build import current_kernel
from harness.config import load_configs
from harness.hosts import get_host, parse_host_spec
from harness.machine import SHM_DIR
from harness.vm import Vm


def main() -> None:
    # A shell starts background jobs with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: take Ctrl-C as a terminal would deliver it, however pytest was started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    name, accelerator, artifacts, mode = sys.argv[1:5]
    host = get_host(parse_host_spec(sys.argv[5])) if len(sys.argv) > 5 else None
    config = load_configs()[name]
    with Vm(config, kernel=current_kernel(), accelerator=accelerator, artifacts=Path(artifacts), host=host) as vm:
        ram_fd = vm.machine.shared_ram_fd
        report = {
            "qemu_pid": vm.machine.pid,
            "runtime_dir": str(vm.machine.runtime_dir),
            "ram_mode": None if ram_fd is None else stat.S_IMODE(os.fstat(ram_fd).st_mode),
            "shm_names": sorted(p.name for p in SHM_DIR.glob(f"mmhil-{os.getpid()}-*")),
        }
        print(json.dumps(report), flush=True)
        if mode == "wait":
            time.sleep(3600)


if __name__ == "__main__":
    main()
