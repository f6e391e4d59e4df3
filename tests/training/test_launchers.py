"""Every common launcher: rank, world and rendezvous from torchrun/deepspeed, Open MPI, MVAPICH, MPICH/Intel MPI and
Slurm variables (disagreements refused in one line); what real mpirun and deepspeed launchers give their processes;
a directory that is not the same on every rank is refused before training."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from common.errors import ConfigError
from tests.conftest import ROOT
from tests.training.conftest import free_port, stage_env
from training.distributed import check_shared_dir
from training.launch import DEFAULT_PORT, Placement, export, first_host, resolve

# ---- each launcher's variables ----


def test_no_launcher_is_one_process_on_a_free_port():
    assert resolve({}) == Placement("one process", 0, 1, 0, 1, "127.0.0.1", None)
    assert resolve({"LOCAL_RANK": "0", "WORLD_SIZE": "1"}).world_size == 1  # stray variables that say the same
    env = {}
    export(env)
    assert env["RANK"] == "0" and env["WORLD_SIZE"] == "1" and int(env["MASTER_PORT"]) > 0


def test_torchrun_and_the_deepspeed_launcher():
    torchrun = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    torchrun |= {"MASTER_ADDR": "n1", "MASTER_PORT": "1234", "TORCHELASTIC_RUN_ID": "x"}
    assert resolve(torchrun) == Placement("torchrun/deepspeed", 5, 8, 1, 4, "n1", 1234)
    ds = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_SIZE": "2", "CROSS_RANK": "0"}
    ds |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29600"}
    p = resolve(ds)
    assert (p.rank, p.world_size, p.local_rank, p.local_world_size) == (1, 2, 1, 2)
    assert p.torch_env() == {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29600",
    }


def test_open_mpi_one_node_and_several():
    ompi = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}
    ompi |= {"OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    assert resolve(ompi) == Placement("Open MPI", 1, 2, 1, 2, "127.0.0.1", DEFAULT_PORT)
    several = ompi | {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3"}
    with pytest.raises(ConfigError, match=r"MASTER_ADDR is not set; export MASTER_ADDR=.*mpirun -x MASTER_ADDR"):
        resolve(several)
    assert resolve(several | {"MASTER_ADDR": "n0", "MASTER_PORT": "4000"}).master_addr == "n0"


def test_mvapich_and_mpich_and_intel_mpi():
    mv2 = {"MV2_COMM_WORLD_RANK": "2", "MV2_COMM_WORLD_SIZE": "4"}
    mv2 |= {"MV2_COMM_WORLD_LOCAL_RANK": "0", "MV2_COMM_WORLD_LOCAL_SIZE": "2", "MASTER_ADDR": "a"}
    assert resolve(mv2) == Placement("MVAPICH", 2, 4, 0, 2, "a", DEFAULT_PORT)
    pmi = {"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2", "MASTER_ADDR": "a"}
    assert resolve(pmi) == Placement("MPICH/Intel MPI", 3, 4, 1, 2, "a", DEFAULT_PORT)
    # deepspeed --launcher mpich/impi exports WORLD_SIZE and LOCAL_SIZE (no RANK) next to the PMI variables
    assert resolve(pmi | {"WORLD_SIZE": "4", "LOCAL_SIZE": "2"}).rank == 3
    with pytest.raises(ConfigError, match=r"PMI_SIZE=4 but WORLD_SIZE=8 \(torchrun/deepspeed\)"):
        resolve(pmi | {"WORLD_SIZE": "8"})


def test_slurm_srun_steps():
    srun = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_NTASKS": "4"}
    srun |= {"SLURM_LOCALID": "1", "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    assert resolve(srun) == Placement("Slurm", 3, 4, 1, 2, "gpu07", DEFAULT_PORT)
    step = srun | {"SLURM_STEP_TASKS_PER_NODE": "2,2", "SLURM_STEP_NODELIST": "gpu08,gpu07", "MASTER_PORT": "1"}
    assert (resolve(step).master_addr, resolve(step).master_port) == ("gpu08", 1)
    per_node = {k: v for k, v in srun.items() if k != "SLURM_TASKS_PER_NODE"} | {"SLURM_NTASKS_PER_NODE": "2"}
    assert resolve(per_node).local_world_size == 2
    assert resolve(srun | {"MASTER_ADDR": "10.0.0.1"}).master_addr == "10.0.0.1"  # an export wins
    # srun --mpi=pmi2 sets PMI_RANK/PMI_SIZE as well: the same facts
    assert resolve(srun | {"PMI_RANK": "3", "PMI_SIZE": "4"}).launcher == "MPICH/Intel MPI"


def test_the_slurm_batch_script_itself_is_one_process():
    """sbatch -n 8 runs one copy of the script: its SLURM_NTASKS describe the job, not this process."""
    batch = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_TASKS_PER_NODE": "5,3"}
    assert resolve(batch | {"SLURM_JOB_NODELIST": "n[1-2]"}).world_size == 1


def test_one_launcher_per_node_under_srun():
    """srun --ntasks-per-node=1 torchrun --nnodes 2 --nproc_per_node 8: torchrun's variables describe the process."""
    nested = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0"}
    nested |= {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "n0"}
    assert resolve(nested) == Placement("torchrun/deepspeed", 9, 16, 1, 8, "n0", DEFAULT_PORT)
    # mpirun in an sbatch script: Open MPI starts its daemons with srun, one task per node
    daemons = {"SLURM_STEP_ID": "1", "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NODELIST": "n[4-5]"}
    ompi = {"OMPI_COMM_WORLD_RANK": "9", "OMPI_COMM_WORLD_SIZE": "16"}
    ompi |= {"OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "8"}
    assert resolve(daemons | ompi | {"SLURM_LOCALID": "0"}) == Placement("Open MPI", 9, 16, 1, 8, "n4", DEFAULT_PORT)
    same = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
    assert resolve(same | {"RANK": "1", "WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}).local_rank == 1


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [
        ("node[01-04,07]", "node01"),
        ("node07,node[01-04]", "node07"),
        ("gpu[3],cpu[1-2]", "gpu3"),
        ("rack[1-2]-n[05-06]", "rack1-n05"),
        ("127.0.0.[1-2]", "127.0.0.1"),
        ("localhost", "localhost"),
        ("node[01", None),
    ],
)
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_an_unreadable_node_list_asks_scontrol_then_for_master_addr():
    srun = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0"}
    srun |= {"SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NODELIST": "node[01"}
    asked = []
    assert resolve(srun, slurm_hosts=lambda s: asked.append(s) or "node01").master_addr == "node01"
    assert asked == ["node[01"]
    with pytest.raises(ConfigError, match=r"first host of SLURM_JOB_NODELIST='node\[01'; export MASTER_ADDR"):
        resolve(srun, slurm_hosts=lambda s: None)


OMPI2 = {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}
SLURM2 = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({**OMPI2, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK=1 but OMPI_COMM_WORLD_RANK=0 (Open MPI)"),
        ({**OMPI2, "RANK": "0", "WORLD_SIZE": "1"}, "WORLD_SIZE=1 but OMPI_COMM_WORLD_SIZE=2 (Open MPI)"),
        ({**OMPI2, "LOCAL_RANK": "1"}, "OMPI_COMM_WORLD_LOCAL_RANK=0 but LOCAL_RANK=1"),
        ({**OMPI2, **SLURM2}, "OMPI_COMM_WORLD_RANK=0 but SLURM_PROCID=1 (Slurm)"),
        ({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "LOCAL_RANK=2 is not a rank"),
        ({"RANK": "4", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}, "RANK=4 is not a rank of WORLD_SIZE=4"),
        ({"RANK": "1", "WORLD_SIZE": "6", "LOCAL_RANK": "1", "LOCAL_SIZE": "4"}, "do not fill nodes of LOCAL_SIZE=4"),
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_SIZE": "4"}, "do not fill nodes of LOCAL_SIZE=4"),
        ({"LOCAL_WORLD_SIZE": "2", "LOCAL_SIZE": "3"}, "LOCAL_WORLD_SIZE=2 but LOCAL_SIZE=3"),
        ({"RANK": "one"}, "RANK='one' is not an integer"),
        ({"WORLD_SIZE": "4"}, "WORLD_SIZE=4 but no launcher set this process's rank"),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "a"}, "export LOCAL_RANK"),
        ({**SLURM2, "SLURM_TASKS_PER_NODE": "2,1"}, "unequal numbers of processes per node"),
        ({**SLURM2, "SLURM_TASKS_PER_NODE": "two"}, "not a Slurm task count list"),
        ({**OMPI2, "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "MASTER_PORT": "70000"}, "MASTER_PORT=70000 is not a TCP port"),
    ],
)
def test_disagreements_are_one_line(env, message):
    with pytest.raises(ConfigError) as exc:
        resolve(env)
    assert message in str(exc.value) and "\n" not in str(exc.value)


# ---- real launchers: what each one gives its processes (one world of 2, one rendezvous) ----

PLACEMENT = """
import json, os, pathlib, sys
from training.launch import export
p = export()
port = os.environ["MASTER_PORT"]
out = pathlib.Path(__file__).parent / f"rank{p.rank}.json"
out.write_text(json.dumps([p.launcher, p.rank, p.world_size, p.local_rank, p.master_addr, port, sys.argv[1:]]))
"""


def placements(directory) -> list[list]:
    """Each process's [launcher, rank, world, local rank, master addr, master port, argv], by rank (one file each:
    the launchers' merged stdout may interleave lines)."""
    return [json.loads(f.read_text()) for f in sorted(directory.glob("rank*.json"))]


@pytest.mark.skipif(
    shutil.which("mpirun") is None, reason="no mpirun: install Open MPI (Debian: openmpi-bin; scripts/test.sh does)"
)
def test_open_mpi_mpirun_makes_one_world_of_two(tmp_path):
    """mpirun sets only OMPI_COMM_WORLD_*: the two processes agree on ranks and rendezvous (the stage's training
    equality under a real launch is test_topology.py's, started as srun starts it)."""
    script = tmp_path / "placement.py"
    script.write_text(PLACEMENT)
    env = {**stage_env(2), "MASTER_PORT": str(free_port())}  # not 29500: other jobs on this machine may hold it
    mpirun = ["mpirun", "-np", "2", "--oversubscribe", "--allow-run-as-root", "-x", "MASTER_PORT", "-x", "PYTHONPATH"]
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([*mpirun, sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    port = int(env["MASTER_PORT"])
    want = [["Open MPI", i, 2, i, "127.0.0.1", str(port), []] for i in (0, 1)]
    assert placements(tmp_path) == want


@pytest.mark.slow
def test_the_deepspeed_launcher_makes_one_world_of_two(tmp_path):
    """deepspeed --num_accelerators 2: RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_SIZE, and --local_rank=N on the
    command line (which ``python -m training run`` accepts: test_run.py)."""
    script = tmp_path / "placement.py"
    script.write_text(PLACEMENT)
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    port = str(free_port())
    env = {**stage_env(2), "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [launcher, "--num_accelerators", "2", "--master_port", port, str(script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    want = [["torchrun/deepspeed", i, 2, i, "127.0.0.1", port, [f"--local_rank={i}"]] for i in (0, 1)]
    assert placements(tmp_path) == want


# ---- output_path and data_dir must be the same directory on every rank ----

SHARED_CHECK = """
import json, os, sys
import torch.distributed as dist
from common.errors import ConfigError
from training.distributed import check_shared_dir, refuse_together
dist.init_process_group("gloo")
results = []
for path, what, read_only in json.loads(sys.argv[1]):
    try:
        check_shared_dir(path.replace("{rank}", os.environ["RANK"]), what, read_only=read_only)
        results.append("ok")
    except ConfigError as exc:
        results.append(str(exc))
for refusing in ([], ["1"]):  # no rank refuses; then rank 1 alone (e.g. its node lacks data_dir)
    try:
        refuse_together(ConfigError("data_dir /x: no such directory") if os.environ["RANK"] in refusing else None)
        results.append("ok")
    except ConfigError as exc:
        results.append(str(exc))
dist.barrier()  # ENV.md: a barrier before destroy, and no interpreter teardown, or gloo may abort at exit
dist.destroy_process_group()
print(json.dumps(results), flush=True)
os._exit(0)
"""


def test_a_directory_that_differs_between_ranks_is_refused(tmp_path):
    """Two real ranks (gloo): one directory for both passes; a directory per rank (node-local disks) is refused;
    a refusal found by one rank before training stops both."""
    for rank in (0, 1):  # per-rank data copies: identical, then one with an extra file
        for name in (f"data{rank}", f"datadiff{rank}"):
            (tmp_path / name / "train").mkdir(parents=True)
            (tmp_path / name / "train" / "part0.hdf5").write_bytes(b"x" * 10)
    (tmp_path / "datadiff1" / "train" / "part1.hdf5").write_bytes(b"y")
    (tmp_path / "a_file").write_text("")
    checks = [
        (str(tmp_path / "shared" / "out"), "output_path", False),
        (str(tmp_path / "local{rank}"), "output_path", False),
        (str(tmp_path / "data{rank}"), "data_dir", True),
        (str(tmp_path / "datadiff{rank}"), "data_dir", True),
        (str(tmp_path / "a_file" / "out"), "output_path", False),
    ]
    env = {**stage_env(2), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SHARED_CHECK, json.dumps(checks)],
            cwd=ROOT,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    for rank, (stdout, _) in enumerate(outs):
        shared, local, data, datadiff, unwritable, nobody, one = json.loads(stdout.splitlines()[-1])
        assert nobody == "ok"  # a refusal on one rank stops every rank, each with one line, none left waiting
        assert one == (
            "data_dir /x: no such directory"
            if rank
            else "rank(s) [1] refused to start (see rank 1's message); nothing was trained"
        )
        assert shared == "ok" and data == "ok"
        assert local.startswith(f"output_path {tmp_path / f'local{rank}'} is not shared: rank 1 on host ")
        assert "cannot see rank 0's files" in local and "storage every node mounts" in local
        assert "differs between ranks: rank 1 on host" in datadiff
        assert "rank 0 cannot write there" in unwritable
    assert os.listdir(tmp_path / "shared" / "out") == []  # the marker is gone
    assert not (tmp_path / "local1").exists()  # only rank 0 creates the directory


def test_the_shared_check_costs_nothing_for_one_process(tmp_path):
    check_shared_dir(tmp_path / "out", "output_path")  # no process group: no file, no directory, no collective
    assert not (tmp_path / "out").exists()
