#!/usr/bin/env bash
# POSIX behaviour suite for an s3vol mount, run as an ordinary user would run it.
# Supported operations (docs/SEMANTICS.md) must succeed with the POSIX result;
# unsupported ones must fail with the errno the documentation gives.
#
# Usage: suite.sh DIR      (DIR: an empty, writable directory inside the mount)
# Prints one line per case and a closing "N passed, N failed" line; exits non-zero on
# any failure.
set -u
# Error messages are compared as text: pin them to the C locale's strerror wording.
export LC_ALL=C
DIR=${1:?usage: suite.sh DIR}
cd "$DIR" || exit 2
pass=0 fail=0
ok()   { pass=$((pass + 1)); echo "ok   $1"; }
bad()  { fail=$((fail + 1)); echo "FAIL $1${2:+: $2}"; }
check() { local name=$1; shift; if out=$("$@" 2>&1); then ok "$name"; else bad "$name" "$out"; fi; }
# expect_err NAME "message" cmd...: the command fails and says the errno's message.
expect_err() {
  local name=$1 msg=$2; shift 2
  if out=$("$@" 2>&1); then bad "$name" "succeeded, expected: $msg"
  elif [[ $out == *"$msg"* ]]; then ok "$name"
  else bad "$name" "got: $out"; fi
}
eq() { [ "$1" = "$2" ] || { echo "expected [$2] got [$1]"; return 1; }; }

# Files
check "create and read back"        sh -c 'printf hello > f && eq() { [ "$1" = "$2" ]; }; eq "$(cat f)" hello'
check "stat size"                   sh -c '[ "$(stat -c %s f)" = 5 ]'
check "overwrite with truncate"     sh -c 'printf bye > f && [ "$(cat f)" = bye ]'
check "append"                      sh -c 'printf 1 > a && printf 2 >> a && printf 3 >> a && [ "$(cat a)" = 123 ]'
check "write in the middle"         sh -c 'printf abcdef > m && printf XY | dd of=m bs=1 seek=2 conv=notrunc status=none && [ "$(cat m)" = abXYef ]'
check "truncate shorter"            sh -c 'truncate -s 2 m && [ "$(cat m)" = ab ]'
check "truncate longer (zeros)"     sh -c 'truncate -s 4 m && [ "$(od -An -tx1 m | tr -d " \n")" = 61620000 ]'
check "empty file"                  sh -c ': > e && [ -f e ] && [ "$(stat -c %s e)" = 0 ]'
check "large sequential file"       sh -c 'head -c 20000000 /dev/urandom > big.src && cp big.src big && cmp big big.src'
check "random read (tail)"          sh -c '[ "$(tail -c 100 big | od -An -tx1)" = "$(tail -c 100 big.src | od -An -tx1)" ]'
check "unlink"                      sh -c 'rm big big.src e && [ ! -e big ]'
check "chmod"                       sh -c 'chmod 600 f && [ "$(stat -c %a f)" = 600 ]'
check "chmod +x and exec"           sh -c 'printf "#!/bin/sh\necho ran\n" > s.sh && chmod 755 s.sh && [ "$(./s.sh)" = ran ]'
check "utimens (touch -d)"          sh -c 'touch -d @1600000000 f && [ "$(stat -c %Y f)" = 1600000000 ]'
# Directories
check "mkdir"                       sh -c 'mkdir d && [ -d d ]'
check "mkdir -p"                    sh -c 'mkdir -p p/q/r && [ -d p/q/r ]'
check "create in a subdirectory"    sh -c 'echo x > d/x && [ "$(cat d/x)" = x ]'
check "readdir"                     sh -c '[ "$(ls d)" = x ]'
check "readdir of many entries"     sh -c 'mkdir many && for i in $(seq 1 150); do : > many/f$i; done && [ "$(ls many | wc -l)" = 150 ]'
expect_err "rmdir of a non-empty directory" "not empty" rmdir d
check "rmdir"                       sh -c 'rm d/x && rmdir d && [ ! -e d ]'
expect_err "mkdir of an existing name" "File exists" mkdir p
expect_err "rmdir of a file"        "Not a directory" rmdir f
expect_err "unlink(2) of a directory" "Is a directory" python3 -c 'import os; os.unlink("p")'
# Rename
check "rename file"                 sh -c 'echo r > r1 && mv r1 r2 && [ ! -e r1 ] && [ "$(cat r2)" = r ]'
check "rename over a file"          sh -c 'echo new > n && mv n r2 && [ "$(cat r2)" = new ]'
check "rename directory"            sh -c 'mv p p2 && [ -d p2/q/r ] && [ ! -e p ]'
check "rename into a subdirectory"  sh -c 'mkdir t && mv r2 t/ && [ "$(cat t/r2)" = new ]'
expect_err "rename a directory over a file" "Not a directory" python3 -c 'import os; os.rename("p2", "f")'
# Links
check "symlink and readlink"        sh -c 'ln -s f sl && [ "$(readlink sl)" = f ] && [ "$(cat sl)" = bye ]'
check "dangling symlink"            sh -c 'ln -s nowhere dl && [ -L dl ] && [ ! -e dl ]'
expect_err "hard link"              "Operation not supported" ln f hl
# Extended attributes
if command -v setfattr >/dev/null; then
  expect_err "setxattr"             "Operation not supported" setfattr -n user.k -v v f
else
  expect_err "getxattr (python)"    "Operation not supported" python3 -c 'import os; os.getxattr("f", "user.k")'
fi
# Special files
check "mkfifo"                      sh -c 'mkfifo fifo && [ "$(stat -c %F fifo)" = fifo ] && rm fifo && [ ! -e fifo ]'
# Errors
expect_err "open a missing file"    "No such file or directory" cat missing
expect_err "name too long"          "File name too long" touch "$(printf 'x%.0s' $(seq 1 300))"
# Tools
check "cp -r / diff -r"             sh -c 'cp -r p2 p3 && diff -r p2 p3'
TAR=$(mktemp -u /tmp/suite.XXXXXX.tar)
check "tar round trip"              sh -c "tar cf $TAR t p2 && mkdir x && tar xf $TAR -C x && diff -r t x/t"
check "find"                        sh -c '[ "$(find t -type f)" = t/r2 ]'
check "sed -i"                      sh -c 'printf "a\nb\n" > sed.txt && sed -i s/a/A/ sed.txt && [ "$(cat sed.txt)" = "A
b" ]'
check "fsync"                       python3 -c 'import os; fd=os.open("sync", os.O_WRONLY|os.O_CREAT); os.write(fd, b"x"); os.fsync(fd); os.close(fd)'
check "statfs"                      sh -c '[ "$(stat -f -c %b .)" -gt 0 ]'
rm -f "$TAR"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
