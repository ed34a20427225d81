"""Restore on real trees: every file type and its metadata, subtrees, safety, damage."""

import grp
import hashlib
import json
import os
import pwd
import random
import shutil
import stat
import tempfile
import time

import pytest

from chunkrepo import Repo
from chunkrepo.errors import NotFound, TargetNotEmpty
from chunkrepo.model import BackupRecord, Node, Tree
from chunkrepo.ops.traverse import find_node
from chunkrepo.repository.packs import pack_name
from tests.conftest import write_random

IS_ROOT = os.geteuid() == 0
NONAME_ID = 12345
T0 = 1_600_000_000_123_456_789      # mtimes with nanoseconds that are not all zero


def _free_id():
    try:
        pwd.getpwuid(NONAME_ID)
        return False
    except KeyError:
        pass
    try:
        grp.getgrgid(NONAME_ID)
        return False
    except KeyError:
        return True


def _xattrs_supported(path) -> bool:
    try:
        os.setxattr(path, b"user.probe", b"1")
        os.removexattr(path, b"user.probe")
        return True
    except OSError:
        return False


def _b(p) -> bytes:
    return os.fsencode(p)


def build_tree(src) -> dict:
    """Every kind of entry below src; returns what was made (for skips and checks)."""
    made = {"devices": False, "xattrs": False}
    s = _b(src)
    os.makedirs(s)
    j = lambda *parts: os.path.join(s, *parts)   # noqa: E731
    with open(j(b"small.txt"), "wb") as f:
        f.write(b"hello\n" * 10)
    open(j(b"empty"), "wb").close()
    write_random(j(b"big.bin"), 6 << 20, seed=11)
    # sparse: holes at the start, in the middle and at the end
    with open(j(b"sparse"), "wb") as f:
        f.truncate(40 << 20)
        f.seek(1 << 20)
        f.write(b"A" * 5000)
        f.seek(20 << 20)
        f.write(b"B" * 70000)
    with open(j(b"allhole"), "wb") as f:
        f.truncate(8 << 20)
    os.mkdir(j(b"d"))
    os.mkdir(j(b"d", b"e"))
    with open(j(b"d", b"e", b"deep.txt"), "wb") as f:
        f.write(b"deep\n")
    # hard links: three names, two directories
    with open(j(b"hl1"), "wb") as f:
        f.write(b"linked content\n" * 100)
    os.link(j(b"hl1"), j(b"d", b"hl2"))
    os.link(j(b"hl1"), j(b"d", b"e", b"hl3"))
    # symlinks: relative, dangling, absolute, to a directory
    os.symlink(b"small.txt", j(b"ln_rel"))
    os.symlink(b"does/not/exist", j(b"ln_dangling"))
    os.symlink(b"/etc/passwd", j(b"ln_abs"))
    os.symlink(b"d", j(b"ln_dir"))
    os.mkfifo(j(b"fifo"), 0o640)
    # special mode bits
    for name, mode in ((b"suid", 0o4755), (b"sgid", 0o2711), (b"ro", 0o444)):
        with open(j(name), "wb") as f:
            f.write(name)
        os.chmod(j(name), mode)
    os.mkdir(j(b"sticky"))
    os.chmod(j(b"sticky"), 0o1777)
    os.mkdir(j(b"sgiddir"))
    os.chmod(j(b"sgiddir"), 0o2750)
    with open(j(b"sgiddir", b"inner"), "wb") as f:
        f.write(b"inner")
    os.mkdir(j(b"closed"))
    with open(j(b"closed", b"inside"), "wb") as f:
        f.write(b"x")
    # names: not UTF-8, 255 bytes, a path well over 255 bytes
    with open(j(b"caf\xe9"), "wb") as f:
        f.write(b"latin-1 name")
    long = b"n" * 255
    with open(j(long), "wb") as f:
        f.write(b"long name")
    deep = j(b"long")
    for i in range(6):
        deep = os.path.join(deep, (b"%d" % i) * 200)
    os.makedirs(deep)
    with open(os.path.join(deep, b"f" * 200), "wb") as f:
        f.write(b"far away")
    # ownership without a name on this host
    if IS_ROOT and _free_id():
        os.chown(j(b"small.txt"), NONAME_ID, NONAME_ID)
        os.chown(j(b"suid"), NONAME_ID, NONAME_ID)
        os.chmod(j(b"suid"), 0o6755)         # chown cleared it; restore must not
        os.chown(j(b"ln_rel"), NONAME_ID, NONAME_ID, follow_symlinks=False)
        os.chown(j(b"d"), NONAME_ID, NONAME_ID)
    if IS_ROOT:
        try:
            os.mknod(j(b"chr"), stat.S_IFCHR | 0o620, os.makedev(1, 3))
            os.mknod(j(b"blk"), stat.S_IFBLK | 0o600, os.makedev(7, 200))
            made["devices"] = True
        except OSError:
            pass
    if _xattrs_supported(j(b"small.txt")):
        os.setxattr(j(b"big.bin"), b"user.comment", b"six megabytes")
        os.setxattr(j(b"big.bin"), b"user.bin", bytes(range(256)))
        os.setxattr(j(b"d"), b"user.dir", b"on a directory")
        os.setxattr(j(b"ro"), b"user.ro", b"on a read-only file")
        made["xattrs"] = True
    if IS_ROOT:
        try:   # user.* is not allowed on symlinks; trusted.* is, for root
            os.setxattr(j(b"ln_dangling"), b"trusted.chunkrepo", b"on a symlink", follow_symlinks=False)
            made["link_xattr"] = True
        except OSError:
            pass
    # mtimes with ns, children first; the closed directory loses its permissions last
    os.chmod(j(b"closed"), 0o500)
    entries = []
    for dirpath, dirnames, filenames in os.walk(s):
        entries += [os.path.join(dirpath, n) for n in dirnames + filenames]
    entries.sort(key=lambda p: -p.count(b"/"))
    for k, p in enumerate(entries + [s]):
        t = T0 + k * 1_000_003_007
        os.utime(p, ns=(t, t), follow_symlinks=False)
    return made


