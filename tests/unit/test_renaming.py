"""JupyterHub 6's rename of a stopped named server, on disk: the workspace and its audit trail
move; anything still in LXD (a kept container) refuses it, naming why; an existing target too."""

import asyncio
import json

import pytest
import spawnerstub

from tf_lxd_spawner.errors import SpawnError
from tf_lxd_spawner.lifecycle.record import (
    Phase,
    ServerState,
    read_record,
    write_record,
)


def _workspace(tmp_path, server, record: ServerState):
    sp = spawnerstub.make_spawner(tmp_path / "state", "ann", server)
    ws = sp.workspace_dir()
    ws.path.mkdir(parents=True)
    write_record(ws.path, record)
    (ws.path / "audit.jsonl").write_text(json.dumps({"operation": "start", "outcome": "ok"}) + "\n")
    return sp, ws.path


def test_a_stopped_server_moves_with_its_audit_trail(tmp_path):
    sp, old = _workspace(tmp_path, "old", ServerState(workspace="", volume="/v/home-ann-old"))
    asyncio.run(sp.rename("old", "new"))
    new = old.parent / "new"
    assert not old.exists() and new.is_dir()
    ops = [json.loads(line) for line in (new / "audit.jsonl").read_text().splitlines()]
    assert [(o["operation"], o.get("from"), o.get("to")) for o in ops] == [("start", None, None),
                                                                         ("rename", "old", "new")]
    moved = read_record(new)
    assert moved.workspace == str(new) and moved.volume == "/v/home-ann-old"  # the volume stays its own


def test_a_kept_container_refuses_the_rename(tmp_path):
    kept = ServerState(phase=Phase.KEPT, instance="jupyter-ann-old", keeps_files=True)
    sp, old = _workspace(tmp_path, "old", kept)
    with pytest.raises(SpawnError, match="its kept container jupyter-ann-old still exists") as e:
        asyncio.run(sp.rename("old", "new"))
    assert e.value.status_code == 409
    assert old.is_dir() and not (old.parent / "new").exists()


def test_an_existing_workspace_of_the_new_name_refuses_it(tmp_path):
    sp, old = _workspace(tmp_path, "old", ServerState())
    (old.parent / "new").mkdir()
    with pytest.raises(SpawnError, match="already exists"):
        asyncio.run(sp.rename("old", "new"))
    assert old.is_dir()


def test_a_server_that_never_started_renames_without_a_trace(tmp_path):
    sp = spawnerstub.make_spawner(tmp_path / "state", "ann", "old")
    asyncio.run(sp.rename("old", "new"))
    assert not (tmp_path / "state").exists()
