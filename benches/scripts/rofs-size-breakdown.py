#!/usr/bin/env python3
"""Where the bytes of a faas-rofs image go, and the smallest image any
builder can make when every regular file's data is page-aligned.

usage: benches/scripts/rofs-size-breakdown.py TREE [IMAGE]

For TREE: its apparent size (`du -sb --apparent-size`, the denominator of
the "x apparent" column in BENCHMARKS.md), the unique file contents, and the
page-aligned data floor: with page-aligned, contiguous (mappable) data every
unique content occupies ceil(size / 4096) whole blocks, so no layout that
keeps files mappable can be smaller than the sum of those, whatever its
metadata costs. Also the only sharing that could go below the floor: 4 KiB
blocks that are identical across different contents, contents that are a
strict prefix of another content, and last partial blocks that equal the
start of another content. For IMAGE (built by `faas image build`): the
regions read from the faas header (metadata, data, extension area).
"""

import hashlib
import os
import struct
import subprocess
import sys

BS = 4096


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    root = sys.argv[1]
    apparent = int(subprocess.check_output(["du", "-sb", "--apparent-size", root]).split()[0])
    seen_inodes = set()
    contents: dict[bytes, bytes] = {}
    files = file_bytes = dirs = symlinks = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirs += 1
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if os.path.islink(p):
                symlinks += 1
                continue
            if n in dirnames or (st.st_dev, st.st_ino) in seen_inodes:
                continue
            seen_inodes.add((st.st_dev, st.st_ino))
            files += 1
            file_bytes += st.st_size
            with open(p, "rb") as f:
                data = f.read()
            contents.setdefault(hashlib.blake2b(data).digest(), data)
    uniq = list(contents.values())
    uniq_bytes = sum(len(d) for d in uniq)
    floor = sum(-(-len(d) // BS) * BS for d in uniq)
    small = sum(1 for d in uniq if 0 < len(d) < BS)

    blocks: dict[bytes, int] = {}
    for d in uniq:
        for i in range(0, len(d), BS):
            k = hashlib.blake2b(d[i : i + BS]).digest()
            blocks[k] = blocks.get(k, 0) + 1
    dup_blocks = sum(c - 1 for c in blocks.values())
    by_head: dict[bytes, list[bytes]] = {}
    for d in uniq:
        by_head.setdefault(d[:32], []).append(d)
    prefix_files = prefix_blocks = 0
    for d in uniq:
        if d and any(len(e) > len(d) and e.startswith(d) for e in by_head.get(d[:32], [])):
            prefix_files += 1
            prefix_blocks += -(-len(d) // BS)
    tail_overlap = 0
    for d in uniq:
        t = len(d) % BS
        if t and len(d) > BS:
            tail = d[-t:]
            if any(e is not d and e.startswith(tail) for e in by_head.get(tail[:32], [])):
                tail_overlap += 1

    x = lambda n: f"{n:,} B ({n / apparent:.4f}x apparent)"  # noqa: E731
    print(f"tree {root}: apparent {apparent:,} B; {dirs} dirs, {symlinks} symlinks, {files} regular files ({file_bytes:,} B)")
    print(f"  unique contents: {len(uniq)} ({uniq_bytes:,} B), {small} of them shorter than 4 KiB")
    print(f"  page-aligned data floor: {x(floor)}; of it tail padding {x(floor - uniq_bytes)}")
    print(f"  identical 4 KiB blocks across different contents: {dup_blocks} extra copies ({dup_blocks * BS:,} B)")
    print(f"  contents that are a strict prefix of another: {prefix_files} ({prefix_blocks * BS:,} B of blocks)")
    print(f"  last partial blocks equal to the start of another content: {tail_overlap}")
    if len(sys.argv) == 3:
        img = sys.argv[2]
        with open(img, "rb") as f:
            hdr = f.read(144)
        if hdr[:8] != b"FAASROFS":
            sys.exit(f"{img}: no faas header")
        (image_len, data_start, ext_start, _io, slots, _po, paths_len, _do, ndig) = struct.unpack_from("<9Q", hdr, 16)
        print(f"image {img}: {x(image_len)}")
        print(f"  metadata (header, superblock, inodes, directories, long symlinks): {x(data_start)}")
        print(f"  file data: {x(ext_start - data_start)}")
        print(
            f"  extension area: {x(image_len - ext_start)} = index {slots * 24:,} + paths {paths_len:,}"
            f" + digests {ndig * 40:,} + padding"
        )


if __name__ == "__main__":
    main()
