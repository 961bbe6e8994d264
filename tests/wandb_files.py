"""Reading W&B offline run files back in tests (wandb >= 0.19 ships no reader for its .wandb format)."""

from __future__ import annotations

from pathlib import Path


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's .wandb file (W&B's header, then LevelDB-log framed records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending, out, block = 7, b"", [], 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        n, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind == 2:  # FIRST
            pending = chunk
        elif kind == 3:  # MIDDLE
            pending += chunk
        elif kind in (1, 4):  # FULL, LAST
            rec = pb.Record()
            rec.ParseFromString(pending + chunk if kind == 4 else chunk)
            out.append(rec)
            pending = b""
    return out


def read_run(run_dir: Path) -> dict:
    """display name, group, job type, tags, config keys and history keys of one offline run."""
    records = wandb_records(next(run_dir.glob("run-*.wandb")))
    kinds = [(r.WhichOneof("record_type"), r) for r in records]
    run = next(r.run for k, r in kinds if k == "run")
    config = {i.key for i in run.config.update} | {i.key for k, r in kinds if k == "config" for i in r.config.update}
    history = {i.key or i.nested_key[0] for k, r in kinds if k == "history" for i in r.history.item}
    return {"name": run.display_name, "group": run.run_group, "job_type": run.job_type, "tags": list(run.tags),
            "config": config, "history": history}
