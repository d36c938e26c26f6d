"""Who may call the worker: the job's own user code, and no one else on the machine.

The worker protocol has no authentication (Pachyderm's has none either), and a loopback port
is reachable by every local user. So pfsmount asks the kernel who is on the other end of each
connection:

- a TCP peer: the socket diagnostics netlink interface (`sock_diag`) looks up the client's
  socket by its exact address and port pair and names its owner uid and inode, in a few
  microseconds; `/proc/net/tcp` says the same but costs milliseconds to read on this kernel;
- a Unix-socket peer: `SO_PEERCRED` names its pid and uid.

A caller whose uid is not the user code's is refused. When the job's process tree is known
(`JobPeers.follow`), the caller must also belong to it: for a Unix socket, its pid descends
from one of the tree's roots; for TCP, a process of the tree holds the socket. The TCP tree
check scans /proc (about a millisecond), so its verdict is cached per socket inode: a client
that keeps its connection (pachyderm-sdk) pays it once, and every call still pays the uid
lookup, which also proves that the cached socket is the one calling.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NLMSG_HEADER = struct.Struct("=IHHII")
_DIAG_REQUEST = struct.Struct("=BBBBI")  # family, protocol, ext, pad, states
_NO_COOKIE = 0xFFFFFFFF
# inet_diag_msg: 4 bytes of family/state/timer/retrans, the 48-byte socket id, then
# expires, rqueue, wqueue, uid, inode.
_DIAG_UID_INODE = struct.Struct("=II")
_DIAG_UID_OFFSET = _NLMSG_HEADER.size + 4 + 48 + 12
_CACHE_LIMIT = 4096


class PeerRefused(Exception):
    """The caller is not the job's user code; str() says who it is and why it was refused."""


class JobPeers:
    """The rule for who may call: the user code's uid and, once known, its process tree.

    `uid` is the uid the user code runs as: pfsmount's own today. (When the spec's
    `transform.user` is honoured, pass that uid here: the rest follows.)
    """

    def __init__(self, uid: int | None = None) -> None:
        self.uid = os.getuid() if uid is None else uid
        self._roots: Callable[[], Iterable[int]] | None = None
        self._others: Callable[[], Iterable[int]] = tuple  # other workers' user code
        self._lock = threading.Lock()
        self._netlink: socket.socket | None = None
        self._tree_sockets: set[int] = set()  # socket inodes a tree process was seen holding

    def follow(self, roots: Callable[[], Iterable[int]],
               others: Callable[[], Iterable[int]] = tuple) -> None:
        """Admit only processes descending from `roots()` (the pids of the live user code).

        `others()`: the live user code of the job's other workers, refused with a message
        saying so (with N workers each process may call only its own worker).
        """
        self._roots = roots
        self._others = others

    # ----- TCP (gRPC)

    def check_tcp(self, peer: str, server_port: int, server_host: str = "127.0.0.1") -> None:
        """Refuse a gRPC peer (``ipv4:127.0.0.1:54321``, ``ipv6:[::1]:54321``) not of the job.

        `server_host` is the address the server listens on (its IPv6 twin is ``::1``).
        """
        family, host, port = _parse_peer(peer)
        if family == socket.AF_INET:
            server = server_host if "." in server_host else "127.0.0.1"
        else:
            server = server_host if ":" in server_host else "::1"
        found = self._diag(family, host, port, server, server_port)
        if found is None:
            raise PeerRefused(f"cannot tell who is calling from {peer}: its socket is gone")
        uid, inode = found
        if uid != self.uid:
            raise PeerRefused(_not_job(f"uid {uid}", peer, self.uid))
        if self._roots is None or inode in self._tree_sockets:
            return
        if not _tree_holds_socket(_descendants(self._roots()), inode):
            if _tree_holds_socket(_descendants(self._others()), inode):
                raise PeerRefused(_other_worker(f"the connection from {peer} (uid {uid})"))
            raise PeerRefused(
                f"the connection from {peer} (uid {uid}) belongs to no process of this job's "
                "user code; only the job's own processes may call NextDatum"
            )
        with self._lock:
            if len(self._tree_sockets) >= _CACHE_LIMIT:
                self._tree_sockets.clear()
            self._tree_sockets.add(inode)

    def _diag(self, family: int, host: str, port: int, server: str,
              server_port: int) -> tuple[int, int] | None:
        """(uid, inode) of the client socket host:port -> server:server_port, or None."""
        request = _diag_request(family, host, port, server, server_port)
        with self._lock:
            try:
                if self._netlink is None:
                    self._netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM,
                                                  _NETLINK_SOCK_DIAG)
                self._netlink.send(request)
                reply = self._netlink.recv(8192)
            except OSError as exc:
                log.debug("sock_diag failed (%s); reading /proc/net instead", exc)
                if self._netlink is not None:
                    self._netlink.close()
                    self._netlink = None
                return _proc_net_lookup(family, host, port, server, server_port)
        _length, kind = struct.unpack_from("=IH", reply)
        if kind == _NLMSG_ERROR or len(reply) < _DIAG_UID_OFFSET + _DIAG_UID_INODE.size:
            return None
        return _DIAG_UID_INODE.unpack_from(reply, _DIAG_UID_OFFSET)

    # ----- Unix socket (pfsmount's own clients)

    def check_unix(self, sock: socket.socket) -> None:
        """Refuse a Unix-socket peer that is not the job's user code."""
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        who = f"pid {pid}, uid {uid}"
        if uid != self.uid:
            raise PeerRefused(_not_job(who, "the worker socket", self.uid))
        if self._roots is not None and not _descends(pid, set(self._roots())):
            if _descends(pid, set(self._others())):
                raise PeerRefused(_other_worker(
                    f"{who} called NextDatum on the worker socket but"))
            raise PeerRefused(
                f"{who} called NextDatum on the worker socket but is no process of this job's "
                "user code; only the job's own processes may call it"
            )


