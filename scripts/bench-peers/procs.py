"""CPU and memory of a process tree from /proc (scripts/bench-peers.sh).

  procs.py cpu PID            utime+stime of PID and all its descendants, in seconds
  procs.py mem PID            "RSS_KIB PSS_KIB" of PID and all its descendants (smaps_rollup)
  procs.py reset-peak PID     sets each process's peak RSS (VmHWM) to its RSS now (clear_refs 5; root), so
                              `peak` reports the peak under load, not the one of start-up
  procs.py peak PID OUT       the tree's peak memory so far into OUT ("RSS_KIB PSS_KIB", each the larger of
                              OUT's and the one read now): RSS as the sum of each process's own peak
                              (VmHWM, kept by the kernel), PSS as it is now (smaps_rollup)

The peak is read between load phases, never while one runs: reading smaps_rollup walks the
process's page tables under its mmap lock, and a sampler that read it every 0.2 s during the
phases stalled the router 2-3 ms each time, a 202 ms period in pas's one-caller tail (found
2026-12-07; BENCHMARKS.md, "Peers"). The kernel's VmHWM needs no sampling for RSS; PSS, which
has no high-water mark, is read right after each router phase, before the router frees anything
it kept for the load.

A router with workers (uvicorn, node) is the process the script started plus its descendants,
looked up anew at every reading, so workers started late are counted.
"""

import os
import sys

TICK = os.sysconf("SC_CLK_TCK")


def tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(root: int) -> float:
    ticks = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command: state=0 ... utime=11, stime=12 (fields 14 and 15 of proc(5)).
        ticks += int(fields[11]) + int(fields[12])
    return ticks / TICK


def memory_kib(root: int) -> tuple[int, int]:
    rss = pss = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key == "Rss":
                        rss += int(rest.split()[0])
                    elif key == "Pss":
                        pss += int(rest.split()[0])
        except OSError:
            continue
    return rss, pss


def rss_peak_kib(root: int) -> int:
    """The sum of each process's peak RSS (VmHWM in /proc/PID/status) over the tree."""
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def main() -> None:
    cmd, root = sys.argv[1], int(sys.argv[2])
    if cmd == "cpu":
        print(f"{cpu_seconds(root):.2f}")
    elif cmd == "mem":
        print(*memory_kib(root))
    elif cmd == "reset-peak":
        for pid in tree(root):
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                continue
    elif cmd == "peak":
        out = sys.argv[3]
        try:
            with open(out) as f:
                old = [int(x) for x in f.read().split()[:2]]
        except (OSError, ValueError):
            old = [0, 0]
        rss, pss = rss_peak_kib(root), memory_kib(root)[1]
        with open(out + ".tmp", "w") as f:
            f.write(f"{max(rss, old[0])} {max(pss, old[1])}\n")
        os.replace(out + ".tmp", out)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