def _xattrs(p):
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError:
        return None
    return sorted((n, os.getxattr(p, n, follow_symlinks=False)) for n in names if n.startswith("user."))


def snapshot(root) -> dict:
    """path relative to root -> every field restore promises to keep."""
    r = _b(root)
    out = {}
    inodes = {}
    for dirpath, dirnames, filenames in os.walk(r):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.fsdecode(os.path.relpath(p, r))
            st = os.lstat(p)
            rec = {"fmt": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode),
                   "uid": st.st_uid, "gid": st.st_gid, "mtime_ns": st.st_mtime_ns,
                   "xattrs": _xattrs(p)}
            if stat.S_ISREG(st.st_mode):
                rec["size"] = st.st_size
                rec["nlink"] = st.st_nlink
                with open(p, "rb") as f:
                    rec["sha"] = hashlib.sha256(f.read()).hexdigest()
                rec["same_as"] = inodes.setdefault(st.st_ino, rel)
            elif stat.S_ISLNK(st.st_mode):
                rec["target"] = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                rec["rdev"] = st.st_rdev
            out[rel] = rec
    return out


def _opened_up(root):
    """The closed directory must be readable for walking it (root reads anyway)."""
    c = os.path.join(_b(root), b"closed")
    if not IS_ROOT and os.path.isdir(c):
        os.chmod(c, 0o700)


def _diff(a: dict, b: dict) -> list:
    out = [f"only in source: {k!r}" for k in a.keys() - b.keys()]
    out += [f"only in restore: {k!r}" for k in b.keys() - a.keys()]
    for k in sorted(a.keys() & b.keys()):
        for f in a[k]:
            if a[k][f] != b[k].get(f):
                out.append(f"{k!r} {f}: {a[k][f]!r} != {b[k].get(f)!r}")
    return out


@pytest.fixture
def src_tree(tmp_path, repo):
    src = tmp_path / "src"
    made = build_tree(src)
    res = repo.backup([src])
    assert res.errors == []
    return src, res.id, made


# the files written by worker threads, or by restore processes (restore_procs) from the start
WRITERS = pytest.mark.parametrize("procs", [None, 0], ids=["threads", "processes"])