def _other_worker(who: str) -> str:
    return (f"{who} belongs to another worker's user code; each worker's processes may call "
            "only their own worker: use PPS_WORKER_GRPC_PORT (or pfsmount's client) from the "
            "process's own environment")


def _not_job(who: str, where: str, uid: int) -> str:
    return (f"NextDatum from {where} refused: the caller ({who}) is not this job's user code "
            f"(uid {uid}); only the job's own processes may drive its datums")


def _parse_peer(peer: str) -> tuple[int, str, int]:
    # gRPC percent-encodes the brackets of an IPv6 peer: ipv6:%5B::1%5D:45190.
    kind, _, rest = peer.replace("%5B", "[").replace("%5D", "]").partition(":")
    host, _, port = rest.rpartition(":")
    if kind == "ipv4" and port.isdigit():
        return socket.AF_INET, host, int(port)
    if kind == "ipv6" and port.isdigit() and host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if host.startswith("::ffff:") and "." in host:
            return socket.AF_INET, host[7:], int(port)
        return socket.AF_INET6, host, int(port)
    raise PeerRefused(f"NextDatum from {peer!r} refused: only loopback TCP callers are served")


def _diag_request(family: int, host: str, port: int, server: str, server_port: int) -> bytes:
    src = socket.inet_pton(family, host).ljust(16, b"\0")
    dst = socket.inet_pton(family, server).ljust(16, b"\0")
    sockid = (struct.pack(">HH", port, server_port) + src + dst
              + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE))
    body = _DIAG_REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    header = _NLMSG_HEADER.pack(_NLMSG_HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY,
                                _NLM_F_REQUEST, 1, 0)
    return header + body


def _proc_net_lookup(family: int, host: str, port: int, server: str,
                     server_port: int) -> tuple[int, int] | None:
    """The slow way (`/proc/net/tcp[6]`: the `uid` and `inode` columns of the client's row)."""
    table = "/proc/net/tcp" if family == socket.AF_INET else "/proc/net/tcp6"
    local = f"{_proc_hex(family, host)}:{port:04X}"
    remote = f"{_proc_hex(family, server)}:{server_port:04X}"
    with open(table, encoding="ascii") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 9 and fields[1] == local and fields[2] == remote:
                return int(fields[7]), int(fields[9])
    return None


def _proc_hex(family: int, host: str) -> str:
    raw = socket.inet_pton(family, host)
    # The kernel prints each 32-bit word of the address in host byte order.
    return "".join(f"{word:08X}" for word in struct.unpack(f"={len(raw) // 4}I", raw))


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name may hold spaces and parentheses; the fields after its last ')' do not.
    return int(stat[stat.rindex(b")") + 2:].split(b" ", 2)[1])


def _descends(pid: int, roots: set[int]) -> bool:
    while pid > 1:
        if pid in roots:
            return True
        try:
            pid = _parent(pid)
        except (OSError, ValueError):
            return False
    return False


def _descendants(roots: Iterable[int]) -> set[int]:
    """The pids of `roots` and of every process below them (one scan of /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                children.setdefault(_parent(int(name)), []).append(int(name))
    found: set[int] = set()
    pending = list(roots)
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.add(pid)
            pending.extend(children.get(pid, ()))
    return found


def _tree_holds_socket(pids: Iterable[int], inode: int) -> bool:
    target = f"socket:[{inode}]"
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"{fd_dir}/{fd}") == target:
                    return True
    return False
