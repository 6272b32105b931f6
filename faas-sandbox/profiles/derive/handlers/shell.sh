# Run by the "subprocess" case of both handlers through /bin/sh -c: what a
# handler typically shells out to (coreutils, grep, find, tar, gzip) on /tmp.
set -e
d=$(mktemp -d /tmp/derive-sh-XXXXXX)
seq 1 50 > "$d/n.txt"
cat "$d/n.txt" | grep 1 | sort -r | head -n 3 | tr '\n' ' ' > "$d/out.txt"
wc -l < "$d/n.txt" >> "$d/out.txt"
cut -c1 "$d/n.txt" | uniq | tail -n 2 > /dev/null
sed -e 's/1/one/' "$d/n.txt" | awk '{ s += length($0) } END { print s }' > /dev/null
mkdir -p "$d/a/b" && touch "$d/a/b/f" && echo hi > "$d/a/b/g"
cp "$d/n.txt" "$d/a/copy.txt" && mv "$d/a/copy.txt" "$d/a/moved.txt"
ln -s moved.txt "$d/a/link" && chmod 600 "$d/a/moved.txt"
ls -la "$d/a" > /dev/null && stat "$d/a/link" > /dev/null && du -s "$d" > /dev/null
find "$d" -type f -name '*.txt' | sort > /dev/null
tar -czf "$d/a.tgz" -C "$d" a && mkdir "$d/x" && tar -xzf "$d/a.tgz" -C "$d/x"
gzip -c "$d/n.txt" | gunzip -c | sha256sum > /dev/null
[ -x /bin/sh ] && test -d "$d" && kill -0 $$
sleep 0.01 &
wait
date -u +%Y > /dev/null; env > /dev/null; id -u > /dev/null; uname -a > /dev/null
cat "$d/out.txt"
rm -rf "$d"
