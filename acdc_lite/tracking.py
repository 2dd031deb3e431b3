"""Optional: log a finished run's record to a local MLflow store (a sqlite file, no server), `acdc-lite --track DIR`.

`pip install 'acdc-lite[track]'` (mlflow-skinny with SQLAlchemy and Alembic: nothing of ours is downgraded; the
full `mlflow` package would downgrade pyarrow and python-dateutil, and trackio pillow). Everything goes under DIR:
the store `DIR/mlflow.db` and the artifacts `DIR/artifacts/`. Settings become parameters, `results` and `total`
numbers metrics, the command, outcome, task, model, method and folder tags, and the run's outputs artifacts.
Nothing imports this module unless tracking is asked for.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

EXPERIMENT = "acdc-lite"


def _mlflow():
    try:
        import mlflow
    except ImportError as e:
        raise ImportError(f"--track needs MLflow ({e}); install it with pip install 'acdc-lite[track]'") from None
    return mlflow


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def log_record(record: str | Path, store: str | Path) -> str:
    """Log the run record at `record` (with the outputs it lists) into the MLflow store in folder `store`; returns
    the MLflow run id."""
    from acdc_lite.ledger import record_row

    mlflow = _mlflow()
    record, store = Path(record), Path(store).resolve()
    rec = json.loads(record.read_text(encoding="utf-8"))
    store.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(EXPERIMENT, artifact_location=(store / "artifacts").as_uri())
    row = record_row(record)
    tags = {k: str(row[k]) for k in ("command", "outcome", "task", "model", "method", "folder") if row[k] is not None}
    run = client.create_run(exp_id, run_name=f"{row['command']} {row['folder']}", tags=tags)
    rid = run.info.run_id
    for k, v in _flat(rec.get("settings") or {}).items():
        client.log_param(rid, k, "null" if v is None else str(v)[:6000])
    numbers = {**{f"total.{k}": v for k, v in (rec.get("total") or {}).items()},
               **{k: v for k, v in _flat(rec.get("results") or {}).items()},
               **{k: row[k] for k in ("edges", "faithfulness")}}
    for k, v in numbers.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            client.log_metric(rid, k, float(v))
    client.log_artifact(rid, str(record))
    for name in rec.get("outputs") or []:
        path = record.parent / name
        if path.is_file():
            client.log_artifact(rid, str(path))
    client.set_terminated(rid, "FINISHED" if rec.get("outcome") == "finished" else "FAILED")
    log.info("logged %s to MLflow store %s as run %s", record, store, rid)
    return rid
