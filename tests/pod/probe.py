#!/usr/bin/env python3
"""A pod's view of a volume across a FUSE server crash. Run inside the pod's own mount
namespace (unshare -m --propagation private) with its cwd in the published target.

Holds an open read fd, a writer whose data was fsync'ed and a writer with unflushed
data, prints "ready", then probes every 250 ms for DURATION seconds (a pread on the
read fd, a listing of the cwd, a new file written and read back). Afterwards the flushed
writer appends and fsyncs; the unflushed writer writes, fsyncs and closes. Prints one
JSON line with what failed and how long the slowest probe took."""
import errno
import json
import os
import sys
import time

target, duration = sys.argv[1], float(sys.argv[2])
os.chdir(target)
data = os.urandom(3 << 20)
with open("data.bin", "wb") as f:
    f.write(data)
rfd = os.open("data.bin", os.O_RDONLY)
flushed = os.open("flushed.log", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
os.write(flushed, b"before\n")
os.fsync(flushed)
unflushed = os.open("unflushed.log", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
os.write(unflushed, b"pending data that only the server's memory holds\n")
print("ready", flush=True)

failures, enotconn, probes, slowest = [], 0, 0, 0.0
end = time.monotonic() + duration
while time.monotonic() < end:
    t0 = time.monotonic()
    for name, probe in (
        ("read fd", lambda: os.pread(rfd, 4096, (probes * 65536) % (len(data) - 4096))
         == data[(probes * 65536) % (len(data) - 4096):][:4096] or (_ for _ in ()).throw(ValueError("wrong bytes"))),
        ("cwd listing", lambda: "data.bin" in os.listdir(".") or (_ for _ in ()).throw(ValueError("missing entry"))),
        ("new file", lambda: (open(f"probe-{probes}", "w").write("x"),
                              open(f"probe-{probes}").read() == "x" or (_ for _ in ()).throw(ValueError("bad content")))),
    ):
        try:
            probe()
        except OSError as e:
            failures.append(f"{name}: {errno.errorcode.get(e.errno, e.errno)}")
            enotconn += e.errno == errno.ENOTCONN
        except ValueError as e:
            failures.append(f"{name}: {e}")
    probes += 1
    slowest = max(slowest, time.monotonic() - t0)
    time.sleep(max(0.0, 0.25 - (time.monotonic() - t0)))

def outcome(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

after_flushed = outcome(lambda: (os.write(flushed, b"after\n"), os.fsync(flushed), os.close(flushed)))
unflushed_write = outcome(lambda: os.write(unflushed, b"more\n"))
unflushed_close = outcome(lambda: os.close(unflushed))
print(json.dumps({
    "probes": probes, "failed": failures, "enotconn": enotconn, "slowest_probe_s": round(slowest, 3),
    "flushed_writer": after_flushed, "unflushed_write": unflushed_write, "unflushed_close": unflushed_close,
}), flush=True)
