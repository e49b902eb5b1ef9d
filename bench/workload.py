#!/usr/bin/env python3
"""One FUSE workload for any S3 client, so that s3vol and its peers are measured alike.

  workload.py NAME 'MOUNT_CMD'

MOUNT_CMD runs under `bash -c` in its own session and may use $MNT $BUCKET $ENDPOINT $AK
$SK $PASSWD_FILE (AK:SK, mode 600). Foreground clients are waited for after unmount.

Per run, each phase on a fresh mount after dropping the page cache:
  stat   stat of one object, cold then warm
  ls     `ls -l` of LS_N objects, cold then warm
  read   the SIZE_MB object read sequentially (md5 checked in run 1)
  write  SIZE_MB written sequentially, until the close returns and until the store has it
         (md5 checked in run 1); then SMALL_N files of SMALL_KB, until the store lists all
Per-run values go to $RESULTS/NAME.runs.tsv, medians to $RESULTS/summary.tsv (one row
per client, replaced on a rerun). With RUN_ONLY=K only run K is made and added to the
values of the runs before it (run.sh interleaves the clients that way, run by run, so a
machine that drifts during the benchmark affects every client alike).

Env: RESULTS, RUNS (3), SIZE_MB (1024), LS_N (10000), SMALL_N (1000), SMALL_KB (4),
SKIP ("": any of stat ls read write small), RUN_ONLY (0: all runs), BENCH_DIR (/tmp/s3vol-bench), ENDPOINT, AK, SK,
BUCKET, SRC (the source file of SIZE_MB random bytes).
"""

import csv
import hashlib
import os
import re
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
METRICS = ["mount_s", "umount_s", "stat_cold_ms", "stat_warm_ms", "ls_cold_s", "ls_warm_s", "read_s", "read_MiBps",
           "write_close_s", "write_visible_s", "write_MiBps", "small_close_s", "small_visible_s", "small_files_per_s"]