@WRITERS
def test_full_restore_keeps_every_type_and_field(src_tree, repo, tmp_path, procs):
    src, bid, made = src_tree
    target = tmp_path / "out"
    res = repo.restore(bid, target, processes_after=procs)
    assert res.errors == []
    assert res.processes == (0 if procs is None else 2)
    got = target / os.path.relpath(src, "/")
    want = snapshot(src)
    have = snapshot(got)
    assert _diff(want, have) == []
    # the comparison covered what it must
    assert "fifo" in have and stat.S_ISFIFO(have["fifo"]["fmt"])
    assert have["suid"]["mode"] & stat.S_ISUID and have["sticky"]["mode"] & stat.S_ISVTX
    assert have["sgiddir"]["mode"] & stat.S_ISGID
    assert have["closed"]["mode"] == 0o500
    assert have["d/e/hl3"]["same_as"] == "hl1" and have["hl1"]["nlink"] == 3
    assert os.readlink(_b(got / "ln_abs")) == b"/etc/passwd"
    assert os.path.lexists(_b(got / "ln_dangling")) and not os.path.exists(_b(got / "ln_dangling"))
    assert os.path.isfile(os.path.join(_b(got), b"caf\xe9"))
    if made["devices"]:
        assert have["chr"]["rdev"] == os.makedev(1, 3) and stat.S_ISBLK(have["blk"]["fmt"])
    if made["xattrs"]:
        assert dict(have["big.bin"]["xattrs"])["user.bin"] == bytes(range(256))
        assert have["d"]["xattrs"] == [("user.dir", b"on a directory")]
    if made.get("link_xattr"):
        assert os.getxattr(got / "ln_dangling", "trusted.chunkrepo", follow_symlinks=False) == b"on a symlink"
    if IS_ROOT and _free_id():
        assert have["small.txt"]["uid"] == NONAME_ID and have["small.txt"]["gid"] == NONAME_ID
        assert have["suid"]["mode"] == 0o6755
        assert os.lstat(got / "ln_rel").st_uid == NONAME_ID
    # holes stay holes
    st = os.stat(got / "sparse")
    assert st.st_size == 40 << 20 and st.st_blocks * 512 < 1 << 20
    with open(got / "sparse", "rb") as f:
        f.seek((20 << 20) - 1)
        assert f.read(70002) == b"\0" + b"B" * 70000 + b"\0"
    st = os.stat(got / "allhole")
    assert st.st_size == 8 << 20 and st.st_blocks * 512 < 64 << 10
    # the parents of the backed-up path come back too, with their modes
    assert stat.S_IMODE(os.stat(target / "tmp").st_mode) == stat.S_IMODE(os.stat("/tmp").st_mode)
    # every byte of data written once: hard links share, holes are skipped
    assert res.dirs == len([k for k, v in want.items() if stat.S_ISDIR(v["fmt"])]) + \
        len(os.path.relpath(src, "/").split("/"))     # the parents and src itself
    assert res.bytes_written == sum(_data_bytes(os.path.join(_b(src), os.fsencode(k)))
                                    for k, v in want.items() if v.get("same_as") == k)


