"""``powerbandit jobs export``: one row per run, as CSV or JSON, for pandas and spreadsheets.

Rows come from ``GetJob`` (every run of every job, through the public API). With a carbon
intensity (gCO2e per kWh, e.g. the grid average of the data centre's region), each row also has
``co2e_g_estimate`` = energy (kWh) x intensity: an **estimate**, as good as the intensity given;
the column name and a note on stderr say so.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from powerbandit.cli import operator_view as view
from powerbandit.v1 import optimizer_pb2 as pb

J_PER_KWH = 3.6e6

#: Columns of every row, in order (``co2e_g_estimate`` and ``carbon_intensity_g_per_kwh`` follow
#: when a carbon intensity is given).
COLUMNS = (
    "job_id", "run_id", "gpu_model", "gpu_count", "batch_size", "power_limit_w", "power_limit_control",
    "phase", "state", "outcome", "reached_target", "epochs", "energy_j", "energy_kwh", "time_s", "cost",
    "created_unix_s", "finished_unix_s",
)  # fmt: skip
CARBON_COLUMNS = ("carbon_intensity_g_per_kwh", "co2e_g_estimate")


def carbon_note(intensity_g_per_kwh: float) -> str:
    """What the carbon columns are, in one sentence."""
    return (
        f"co2e_g_estimate is an estimate: energy_kwh x {intensity_g_per_kwh:g} gCO2e/kWh (the carbon intensity "
        "given), not a measurement of the electricity used"
    )


def run_rows(jobs: Iterable[pb.Job], carbon_intensity_g_per_kwh: float | None = None) -> Iterator[dict[str, Any]]:
    """One dict per run of each job (jobs read with their runs), in job then creation order."""
    for job in jobs:
        for run in job.runs:
            r = view.run_dict(run)
            row = {
                "job_id": job.spec.job_id,
                "run_id": r["run_id"],
                "gpu_model": r["gpu_model"],
                "gpu_count": r["gpu_count"],
                "batch_size": r["batch_size"],
                "power_limit_w": r["power_limit_w"],
                "power_limit_control": r["power_limit_control"],
                "phase": r["phase"],
                "state": r["state"],
                "outcome": r["outcome"],
                "reached_target": r["reached_target"],
                "epochs": r["epochs"],
                "energy_j": r["energy_j"],
                "energy_kwh": r["energy_j"] / J_PER_KWH,
                "time_s": r["time_s"],
                "cost": r["cost"] if math.isfinite(r["cost"]) else None,
                "created_unix_s": r["created_unix_s"],
                "finished_unix_s": r["finished_unix_s"] or None,
            }
            if carbon_intensity_g_per_kwh is not None:
                row["carbon_intensity_g_per_kwh"] = carbon_intensity_g_per_kwh
                row["co2e_g_estimate"] = row["energy_kwh"] * carbon_intensity_g_per_kwh
            yield row


def write(rows: Iterable[dict[str, Any]], out: TextIO, fmt: str, *, carbon: bool) -> int:
    """Write ``rows`` to ``out`` as ``csv`` (header line, then one line per run) or ``json`` (a list of
    objects); returns how many rows were written."""
    columns = list(COLUMNS) + (list(CARBON_COLUMNS) if carbon else [])
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
            count += 1
        return count
    out.write("[")
    for row in rows:
        out.write(("," if count else "") + "\n  " + json.dumps(row, allow_nan=False))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count