class Bench:
    def __init__(self, name, mount_cmd):
        self.name, self.mount_cmd = name, mount_cmd
        e = os.environ
        self.bench_dir = e.get("BENCH_DIR", "/tmp/s3vol-bench")
        self.results = e.get("RESULTS", os.path.join(self.bench_dir, "results"))
        self.runs = int(e.get("RUNS", "3"))
        self.size_mb = int(e.get("SIZE_MB", "1024"))
        self.ls_n = int(e.get("LS_N", "10000"))
        self.small_n = int(e.get("SMALL_N", "1000"))
        self.small_kb = int(e.get("SMALL_KB", "4"))
        self.skip = set(e.get("SKIP", "").split())
        self.only = int(e.get("RUN_ONLY", "0"))
        self.src = e.get("SRC", "/dev/shm/s3vol-bench-src-%dm" % self.size_mb)
        self.mnt = os.path.join(self.bench_dir, "mnt")
        self.logdir = os.path.join(self.results, "logs", name)
        os.makedirs(self.mnt, exist_ok=True)
        os.makedirs(self.logdir, exist_ok=True)
        passwd = os.path.join(self.results, "passwd-s3fs")
        with open(os.open(passwd, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "w") as f:
            f.write("%s:%s\n" % (e.get("AK", "testkey"), e.get("SK", "testsecret")))
        self.env = dict(e, MNT=self.mnt, BUCKET=e.get("BUCKET", "bench"), ENDPOINT=e.get("ENDPOINT", "http://127.0.0.1:9000"),
                        AK=e.get("AK", "testkey"), SK=e.get("SK", "testsecret"), PASSWD_FILE=passwd)
        self.env.pop("AWS_CA_BUNDLE", None)  # rclone refuses to start with it on a plain-http endpoint
        self.values = []  # (run, metric, value)
        self.proc = None

    def log(self, msg):
        print("[%s] %s: %s" % (time.strftime("%H:%M:%S"), self.name, msg), file=sys.stderr, flush=True)

    def rec(self, run, metric, value):
        self.values.append((run, metric, value))

    def s3(self, *args):
        out = subprocess.run([sys.executable, os.path.join(HERE, "s3.py"), *args], env=self.env,
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    @staticmethod
    def drop_caches():
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError:
            pass

    def mount(self, run):
        self.drop_caches()
        if os.path.ismount(self.mnt):
            self.umount(None)
        log = open(os.path.join(self.logdir, "mount.log"), "a")
        t = time.perf_counter()
        self.proc = subprocess.Popen(["bash", "-c", self.mount_cmd], env=self.env, stdout=log, stderr=log,
                                     start_new_session=True)
        while time.perf_counter() - t < 60:
            if os.path.ismount(self.mnt):
                try:
                    os.stat(self.mnt)
                    self.rec(run, "mount_s", time.perf_counter() - t)
                    return
                except OSError:
                    pass
            if self.proc.poll() is not None and not os.path.ismount(self.mnt):
                break
            time.sleep(0.005)
        raise SystemExit("%s: the mount did not come up (see %s)" % (self.name, log.name))

    def umount(self, run):
        t = time.perf_counter()
        subprocess.run(["umount", self.mnt], check=False)
        if self.proc is not None:
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None
        if run is not None:
            self.rec(run, "umount_s", time.perf_counter() - t)

    def phase_stat(self, run):
        path = os.path.join(self.mnt, "lsf%06d" % (self.ls_n // 2))
        t = time.perf_counter()
        st = os.stat(path)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        os.stat(path)
        self.rec(run, "stat_cold_ms", cold * 1000)
        self.rec(run, "stat_warm_ms", (time.perf_counter() - t) * 1000)
        if st.st_size != 100:
            self.log("WARN: stat says %d bytes, not 100" % st.st_size)

    def ls(self):
        t = time.perf_counter()
        out = subprocess.run(["ls", "-l", "--color=never", self.mnt], check=True, capture_output=True, text=True).stdout
        return time.perf_counter() - t, len(re.findall(r"^-.* lsf\d{6}$", out, re.M))

    def phase_ls(self, run):
        cold, n = self.ls()
        if n != self.ls_n:
            self.log("WARN: ls -l showed %d of %d objects" % (n, self.ls_n))
        warm, _ = self.ls()
        self.rec(run, "ls_cold_s", cold)
        self.rec(run, "ls_warm_s", warm)

    def phase_read(self, run, big, src_md5):
        t = time.perf_counter()
        with open(os.path.join(self.mnt, big), "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass
        took = time.perf_counter() - t
        self.rec(run, "read_s", took)
        self.rec(run, "read_MiBps", self.size_mb / took)
        if run == 1:
            self.drop_caches()
            ok = md5_of(os.path.join(self.mnt, big)) == src_md5
            self.log("verify read: md5 %s" % ("OK" if ok else "MISMATCH"))

    def phase_write(self, run, src_md5):
        key = "seqw-%d.bin" % run
        t = time.perf_counter()
        with open(self.src, "rb") as src, open(os.path.join(self.mnt, key), "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        closed = time.perf_counter() - t
        visible = closed + float(self.s3("wait-size", key, str(self.size_mb << 20), "300"))
        self.rec(run, "write_close_s", closed)
        self.rec(run, "write_visible_s", visible)
        self.rec(run, "write_MiBps", self.size_mb / visible)
        if run == 1:
            ok = self.s3("md5", key) == src_md5
            self.log("verify write: md5 %s" % ("OK" if ok else "MISMATCH"))

    def phase_small(self, run):
        prefix = "small-%d-" % run
        data = os.urandom(self.small_kb * 1024)
        t = time.perf_counter()
        for i in range(self.small_n):
            with open(os.path.join(self.mnt, "%ss%05d" % (prefix, i)), "wb") as f:
                f.write(data)
        closed = time.perf_counter() - t
        waited, seen = self.s3("wait-count", prefix, str(self.small_n), "300").split()
        if int(seen) != self.small_n:
            self.log("WARN: only %s of %d small files in the store" % (seen, self.small_n))
        visible = closed + float(waited)
        self.rec(run, "small_close_s", closed)
        self.rec(run, "small_visible_s", visible)
        self.rec(run, "small_files_per_s", self.small_n / visible)

    def run(self):
        big = self.s3("setup", self.src, str(self.ls_n))
        src_md5 = md5_of(self.src)
        if self.only > 1:
            self.load_earlier_runs()
        for run in [self.only] if self.only else range(1, self.runs + 1):
            self.log("run %d/%d" % (run, self.runs))
            for phase in ("stat", "ls"):
                if phase not in self.skip:
                    self.mount(run)
                    getattr(self, "phase_" + phase)(run)
                    self.umount(run)
            if "read" not in self.skip:
                self.mount(run)
                self.phase_read(run, big, src_md5)
                self.umount(run)
            if not {"write", "small"} <= self.skip:
                self.mount(run)
                if "write" not in self.skip:
                    self.phase_write(run, src_md5)
                if "small" not in self.skip:
                    self.phase_small(run)
                self.umount(run)
                self.s3("rm-prefix", "seqw-")
                self.s3("rm-prefix", "small-")
        self.save()

    def load_earlier_runs(self):
        """The values of this client's runs before RUN_ONLY, as save() wrote them."""
        path = os.path.join(self.results, self.name + ".runs.tsv")
        if not os.path.exists(path):
            return
        for r in csv.DictReader(open(path), delimiter="\t"):
            if int(r["run"]) < self.only:
                self.values.append((int(r["run"]), r["metric"], float(r["value"])))

    def save(self):
        with open(os.path.join(self.results, self.name + ".runs.tsv"), "w") as f:
            f.write("run\tmetric\tvalue\n")
            for run, metric, value in self.values:
                f.write("%d\t%s\t%.3f\n" % (run, metric, value))
        by_metric = {}
        for _, metric, value in self.values:
            by_metric.setdefault(metric, []).append(value)
        row = [self.name] + ["%.3g" % statistics.median(by_metric[m]) if m in by_metric else "-" for m in METRICS]
        row.append(";".join("%s=%d" % (m, len(by_metric[m])) for m in METRICS if m in by_metric))
        summary = os.path.join(self.results, "summary.tsv")
        rows = []
        if os.path.exists(summary):
            rows = [r for r in csv.reader(open(summary), delimiter="\t") if r and r[0] not in ("client", self.name)]
        with open(summary, "w") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["client"] + METRICS + ["samples"])
            w.writerows(rows + [row])
        for m, v in zip(METRICS, row[1:]):
            print("%-22s %s" % (m, v), file=sys.stderr)


def md5_of(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    Bench(sys.argv[1], sys.argv[2]).run()