def _data_bytes(p) -> int:
    n = 0
    fd = os.open(p, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            n += min(pos, size) - start
    finally:
        os.close(fd)
    return n


def test_restore_of_a_subtree_lands_under_its_last_component(src_tree, repo, tmp_path):
    src, bid, _ = src_tree
    target = tmp_path / "out"
    res = repo.restore(bid, target, str(src / "d"))
    assert res.errors == []
    assert os.listdir(target) == ["d"]
    want = snapshot(src / "d")
    have = snapshot(target / "d")
    # hl2 and hl3 are linked with hl1, which is outside: the first inside gets the data
    assert want["hl2"]["nlink"] == 3 and have["hl2"]["nlink"] == 2
    assert have["e/hl3"]["same_as"] == "hl2"
    for k in ("hl2", "e/hl3"):
        want[k].pop("nlink"), have[k].pop("nlink")
    want["e/hl3"]["same_as"] = "hl2"
    assert _diff(want, have) == []
    st, sst = os.stat(target / "d"), os.stat(src / "d")
    assert (st.st_mode, st.st_mtime_ns, st.st_uid) == (sst.st_mode, sst.st_mtime_ns, sst.st_uid)


def test_restore_of_a_single_file(src_tree, repo, tmp_path):
    src, bid, _ = src_tree
    res = repo.restore(bid, tmp_path / "one", str(src / "big.bin"))
    assert res.errors == [] and res.files == 1 and res.dirs == 0
    assert os.listdir(tmp_path / "one") == ["big.bin"]
    assert (tmp_path / "one" / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert os.stat(tmp_path / "one" / "big.bin").st_mtime_ns == os.stat(src / "big.bin").st_mtime_ns
    # a hard-linked file alone gets its data
    res = repo.restore(bid, tmp_path / "two", str(src / "d" / "e" / "hl3"))
    assert res.errors == []
    assert (tmp_path / "two" / "hl3").read_bytes() == (src / "hl1").read_bytes()
    with pytest.raises(NotFound):
        repo.restore(bid, tmp_path / "three", str(src / "nope"))
    assert not os.path.exists(tmp_path / "three")


def test_target_must_be_absent_or_empty(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    bid = repo.backup([src]).id
    full = tmp_path / "full"
    full.mkdir()
    (full / "already").write_bytes(b"")
    with pytest.raises(TargetNotEmpty) as ei:
        repo.restore(bid, full)
    assert "\n" not in str(ei.value) and "full" in str(ei.value)
    assert os.listdir(full) == ["already"]
    with pytest.raises(TargetNotEmpty):
        repo.restore(bid, full / "already")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert repo.restore(bid, empty, str(src)).errors == []
    assert (empty / "src" / "f").read_bytes() == b"data"
    res = repo.restore(bid, tmp_path / "new" / "deeper", str(src / "f"))
    assert res.errors == [] and (tmp_path / "new" / "deeper" / "f").read_bytes() == b"data"


def _nobody():
    try:
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return None


@pytest.mark.skipif(not IS_ROOT or _nobody() is None, reason="drops from root to nobody")
def test_restore_as_an_unprivileged_user(repo, tmp_path):
    uid, gid = _nobody()
    src = tmp_path / "src"
    src.mkdir()
    (src / "owned").write_bytes(b"owned by someone else")
    os.chown(src / "owned", 4321, 4321)
    (src / "suid").write_bytes(b"s")
    os.chmod(src / "suid", 0o4755)
    (src / "closed").mkdir()
    (src / "closed" / "inside").write_bytes(b"inside")
    os.chmod(src / "closed", 0o500)
    (src / "ro").write_bytes(b"read only")
    xattrs = _xattrs_supported(src / "ro")
    if xattrs:
        os.setxattr(src / "ro", b"user.k", b"v")
    os.chmod(src / "ro", 0o444)
    try:
        os.mknod(src / "dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        device = True
    except OSError:
        device = False
    for p in ("owned", "suid", "closed/inside", "ro", "closed", "."):
        os.utime(src / p, ns=(T0, T0 + 7))
    bid = repo.backup([src]).id
    shared = tempfile.mkdtemp(prefix="chunkrepo-test-", dir="/tmp")   # tmp_path is root-only
    try:
        rpath = os.path.join(shared, "repo")
        shutil.copytree(repo.path, rpath)    # a path of its own: a fresh LMDB environment
        for dp, dns, fns in os.walk(shared):
            for n in [dp] + [os.path.join(dp, x) for x in dns + fns]:
                os.chown(n, uid, gid)
        target = os.path.join(shared, "out")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:    # child: unprivileged from here on
            code = 1
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                with Repo(rpath) as rr:
                    out = rr.restore(bid, target, str(src)).to_dict()
                code = 0
            except BaseException as e:   # noqa: BLE001 - reported to the parent
                out = {"exception": repr(e)}
            finally:
                os.write(w, json.dumps(out).encode())
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            out = json.loads(f.read())
        os.waitpid(pid, 0)
        assert "exception" not in out, out
        errors = out["errors"]
        assert errors == (["%s: device node not restored: creating devices needs root" % (src / "dev")]
                          if device else [])
        got = os.path.join(target, "src")
        assert sorted(os.listdir(got)) == ["closed", "owned", "ro", "suid"]
        for p in ("owned", "suid", "closed/inside", "ro", "closed", "."):
            st, sst = os.lstat(os.path.join(got, p)), os.lstat(src / p)
            assert (st.st_uid, st.st_gid) == (uid, gid)         # owners left to the user
            assert st.st_mode == sst.st_mode and st.st_mtime_ns == T0 + 7, p
        assert open(os.path.join(got, "closed", "inside"), "rb").read() == b"inside"
        assert open(os.path.join(got, "owned"), "rb").read() == b"owned by someone else"
        if xattrs:
            assert os.getxattr(os.path.join(got, "ro"), b"user.k") == b"v"
    finally:
        shutil.rmtree(shared)


# -- crafted records ------------------------------------------------------------

def _node(name, mode, **kw):
    f = dict(name=name, mode=mode, uid=os.getuid(), gid=os.getgid(), user="", group="", size=0,
             mtime_ns=T0, ctime_ns=T0, ino=0, dev=0, nlink=1, rdev=0, target=b"", xattrs=None,
             chunks=b"", subtree=None, sparse=None)
    f.update(kw)
    return Node(**f)


def _commit_crafted(repo, build) -> str:
    """build(session) -> list of root entries; returns the new backup's id."""
    with repo.repository.write_session() as s:
        root = s.add_tree(Tree(build(s)))
        bid = os.urandom(16).hex()
        s.commit_backup(BackupRecord(bid, "crafted", "crafted", ["/"], time.time_ns(),
                                     time.time_ns(), root.hex()))
    return bid


def _file(s, name, data, **kw):
    return _node(name, stat.S_IFREG | 0o644, size=len(data), chunks=s.add_chunk(data) if data else b"",
                 **kw)


def _dir(s, name, entries):
    return _node(name, stat.S_IFDIR | 0o755, subtree=s.add_tree(Tree(entries)))


def test_unsafe_names_in_a_record_are_refused(repo, tmp_path):
    outside = tmp_path / "victim"
    outside.mkdir()
    target = tmp_path / "t" / "out"

    def build(s):
        return [
            _file(s, b"..", b"escaped"),
            _file(s, b".", b"dot"),
            _dir(s, b"a", [_file(s, b"kept", b"ok"),
                           _dir(s, b"..", [_file(s, b"victim-file", b"escaped")])]),
            _file(s, b"a/../../victim/x", b"escaped"),
            _dir(s, b"b/c", [_file(s, b"x", b"escaped")]),
            _file(s, b"good", b"good"),
        ]
    bid = _commit_crafted(repo, build)
    res = repo.restore(bid, target)
    msgs = "\n".join(res.errors)
    for shown in ("/..", "/.", "/a/..", "/a/../../victim/x", "/b/c"):
        assert f"{shown}: unsafe name" in msgs
    assert len(res.errors) == 5
    assert sorted(os.listdir(target)) == ["a", "good"]
    assert os.listdir(target / "a") == ["kept"]
    assert (target / "good").read_bytes() == b"good"
    assert os.listdir(outside) == [] and sorted(os.listdir(tmp_path / "t")) == ["out"]
    assert not (tmp_path / "victim-file").exists()


def test_never_writes_through_a_symlink_it_created(repo, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = tmp_path / "out"

    def build(s):
        return [   # stored order is walk order: each name twice, the symlink first
            _node(b"d", stat.S_IFLNK | 0o777, target=os.fsencode(elsewhere)),
            _dir(s, b"d", [_file(s, b"x", b"through the link")]),
            _node(b"f", stat.S_IFLNK | 0o777, target=os.fsencode(elsewhere / "f")),
            _file(s, b"f", b"through the link"),
            _node(b"g", stat.S_IFLNK | 0o777, target=os.fsencode(elsewhere / "g")),
            _node(b"g", stat.S_IFIFO | 0o644),
            _file(s, b"z", b"after"),
        ]
    bid = _commit_crafted(repo, build)
    res = repo.restore(bid, target)
    assert os.listdir(elsewhere) == []
    assert len(res.errors) == 3 and all("duplicate name" in e for e in res.errors)
    assert {e.split(":")[0] for e in res.errors} == {"/d", "/f", "/g"}
    assert os.readlink(target / "d") == str(elsewhere)
    assert (target / "z").read_bytes() == b"after"


def test_owner_by_name_when_the_name_exists(repo, tmp_path):
    if not IS_ROOT:
        pytest.skip("needs root")
    root_grp = grp.getgrgid(0).gr_name

    def build(s):
        return [_file(s, b"named", b"1", user="root", group=root_grp, uid=4242, gid=4243),
                _file(s, b"numeric", b"2", user="no-such-user-here", group="", uid=4244, gid=4245)]
    bid = _commit_crafted(repo, build)
    res = repo.restore(bid, tmp_path / "out")
    assert res.errors == []
    st = os.stat(tmp_path / "out" / "named")
    assert (st.st_uid, st.st_gid) == (0, 0)
    st = os.stat(tmp_path / "out" / "numeric")
    assert (st.st_uid, st.st_gid) == (4244, 4245)


# -- damage ---------------------------------------------------------------------

@WRITERS
@pytest.mark.parametrize("compressible", [False, True])
def test_corrupt_chunk_is_reported_and_the_rest_restored(repo, tmp_path, compressible, procs):
    """(A big compressible file's chunks are decoded into the O_DIRECT buffer: the bad
    one is caught there too.)"""
    src = tmp_path / "src"
    src.mkdir()
    write_random(src / "a_before", 300_000, seed=1)
    if compressible:
        rnd = random.Random(2)
        words = [rnd.randbytes(4).hex().encode() for _ in range(3000)]
        (src / "broken").write_bytes(b" ".join(rnd.choices(words, k=(2 << 20) // 9)))
    else:
        write_random(src / "broken", 2 << 20, seed=2)
    write_random(src / "z_after", 300_000, seed=3)
    (src / "sub").mkdir()
    (src / "sub" / "small").write_bytes(b"small file")
    bid = repo.backup([src]).id
    r = repo.repository
    rec = r.resolve_backup(bid)
    node = find_node(r, bytes.fromhex(rec.root), str(src / "broken"))
    cid = node.chunk_ids()[-1]
    with r.index.read() as v:
        e = v.chunk(cid)
    path = os.path.join(r.path, pack_name(e.pack))
    with open(path, "r+b") as f:
        f.seek(e.offset + e.length // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    r.storage.close()   # drop cached descriptors (the file itself was edited in place)
    target = tmp_path / "out"
    res = repo.restore(bid, target, str(src), processes_after=procs)
    assert res.processes == (0 if procs is None else 2)
    assert len(res.errors) == 1
    assert str(src / "broken") in res.errors[0]
    assert not (target / "src" / "broken").exists()      # removed, never zero-filled
    for name in ("a_before", "z_after", "sub/small"):
        assert (target / "src" / name).read_bytes() == (src / name).read_bytes()
    assert res.files == 3 and res.skipped == 1


def test_cli_restore_exits_nonzero_on_errors(repo, tmp_path):
    from click.testing import CliRunner
    from chunkrepo.cli.main import cli

    src = tmp_path / "src"
    src.mkdir()
    write_random(src / "f", 100_000, seed=4)
    bid = repo.backup([src]).id
    r = repo.repository
    node = find_node(r, bytes.fromhex(r.resolve_backup(bid).root), str(src / "f"))
    with r.index.read() as v:
        e = v.chunk(node.chunk_ids()[0])
    os.truncate(os.path.join(r.path, pack_name(e.pack)), e.offset + 10)
    r.storage.close()
    result = CliRunner().invoke(cli, ["restore", "--repo", str(repo.path), bid, str(src),
                                      "--target", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert f"{src / 'f'}:" in result.output and "restore finished with 1 errors" in result.output
    assert not (tmp_path / "out" / "src" / "f").exists()


@WRITERS
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_restored_modes_do_not_depend_on_the_umask(repo, tmp_path, umask, procs):
    src = tmp_path / "src"
    src.mkdir()
    modes = {"rw": 0o644, "private": 0o600, "open": 0o666, "exec": 0o755, "ro": 0o444, "none": 0o000,
             "suid": 0o4755, "sticky": 0o1777, "group": 0o2750}
    for name, mode in modes.items():
        (src / name).write_bytes(name.encode())
        os.chmod(src / name, mode)
    bid = repo.backup([src]).id
    old = os.umask(umask)
    try:
        res = repo.restore(bid, tmp_path / "out", processes_after=procs)
    finally:
        os.umask(old)
    assert not res.errors
    out = tmp_path / "out" / src.relative_to("/")
    for name, mode in modes.items():
        assert stat.S_IMODE(os.lstat(out / name).st_mode) == mode, name
        assert (out / name).read_bytes() == name.encode()
