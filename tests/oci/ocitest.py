"""Names and helpers the OCI tests share (imported by name: `conftest` is ambiguous in this repository)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TENANCY = "ocid1.tenancy.oc1..standintenancy"
USER = "ocid1.user.oc1..standinuser"
COMPARTMENT = "ocid1.compartment.oc1..standincompartment"


def task_results(out, name):
    """The (last) result of the task called `name`, from the results_file callback."""
    found = [r["result"] for r in out if r["task"] == name]
    if not found:
        raise KeyError(name)
    return found[-1]


def changed_tasks(out):
    return [r["task"] for r in out if r["result"].get("changed")]
