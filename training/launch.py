"""Who am I in the job: rank, world size and local rank from whichever launcher started this process.

torchrun and the deepspeed launcher (also over pdsh) set the torch variables (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE or LOCAL_SIZE, MASTER_ADDR, MASTER_PORT). Open MPI's mpirun (OMPI_COMM_WORLD_*), MVAPICH
(MV2_COMM_WORLD_*), MPICH and Intel MPI (PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS) and Slurm's srun
(SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE / SLURM_NTASKS_PER_NODE,
SLURM_STEP_NODELIST / SLURM_JOB_NODELIST) set their own. ``resolve`` reads them all, refuses any two that disagree in
one line, and ``export`` writes the torch variables, so ``deepspeed.init_distributed`` takes the env:// path and never
needs mpi4py. Without any launcher this is one process (rank 0 of 1, a free local port).

MASTER_PORT under mpirun or srun, when not exported: 29500 (torch's default), since the ranks cannot agree on a
random one; export MASTER_PORT to run two such jobs on one node. MASTER_ADDR: the first host of the Slurm step's
node list, 127.0.0.1 when every rank is on this node, else it must be exported (mpirun -x MASTER_ADDR=<rank 0's host>).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from common.errors import ConfigError

DEFAULT_PORT = 29500  # torch's own default; the port every rank of an mpirun/srun job assumes when none is exported
TORCH = "torchrun/deepspeed"  # and anything else that sets the torch variables
FACTS = ("rank", "size", "local_rank", "local_size")
# per launcher, the variable that carries each fact (first present wins where a fact has two spellings)
LAUNCHERS = {
    TORCH: {
        "rank": ("RANK",),
        "size": ("WORLD_SIZE",),
        "local_rank": ("LOCAL_RANK",),
        "local_size": ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"),
    },
    "Open MPI": {
        "rank": ("OMPI_COMM_WORLD_RANK",),
        "size": ("OMPI_COMM_WORLD_SIZE",),
        "local_rank": ("OMPI_COMM_WORLD_LOCAL_RANK",),
        "local_size": ("OMPI_COMM_WORLD_LOCAL_SIZE",),
    },
    "MVAPICH": {
        "rank": ("MV2_COMM_WORLD_RANK",),
        "size": ("MV2_COMM_WORLD_SIZE",),
        "local_rank": ("MV2_COMM_WORLD_LOCAL_RANK",),
        "local_size": ("MV2_COMM_WORLD_LOCAL_SIZE",),
    },
    "MPICH/Intel MPI": {
        "rank": ("PMI_RANK",),
        "size": ("PMI_SIZE",),
        "local_rank": ("MPI_LOCALRANKID",),
        "local_size": ("MPI_LOCALNRANKS",),
    },
    "Slurm": {"rank": ("SLURM_PROCID",), "size": ("SLURM_NTASKS", "SLURM_NPROCS"), "local_rank": ("SLURM_LOCALID",)},
}


@dataclass(frozen=True)
class Placement:
    """This process's place in the job, as the launcher said it (``port`` None: one process, pick a free one)."""

    launcher: str
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int | None
    master_addr: str
    master_port: int | None

    def torch_env(self, port: int | None = None) -> dict[str, str]:
        env = {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port or port),
        }
        if self.local_world_size is not None:
            env["LOCAL_WORLD_SIZE"] = str(self.local_world_size)
        return env


def _int(env: Mapping[str, str], var: str) -> int:
    try:
        return int(env[var])
    except ValueError:
        raise ConfigError(f"{var}={env[var]!r} is not an integer; unset it or let the launcher set it") from None


def _read(env: Mapping[str, str], name: str) -> dict[str, tuple[int, str]]:
    """The facts one launcher's variables give: {fact: (value, variable)}."""
    found = {}
    for fact, names in LAUNCHERS[name].items():
        present = [v for v in names if env.get(v, "") != ""]
        if len(present) == 2 and _int(env, present[0]) != _int(env, present[1]):
            raise ConfigError(f"{present[0]}={env[present[0]]} but {present[1]}={env[present[1]]}; unset the stale one")
        if present:
            found[fact] = (_int(env, present[0]), present[0])
    if name == "Slurm" and "rank" in found and "size" in found:
        per_node = slurm_tasks_per_node(env)
        if per_node is not None:
            found["local_size"] = per_node
    return found


