"""The store's contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from autotune.candidate import Candidate
from autotune.environment import Environment
from autotune.errors import ModelNotFoundError, NotAnAutotuneDatabaseError, SchemaTooNewError, StoreError
from autotune.registry import ResolvedModel
from autotune.store import Store
from autotune.store.migrate import HEAD, REVISIONS, current_revision, script_location
from autotune.store.schema import VERSION_TABLE
from autotune.workload import MemoryLimit, Workload

CAPS = {"architecture": "LlamaForCausalLM", "attn_implementations": ["eager", "sdpa"]}


def resolved(name: str = "org/tiny") -> ResolvedModel:
    return ResolvedModel(name=name, source="hf-cache", path="/cache/snap", revision="abc", config={"model_type": "llama"})


def cpu_env() -> Environment:
    return Environment(gpus=(), versions={"torch": "2.13.0", "transformers": "5.24.0"})


def test_schema_created_on_first_use(store: Store) -> None:
    tables = set(inspect(store.engine).get_table_names())
    assert {
        "autotune_environments",
        "autotune_models",
        "autotune_studies",
        "autotune_trials",
        "autotune_recommendations",
        "autotune_daemon",
        VERSION_TABLE,
    } <= tables
    assert "alembic_version" not in tables  # Optuna's name stays free
    assert current_revision(store.engine) == HEAD


def test_revisions_match_scripts() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", script_location())
    scripts = ScriptDirectory.from_config(config)
    assert scripts.get_current_head() == HEAD
    assert [r.revision for r in reversed(list(scripts.walk_revisions()))] == list(REVISIONS)


def test_models_round_trip_update_and_remove(store: Store) -> None:
    workload = Workload(prompt_tokens=64, new_tokens=8, max_memory=MemoryLimit.parse("12GiB"))
    record, created, changes = store.upsert_model(resolved(), CAPS, workload)
    assert created and not changes and record.workload == workload and record.load_path == "/cache/snap"
    record, created, changes = store.upsert_model(resolved(), CAPS, workload.with_changes(new_tokens=16))
    assert not created and changes == {"new_tokens": (8, 16)}
    assert [m.name for m in store.models()] == ["org/tiny"]

    env_id = store.record_environment(cpu_env())
    assert store.record_environment(cpu_env()) == env_id
    study = store.study_for(record, env_id)
    assert store.study_for(record, env_id).id == study.id
    trial = store.start_trial(study.id, Candidate(placement="cpu"), 4)
    assert trial.status == "running" and trial.number == 1
    done = store.finish_trial(
        trial.id,
        "ok",
        metrics={"throughput_tokens_per_s": 123.5, "peak_memory_bytes": 5 * 2**31},
        effective={"attn": "sdpa"},
        feasible=True,
        objective_value=123.5,
    )
    assert done.metrics["throughput_tokens_per_s"] == 123.5 and done.metrics["peak_memory_bytes"] == 5 * 2**31
    assert store.record_trial(study.id, Candidate(placement="cpu", attn="eager"), 1, "unsupported", reason="no").number == 2

    store.remove_model("org/tiny")
    assert store.models() == []
    with pytest.raises(ModelNotFoundError, match="not registered"):
        store.get_model("org/tiny")
    assert len(store.trials(study_id=study.id)) == 2  # trials stay

    record, created, _ = store.upsert_model(resolved(), CAPS, workload)
    assert created
    counts = store.remove_model("org/tiny", purge=True)
    assert counts == {"studies": 1, "trials": 2, "kept_trials": 0}
    assert store.trials() == []


def test_newer_schema_is_refused_and_untouched(store_url: str) -> None:
    Store.open(store_url).close()
    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
        before = sorted(inspect(engine).get_table_names())
    with pytest.raises(SchemaTooNewError, match="newer autotune .*9999"):
        Store.open(store_url)
    assert sorted(inspect(engine).get_table_names()) == before
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == "9999"
    engine.dispose()


def test_optuna_tables_live_beside_ours(store_url: str) -> None:
    import optuna

    Store.open(store_url).close()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=store_url, study_name="side-by-side")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    with Store.open(store_url) as store:  # our schema check is not fooled by Optuna's alembic_version
        assert current_revision(store.engine) == HEAD
    assert len(optuna.load_study(study_name="side-by-side", storage=store_url).trials) == 2


def test_sqlite_file_is_wal(tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "a.db")) as store:
        with store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def test_not_an_autotune_database(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello, this is not SQLite at all")
    with pytest.raises(NotAnAutotuneDatabaseError, match=f"{junk} is not an autotune database"):
        Store.open(str(junk))
    assert junk.read_text() == "hello, this is not SQLite at all"
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(NotAnAutotuneDatabaseError, match="customers"):
        Store.open(str(other))
    with sqlite3.connect(other) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["customers"]


def test_unwritable_location(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create the database directory"):
        Store.open(str(blocker / "sub" / "autotune.db"))
    with pytest.raises(StoreError, match="is a directory"):
        Store.open(str(tmp_path))
