"""Run a program as an unprivileged user when we are root, without touching any permission.

PostgreSQL refuses to run as root. Running it as another system user would need that user to
reach the binaries and the data dir: impossible from a 0700 folder (a `mktemp -d`, /root) unless
we chmod the folders above us, which we never do. Instead, the program runs in a new user
namespace where our uid 0 is mapped to an unprivileged uid: inside, PostgreSQL sees a non-root
euid and is content; outside, the kernel still sees root, so every file it creates belongs to
us and it reaches our 0700 folders through their owner bits. No user is added, nothing is
chowned or chmodded. `unshare` (util-linux, on every Debian) execs the program without forking,
so the pid we hold is the program's own and signals reach it directly.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Sequence

# The uid the program sees as its own inside the namespace. PostgreSQL looks its name up in
# /etc/passwd (initdb fails without it), so it must exist there; `nobody` does everywhere.
UNPRIVILEGED_USER = "nobody"


class UserNamespaceUnavailable(RuntimeError):
    pass


def as_unprivileged(command: Sequence[str]) -> list[str]:
    """`command` as is when we are not root; when root, prefixed to run in a user namespace
    where it is not. Raises UserNamespaceUnavailable, saying what is missing, if it can't be."""
    if os.geteuid() != 0:
        return list(command)
    prefix = user_namespace_prefix()
    _check_works(prefix)
    return [*prefix, *command]


def user_namespace_prefix(user: str = UNPRIVILEGED_USER) -> list[str]:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise UserNamespaceUnavailable(
            f"PostgreSQL refuses to run as root, so it runs in a user namespace as `{user}`, "
            f"but this machine has no user `{user}` in /etc/passwd. Add it, run as a non-root "
            f"user, or set DATABASE_URL to a PostgreSQL you run yourself."
        ) from None
    uid, gid = entry.pw_uid, entry.pw_gid
    return ["unshare", "--user", f"--map-user={uid}", f"--map-group={gid}", "--"]


def _check_works(prefix: list[str]) -> None:
    """Try the namespace with `true` first, so a machine without user namespaces gets a
    message saying so instead of PostgreSQL's own failure to start."""
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise UserNamespaceUnavailable(
            "PostgreSQL refuses to run as root, and `unshare` (util-linux), which runs it in a "
            "user namespace as an unprivileged uid, is not installed: install util-linux, run "
            "as a non-root user, or set DATABASE_URL to a PostgreSQL you run yourself."
        ) from None
    if probe.returncode != 0:
        raise UserNamespaceUnavailable(
            f"PostgreSQL refuses to run as root, so it runs in a user namespace as an "
            f"unprivileged uid, but this machine does not allow creating one "
            f"(`{' '.join(prefix)} true` said: {probe.stderr.strip() or probe.returncode}). "
            f"Allow user namespaces (sysctl user.max_user_namespaces > 0; in a container, a "
            f"seccomp or AppArmor profile that permits unshare), run as a non-root user, or "
            f"set DATABASE_URL to a PostgreSQL you run yourself."
        )