def slurm_tasks_per_node(env: Mapping[str, str]) -> tuple[int, str] | None:
    """This node's task count: SLURM_STEP_TASKS_PER_NODE or SLURM_TASKS_PER_NODE ("2(x3),1" is 2,2,2,1; this node
    is SLURM_NODEID), else SLURM_NTASKS_PER_NODE. A list of unequal counts is refused (see ``resolve``)."""
    for var in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if not env.get(var):
            continue
        counts = []
        for part in env[var].split(","):
            m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
            if not m:
                raise ConfigError(f"{var}={env[var]!r} is not a Slurm task count list such as 2(x3),1")
            counts += [int(m[1])] * int(m[2] or 1)
        if len(set(counts)) > 1:
            raise ConfigError(
                f"{var}={env[var]} starts unequal numbers of processes per node; start the same number on every node "
                "(srun --ntasks-per-node)"
            )
        return counts[0], var
    if env.get("SLURM_NTASKS_PER_NODE"):
        return _int(env, "SLURM_NTASKS_PER_NODE"), "SLURM_NTASKS_PER_NODE"
    return None


def first_host(nodelist: str) -> str | None:
    """The first host of a Slurm node list: "node[01-04,07],gpu3" -> "node01", "a[1-2]-b[3-4]" -> "a1-b3"."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):  # the first top-level comma ends the first entry
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            end = i
            break
    host = re.sub(r"\[([^\[\]]*)\]", lambda m: re.split(r"[-,]", m[1])[0], nodelist[:end].strip())
    return host if host and not re.search(r"[\[\],\s]", host) else None


def scontrol_first_host(nodelist: str) -> str | None:
    """``scontrol show hostnames`` (Slurm's own parser) for node lists ``first_host`` does not read."""
    if not shutil.which("scontrol"):
        return None
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if out else None


def _slurm_in_batch_script(env: Mapping[str, str]) -> bool:
    """The batch script itself (sbatch, no srun step): its SLURM_NTASKS describe the job, yet one copy runs."""
    return bool(env.get("SLURM_JOB_ID")) and not env.get("SLURM_STEP_ID")


def _agree(primary: dict, name: str, other: dict, other_name: str) -> None:
    """Refuse a second launcher's variables that contradict the primary's, except one launcher per node started by
    the other (srun starting torchrun, or Open MPI's daemons under sbatch): its world is the outer one's times the
    processes each starts, and its variables describe this process."""
    if "rank" in other and "size" in other and other["size"][0] != primary["size"][0]:
        local = primary.get("local_size")
        if local and primary["size"][0] == other["size"][0] * local[0]:
            return
        p, o = primary["size"], other["size"]
        raise ConfigError(
            f"{p[1]}={p[0]} but {o[1]}={o[0]} ({other_name}): two launchers disagree on the number of processes; "
            "unset the stale variables (an exported RANK/WORLD_SIZE?) or start the job with one launcher"
        )
    for fact in FACTS:
        if fact in other and fact in primary and other[fact][0] != primary[fact][0]:
            p, o = primary[fact], other[fact]
            raise ConfigError(
                f"{p[1]}={p[0]} but {o[1]}={o[0]} ({other_name}): two launchers disagree on this process's place; "
                "unset the stale variables (an exported RANK/LOCAL_RANK?) or start the job with one launcher"
            )


def resolve(env: Mapping[str, str], slurm_hosts: Callable[[str], str | None] = scontrol_first_host) -> Placement:
    """This process's Placement from the launcher variables in ``env``; ConfigError when they disagree or fall
    short. Pure but for ``slurm_hosts`` (called only for a node list ``first_host`` cannot read)."""
    batch = _slurm_in_batch_script(env)
    read = {name: {} if name == "Slurm" and batch else _read(env, name) for name in LAUNCHERS}
    full = [n for n, f in read.items() if "rank" in f and "size" in f]
    if not full:
        _one_process(read[TORCH])
        return Placement("one process", 0, 1, 0, 1, env.get("MASTER_ADDR") or "127.0.0.1", _master_port(env, 1))
    name, facts = full[0], dict(read[full[0]])
    for other in LAUNCHERS:
        if other != name and (other in full or other == TORCH):  # partial torch variables must agree too
            _agree(facts, name, read[other], other)
            same_world = read[other].get("size", facts["size"])[0] == facts["size"][0]
            for fact in ("local_rank", "local_size"):  # a fact the first launcher lacks, from one that agrees
                if same_world and fact not in facts and fact in read[other]:
                    facts[fact] = read[other][fact]
    rank, size = facts["rank"], facts["size"]
    if size[0] < 1 or not 0 <= rank[0] < size[0]:
        raise ConfigError(f"{rank[1]}={rank[0]} is not a rank of {size[1]}={size[0]} (0 <= rank < size)")
    if size[0] == 1:
        facts.setdefault("local_rank", (0, "LOCAL_RANK"))
        facts.setdefault("local_size", (1, "LOCAL_WORLD_SIZE"))
    if "local_rank" not in facts:
        raise ConfigError(
            f"{rank[1]} and {size[1]} are set but no variable gives this process's rank on its node; export LOCAL_RANK"
        )
    local_rank, local_size = facts["local_rank"], facts.get("local_size")
    if local_rank[0] < 0 or (local_size and local_rank[0] >= local_size[0]):
        raise ConfigError(
            f"{local_rank[1]}={local_rank[0]} is not a rank of {local_size[1]}={local_size[0]} processes on this node"
            if local_size
            else f"{local_rank[1]}={local_rank[0]} is negative"
        )
    if local_size and (local_size[0] > size[0] or size[0] % local_size[0]):
        raise ConfigError(
            f"{size[1]}={size[0]} processes do not fill nodes of {local_size[1]}={local_size[0]}; start the same "
            "number of processes on every node"
        )
    return Placement(
        launcher=name,
        rank=rank[0],
        world_size=size[0],
        local_rank=local_rank[0],
        local_world_size=local_size[0] if local_size else None,
        master_addr=_master_addr(env, name, size[0], local_size, slurm_hosts),
        master_port=_master_port(env, size[0]),
    )


def _one_process(torch_vars: dict) -> None:
    """No launcher set a rank: torch variables that are there must describe rank 0 of 1."""
    alone = {"rank": 0, "size": 1, "local_rank": 0, "local_size": 1}
    for fact, (value, var) in torch_vars.items():
        if value != alone[fact]:
            raise ConfigError(
                f"{var}={value} but no launcher set this process's rank (RANK, OMPI_COMM_WORLD_RANK, PMI_RANK, "
                f"SLURM_PROCID); start the job with torchrun, deepspeed, mpirun or srun, or unset {var}"
            )


def _master_addr(env, name, size, local_size, slurm_hosts) -> str:
    """MASTER_ADDR as exported, else the Slurm step's first host, else this host when every rank is here."""
    if env.get("MASTER_ADDR"):
        return env["MASTER_ADDR"]
    slurm = not _slurm_in_batch_script(env) and bool(env.get("SLURM_PROCID"))
    for var in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST") if slurm else ():
        if env.get(var):
            host = first_host(env[var]) or slurm_hosts(env[var])
            if not host:
                raise ConfigError(f"cannot read the first host of {var}={env[var]!r}; export MASTER_ADDR=<its name>")
            return host
    if local_size and local_size[0] == size:
        return "127.0.0.1"  # every rank on this node
    how = "srun --export=ALL,MASTER_ADDR=..." if slurm else "mpirun -x MASTER_ADDR=..."
    raise ConfigError(
        f"{size} processes on several nodes ({name}) but MASTER_ADDR is not set; export MASTER_ADDR=<rank 0's host> "
        f"to every process ({how}, or a line of .deepspeed_env)"
    )


def _master_port(env: Mapping[str, str], size: int) -> int | None:
    if env.get("MASTER_PORT"):
        port = _int(env, "MASTER_PORT")
        if not 0 < port < 65536:
            raise ConfigError(f"MASTER_PORT={port} is not a TCP port (1-65535)")
        return port
    return None if size == 1 else DEFAULT_PORT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export(environ: dict | None = None) -> Placement:
    """Resolve this process's Placement and write the torch variables into ``environ`` (os.environ by default)."""
    environ = os.environ if environ is None else environ
    placement = resolve(environ)
    environ.update(placement.torch_env(port=None if placement.master_port else free_port()))
    return placement
