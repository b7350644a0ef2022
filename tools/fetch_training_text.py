"""Extracts the training text of the default model: Jane Austen's six novels, from Debian.

    python3 tools/fetch_training_text.py --out .train-data

Source: Debian's package r-cran-janeaustenr (1.0.0-1), which packages the CRAN package janeaustenr
by Julia Silge (MIT licence) holding the full texts of Austen's six completed novels as taken from
Project Gutenberg. The novels themselves (1811-1818) are in the public domain.

The package stores the novels as R data (a "lazy-load database": data/Rdata.rdx indexes
data/Rdata.rdb, each entry a zlib-compressed object in R's XDR serialization format). Reading it
needs no R: the small reader below understands the handful of object types those files use
(character vectors, generic vectors, pairlists, symbols, integers, logicals).

Writes one UTF-8 file per novel, <name>.txt, paragraphs joined into single lines and separated by
blank lines, plus SOURCE.txt naming the package and version it came from.
"""
import argparse
import glob
import gzip
import os
import struct
import subprocess
import tempfile
import zlib

DEBIAN_PACKAGE = "r-cran-janeaustenr"
DATA_DIR = "usr/lib/R/site-library/janeaustenr/data"

# R's SEXP type codes and the pseudo-types its serializer writes (serialize.c).
NILSXP, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 0, 1, 2, 9, 10, 13, 14, 16, 19
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, EMPTYENV_SXP, BASEENV_SXP = 255, 254, 253, 242, 241
HAS_ATTR, HAS_TAG = 1 << 9, 1 << 10


class RReader:
    """Reads one object in R's XDR serialization format (version 2 or 3)."""

    def __init__(self, data):
        self.data, self.pos, self.refs = data, 0, []

    def read(self):
        if self.data[:2] != b"X\n":
            raise ValueError(f"R data starts with {self.data[:2]!r}, expected the XDR marker b'X\\n'; "
                             "only XDR-serialized objects are supported")
        self.pos = 2
        version = self._int()
        self._int()  # R version that wrote it
        self._int()  # oldest R version that can read it
        if version == 3:
            encoding_len = self._int()
            self.pos += encoding_len  # the writer's native encoding name
        elif version != 2:
            raise ValueError(f"R serialization version {version} is not supported (expected 2 or 3)")
        return self._item()

    def _int(self):
        (v,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return v

    def _item(self):
        flags = self._int()
        kind = flags & 0xFF
        if kind in (NILVALUE_SXP, NILSXP, GLOBALENV_SXP, EMPTYENV_SXP, BASEENV_SXP):
            return None
        if kind == REFSXP:
            return self.refs[(flags >> 8) - 1]
        if kind == SYMSXP:
            name = self._item()
            self.refs.append(name)
            return name
        if kind == LISTSXP:
            if flags & HAS_ATTR:
                self._item()  # a pairlist's own attributes carry nothing this reader needs
            tag = self._item() if flags & HAS_TAG else None
            head = {tag: self._item()}
            return {**head, **(self._item() or {})}
        if kind == CHARSXP:
            n = self._int()
            if n == -1:
                return None
            s = self.data[self.pos:self.pos + n].decode("utf-8")
            self.pos += n
            return s
        n = self._int()
        if kind == STRSXP:
            value = [self._item() for _ in range(n)]
        elif kind == VECSXP:
            value = [self._item() for _ in range(n)]
        elif kind in (INTSXP, LGLSXP):
            value = list(struct.unpack_from(f">{n}i", self.data, self.pos))
            self.pos += 4 * n
        elif kind == REALSXP:
            value = list(struct.unpack_from(f">{n}d", self.data, self.pos))
            self.pos += 8 * n
        else:
            raise ValueError(f"R object type {kind} at byte {self.pos} is not supported by this reader "
                             "(it reads character, integer, logical, double and list objects)")
        attrs = self._item() if flags & HAS_ATTR else None
        names = (attrs or {}).get("names")
        return dict(zip(names, value)) if names else value


def read_lazyload_db(data_dir):
    """{variable name: R object} from the lazy-load database Rdata.rdx/Rdata.rdb in data_dir."""
    index = RReader(gzip.decompress(open(os.path.join(data_dir, "Rdata.rdx"), "rb").read())).read()
    with open(os.path.join(data_dir, "Rdata.rdb"), "rb") as f:
        rdb = f.read()
    compression = index.get("compressed", [1])[0]
    if compression not in (1, True):
        raise ValueError(f"Rdata.rdx says compression type {compression}; this reader handles zlib (1) only")
    out = {}
    for name, (offset, length) in index["variables"].items():
        blob = rdb[offset:offset + length]
        (size,) = struct.unpack_from(">I", blob, 0)
        raw = zlib.decompress(blob[4:])
        if len(raw) != size:
            raise ValueError(f"object {name!r} in Rdata.rdb decompressed to {len(raw)} bytes, "
                             f"its header says {size}; the package file is damaged")
        out[name] = RReader(raw).read()
    return out


def paragraphs(lines):
    """Project Gutenberg's hard-wrapped lines -> one string per paragraph."""
    out, current = [], []
    for line in lines:
        line = (line or "").strip()
        if line:
            current.append(line)
        elif current:
            out.append(" ".join(current))
            current = []
    if current:
        out.append(" ".join(current))
    return out


def fetch_package(work_dir, deb=None):
    """Unpacks the Debian package (downloaded with apt-get unless deb is given); returns its version."""
    if deb is None:
        subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=work_dir, check=True,
                       stdout=subprocess.DEVNULL)
        debs = glob.glob(os.path.join(work_dir, f"{DEBIAN_PACKAGE}_*.deb"))
        if not debs:
            raise FileNotFoundError(f"apt-get download {DEBIAN_PACKAGE} left no .deb in {work_dir}; "
                                    "run apt-get update first")
        deb = debs[0]
    subprocess.run(["dpkg-deb", "-x", deb, os.path.join(work_dir, "root")], check=True)
    version = subprocess.run(["dpkg-deb", "-f", deb, "Version"], check=True, capture_output=True,
                             text=True).stdout.strip()
    return os.path.join(work_dir, "root", DATA_DIR), version


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=".train-data", help="folder for the extracted novels")
    ap.add_argument("--deb", help=f"an already downloaded {DEBIAN_PACKAGE} .deb (default: apt-get download)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, version = fetch_package(tmp, os.path.abspath(args.deb) if args.deb else None)
        novels = read_lazyload_db(data_dir)
    total = 0
    for name, lines in sorted(novels.items()):
        text = "\n\n".join(paragraphs(lines)) + "\n"
        with open(os.path.join(args.out, f"{name}.txt"), "w", encoding="utf-8") as f:
            f.write(text)
        total += len(text.encode("utf-8"))
        print(f"{name}: {len(text.encode('utf-8')):,} bytes")
    with open(os.path.join(args.out, "SOURCE.txt"), "w") as f:
        f.write(f"Debian package {DEBIAN_PACKAGE} {version}: Jane Austen's six novels "
                "(public domain), packaged by janeaustenr (MIT)\n")
    print(f"{len(novels)} novels, {total:,} bytes, from {DEBIAN_PACKAGE} {version}")


if __name__ == "__main__":
    main()
