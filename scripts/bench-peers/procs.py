"""CPU and memory of a process tree from /proc (scripts/bench-peers.sh).

  procs.py cpu PID            utime+stime of PID and all its descendants, in seconds
  procs.py mem PID            "RSS_KIB PSS_KIB" of PID and all its descendants (smaps_rollup)
  procs.py sample PID OUT     while PID and the caller live: every 0.2 s the tree's memory; keeps the peak of each
                              figure in OUT ("RSS_KIB PSS_KIB"), rewritten on every new peak

A router with workers (uvicorn, node) is the process the script started plus its descendants,
looked up anew at every reading, so workers started late are counted.
"""

import os
import sys
import time

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


def main() -> None:
    cmd, root = sys.argv[1], int(sys.argv[2])
    if cmd == "cpu":
        print(f"{cpu_seconds(root):.2f}")
    elif cmd == "mem":
        print(*memory_kib(root))
    elif cmd == "sample":
        out, peak, parent = sys.argv[3], (0, 0), os.getppid()
        # Ends with the router or with the script that started it.
        while os.path.exists(f"/proc/{root}") and os.getppid() == parent:
            rss, pss = memory_kib(root)
            if rss > peak[0] or pss > peak[1]:
                peak = (max(rss, peak[0]), max(pss, peak[1]))
                with open(out + ".tmp", "w") as f:
                    f.write(f"{peak[0]} {peak[1]}\n")
                os.replace(out + ".tmp", out)
            time.sleep(0.2)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
