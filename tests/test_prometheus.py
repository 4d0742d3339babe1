"""The ``prometheus`` metric sink: its files, parsed back with prometheus_client's own parser
(and checked with promtool, which scripts/setup installs), atomic writes, last success kept,
purge."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nsbackup_plugins.prometheus import (
    CHECK_FAMILIES,
    RUN_FAMILIES,
    PrometheusSink,
    label_value,
)
from prometheus_client.parser import text_string_to_metric_families

from nsbackup.api import DEFAULT_METRICS_DIR, Settings
from nsbackup.errors import NsbackupError
from nsbackup.plugins import PluginHost
from nsbackup.runs.report import CheckReport, ModuleResult, RepositoryCheck, RunReport
from tests.servers import REPO_ROOT, missing

NS8_HELP = "# HELP node_backup_status Status of the backup (0 = failure, 1 = success)"
NS8_TYPE = "# TYPE node_backup_status gauge"
PROMTOOL_PATHS = (REPO_ROOT / ".tools" / "prometheus" / "usr" / "bin" / "promtool",)


def module(mid: str, ok: bool = True, code: int | None = 0, **fields: Any) -> ModuleResult:
    return ModuleResult(
        module_id=mid,
        module_uuid=f"uuid-{mid}",
        repository_path=f"{mid.rstrip('0123456789')}/uuid-{mid}",
        success=ok,
        start=fields.pop("start", 1000),
        end=fields.pop("end", 1010),
        failure=None if ok else fields.pop("failure", "fatal"),
        restic_exit_code=code,
        **fields,
    )


def run_report(
    bid: int = 7,
    name: str = "Nightly",
    modules: tuple[ModuleResult, ...] = (module("mail1"),),
    *,
    start: float = 1000.0,
    end: float = 1042.5,
    outcome: str | None = None,
) -> RunReport:
    if outcome is None:
        ok = sum(m.success for m in modules)
        outcome = "success" if ok == len(modules) else ("partial" if ok else "failure")
    return RunReport(
        backup_id=bid,
        name=name,
        node_id="1",
        destination="dest-uuid",
        start=start,
        end=end,
        outcome=outcome,
        modules=modules,
    )


def check_report(
    bid: int = 7, name: str = "Nightly", oks: tuple[bool, ...] = (True,)
) -> CheckReport:
    return CheckReport(
        backup_id=bid,
        name=name,
        node_id="1",
        destination="dest-uuid",
        start=5000.0,
        end=5012.0,
        repositories=tuple(
            RepositoryCheck(
                module_id=f"app{n}",
                module_uuid=f"uuid-{n}",
                repository_path=f"app/uuid-{n}",
                ok=ok,
                restic_exit_code=0 if ok else 1,
            )
            for n, ok in enumerate(oks, 1)
        ),
    )


def families(path: Path) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(path.read_text())}


Key = tuple[str, frozenset[tuple[str, str]]]


def key(name: str, bid: str = "7", **labels: str) -> Key:
    return (name, frozenset({"id": bid, "name": "Nightly", **labels}.items()))


def samples(path: Path) -> dict[Key, float]:
    """(name, labels) -> value for every sample of the file."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(path.read_text())
        for s in f.samples
    }


def value(path: Path, name: str, **labels: str) -> float:
    found = [
        s.value
        for f in text_string_to_metric_families(path.read_text())
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


# -- plugin wiring --------------------------------------------------------------------------------


def test_the_sink_is_a_built_in_plugin_registered_through_the_hook(host: PluginHost) -> None:
    sink = host.metric_sinks["prometheus"]
    assert isinstance(sink, PrometheusSink)
    assert host.owner("metric_sink", "prometheus") == "prometheus"
    info = host.plugins["prometheus"]
    assert (info.dist, info.hooks) == ("nsbackup", ("nsbackup_register_metric_sinks",))
    assert all(callable(getattr(sink, m)) for m in ("configure", "record_check", "purge"))


def test_configure_takes_the_metrics_dir_of_the_settings(tmp_path: Path) -> None:
    sink = PrometheusSink()
    assert sink.directory == Path(DEFAULT_METRICS_DIR)
    assert DEFAULT_METRICS_DIR == "/var/lib/nethserver/node/state/node_exporter"
    sink.configure(Settings.from_env({"NSBACKUP_METRICS_DIR": str(tmp_path / "m")}))
    assert sink.directory == tmp_path / "m"
    sink.record(run_report())
    assert os.listdir(tmp_path / "m") == ["backup7.prom"]  # created on demand


# -- the run file ---------------------------------------------------------------------------------


def test_the_run_file_holds_ns8s_gauge_exactly_then_nsbackups(tmp_path: Path) -> None:
    sink = PrometheusSink(tmp_path)
    report = run_report(
        modules=(
            module("mail1", added_bytes=1500, start=1001, end=1021),
            module("nextcloud1", ok=False, code=12, failure="wrong_password", added_bytes=0),
            module("samba1", ok=False, code=None, failure="runner"),
        )
    )
    sink.record(report)
    path = tmp_path / "backup7.prom"
    assert path.read_text().splitlines()[:3] == [
        NS8_HELP,
        NS8_TYPE,
        'node_backup_status{id="7",name="Nightly"} 0.0',
    ]
    found = families(path)
    assert list(found) == [f.name for f in RUN_FAMILIES]
    assert all(f.type == "gauge" for f in found.values())
    assert {n: f.documentation for n, f in found.items()} == {f.name: f.help for f in RUN_FAMILIES}
    assert samples(path) == {
        key("node_backup_status"): 0.0,
        key("nsbackup_backup_last_success_timestamp_seconds"): 0.0,  # never succeeded
        key("nsbackup_backup_last_run_timestamp_seconds"): 1042.5,
        key("nsbackup_backup_duration_seconds"): 42.5,
        key("nsbackup_backup_added_bytes"): 1500.0,
        key("nsbackup_backup_modules", state="ok"): 1.0,
        key("nsbackup_backup_modules", state="failed"): 2.0,
        key("nsbackup_backup_module_status", module="mail1"): 1.0,
        key("nsbackup_backup_module_status", module="nextcloud1"): 0.0,
        key("nsbackup_backup_module_status", module="samba1"): 0.0,
        key("nsbackup_backup_module_restic_exit_code", module="mail1"): 0.0,
        key("nsbackup_backup_module_restic_exit_code", module="nextcloud1"): 12.0,
        # samba1: restic never ran, no sample
        key("nsbackup_backup_module_duration_seconds", module="mail1"): 20.0,
        key("nsbackup_backup_module_duration_seconds", module="nextcloud1"): 10.0,
        key("nsbackup_backup_module_duration_seconds", module="samba1"): 10.0,
    }
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_a_successful_run_sets_status_1_and_last_success_to_its_end(tmp_path: Path) -> None:
    PrometheusSink(tmp_path).record(run_report(end=1_733_000_000.25))
    path = tmp_path / "backup7.prom"
    assert path.read_text().splitlines()[2] == 'node_backup_status{id="7",name="Nightly"} 1.0'
    assert value(path, "nsbackup_backup_last_success_timestamp_seconds") == 1_733_000_000.25
    assert value(path, "nsbackup_backup_last_run_timestamp_seconds") == 1_733_000_000.25


def _shape(path: Path, table: tuple[Any, ...]) -> dict[str, tuple[str, str, set[tuple[str, ...]]]]:
    """Per family: HELP, TYPE and the label-name tuples of its samples."""
    shape = {}
    for f in text_string_to_metric_families(path.read_text()):
        shape[f.name] = (f.documentation, f.type, {tuple(sorted(s.labels)) for s in f.samples})
    assert list(shape) == [f.name for f in table]
    return shape


def test_help_type_and_label_sets_are_the_same_in_every_file(tmp_path: Path) -> None:
    sink = PrometheusSink(tmp_path)
    sink.record(run_report(3, "Daily", (module("mail1"), module("dokuwiki1"))))
    sink.record(run_report(12, "Weekly", (module("mail2", ok=False, code=3),)))
    sink.record_check(check_report(3, "Daily", (True, True)))
    sink.record_check(check_report(12, "Weekly", (False, True)))
    for table, (a, b) in (
        (RUN_FAMILIES, ("backup3.prom", "backup12.prom")),
        (CHECK_FAMILIES, ("backup3-check.prom", "backup12-check.prom")),
    ):
        first, second = _shape(tmp_path / a, table), _shape(tmp_path / b, table)
        assert first == second
        for family in table:
            expected = tuple(sorted(("id", "name", *family.labels)))
            assert first[family.name][2] == {expected}, family.name


def test_label_values_are_escaped_by_prometheus_client(tmp_path: Path) -> None:
    name = 'Say "hi" C:\\backups\\new\nsecond line\rthird\x00end'
    sink = PrometheusSink(tmp_path)
    sink.record(run_report(name=name))
    sink.record_check(check_report(name=name))
    for file in ("backup7.prom", "backup7-check.prom"):
        raw = (tmp_path / file).read_bytes()
        assert b"\r" not in raw and b"\x00" not in raw
        assert b'{id="7",name="Say \\"hi\\" C:\\\\backups\\\\new\\nsecond line third end"}' in raw
        names = {s.labels["name"] for f in families(tmp_path / file).values() for s in f.samples}
        assert names == {'Say "hi" C:\\backups\\new\nsecond line third end'}
    first = (tmp_path / "backup7.prom").read_text().splitlines()
    assert first[2].startswith("node_backup_status{") and first[3].startswith("# HELP")


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=60))
def test_any_name_parses_back_and_keeps_control_characters_out(
    tmp_path_factory: Any, name: str
) -> None:
    directory = tmp_path_factory.mktemp("names")
    PrometheusSink(directory).record(run_report(name=name))
    raw = (directory / "backup7.prom").read_bytes()
    assert not re.search(rb"[\x00-\x09\x0b-\x1f\x7f]", raw)
    assert {
        s.labels["name"] for f in families(directory / "backup7.prom").values() for s in f.samples
    } == {label_value(name)}


# -- last success ---------------------------------------------------------------------------------


def test_last_success_survives_failed_runs(tmp_path: Path) -> None:
    sink = PrometheusSink(tmp_path)
    path = tmp_path / "backup7.prom"
    last = "nsbackup_backup_last_success_timestamp_seconds"
    sink.record(run_report(end=1_700_000_100.5))
    sink.record(run_report(modules=(module("mail1", ok=False, code=1),), end=1_700_090_000))
    assert value(path, "node_backup_status") == 0
    assert value(path, last) == 1_700_000_100.5
    assert value(path, "nsbackup_backup_last_run_timestamp_seconds") == 1_700_090_000
    partial = (module("mail1"), module("mail2", ok=False, code=11))
    sink.record(run_report(modules=partial, end=1_700_180_000))
    assert value(path, last) == 1_700_000_100.5  # partial is not a success
    sink.record(run_report(end=1_700_270_000))
    assert (value(path, "node_backup_status"), value(path, last)) == (1, 1_700_270_000)


def test_last_success_of_a_file_ns8_wrote_is_its_modification_time(tmp_path: Path) -> None:
    path = tmp_path / "backup7.prom"
    path.write_text(f'{NS8_HELP}\n{NS8_TYPE}\nnode_backup_status{{id="7",name="Nightly"}} 1\n')
    os.utime(path, (1_690_000_000, 1_690_000_000))
    failed = run_report(modules=(module("mail1", ok=False, code=1),), end=1_700_000_000)
    PrometheusSink(tmp_path).record(failed)
    assert value(path, "nsbackup_backup_last_success_timestamp_seconds") == 1_690_000_000
    path.write_text(f'{NS8_HELP}\n{NS8_TYPE}\nnode_backup_status{{id="7",name="Nightly"}} 0\n')
    PrometheusSink(tmp_path).record(failed)
    assert value(path, "nsbackup_backup_last_success_timestamp_seconds") == 0


@pytest.mark.parametrize(
    "content",
    [
        "garbage {{{ not a metric\n",
        "\x00\xff\n",
        "nsbackup_backup_last_success_timestamp_seconds NaN\n",
    ],
)
def test_a_damaged_previous_file_is_replaced(tmp_path: Path, content: str) -> None:
    path = tmp_path / "backup7.prom"
    path.write_text(content, errors="surrogateescape")
    failed = run_report(modules=(module("mail1", ok=False, code=1),))
    PrometheusSink(tmp_path).record(failed)
    assert value(path, "nsbackup_backup_last_success_timestamp_seconds") == 0
    assert value(path, "node_backup_status") == 0


# -- outcomes without a verdict ------------------------------------------------------------------


def test_disabled_removes_both_files_and_no_local_modules_the_run_file(tmp_path: Path) -> None:
    sink = PrometheusSink(tmp_path)
    (tmp_path / "node_cpu.prom").write_text("x 1\n")
    for outcome, left in (
        ("no_local_modules", {"backup7-check.prom", "node_cpu.prom"}),
        ("disabled", {"node_cpu.prom"}),
    ):
        sink.record(run_report())
        sink.record_check(check_report())
        sink.record(run_report(modules=(), outcome=outcome))
        assert set(os.listdir(tmp_path)) == left, outcome
    sink.record(run_report(modules=(), outcome="no_local_modules"))  # nothing to remove
    assert set(os.listdir(tmp_path)) == {"node_cpu.prom"}


# -- the check file -------------------------------------------------------------------------------


def test_the_check_file(tmp_path: Path) -> None:
    sink = PrometheusSink(tmp_path)
    sink.record_check(check_report(oks=(True, False, True)))
    path = tmp_path / "backup7-check.prom"
    assert list(families(path)) == [f.name for f in CHECK_FAMILIES]
    assert samples(path) == {
        key("nsbackup_backup_last_check_timestamp_seconds"): 5012.0,
        key("nsbackup_backup_check_ok"): 0.0,
        key("nsbackup_backup_check_repositories", state="ok"): 2.0,
        key("nsbackup_backup_check_repositories", state="failed"): 1.0,
    }
    sink.record(run_report())  # a run leaves the check file alone, and the other way round
    sink.record_check(check_report(oks=(True,)))
    assert value(path, "nsbackup_backup_check_ok") == 1
    assert value(tmp_path / "backup7.prom", "node_backup_status") == 1
    assert sorted(os.listdir(tmp_path)) == ["backup7-check.prom", "backup7.prom"]


# -- atomic writes --------------------------------------------------------------------------------


def test_readers_only_ever_see_a_whole_file_and_no_temporary_file_stays(tmp_path: Path) -> None:
    sink = PrometheusSink(tmp_path)
    path = tmp_path / "backup7.prom"
    big = tuple(module(f"app{n}", added_bytes=n) for n in range(200))  # ~50 KB per file
    small = (module("mail1"),)
    sink.record(run_report(modules=big))
    sizes = {len(big), len(small)}
    writes = 40
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for n in range(writes):
                sink.record(run_report(modules=small if n % 2 else big, end=2000.0 + n))
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    seen_names: set[str] = set()
    seen_sizes: set[int] = set()
    while not done.is_set() or reads < 20:
        seen_names.update(os.listdir(tmp_path))
        found = families(path)  # raises on a torn file
        statuses = found["nsbackup_backup_module_status"].samples
        assert len(statuses) in sizes
        assert len(found["nsbackup_backup_module_duration_seconds"].samples) == len(statuses)
        seen_sizes.add(len(statuses))
        reads += 1
    thread.join(timeout=60)
    assert not errors, errors
    assert os.listdir(tmp_path) == ["backup7.prom"]
    # temporary files, when one was caught, are hidden and never *.prom (node_exporter skips them)
    temporary = seen_names - {"backup7.prom"}
    assert all(n.startswith(".backup7.prom.") and n.endswith(".tmp") for n in temporary), temporary
    assert value(path, "nsbackup_backup_last_run_timestamp_seconds") == 2000.0 + writes - 1
    assert reads >= 20 and seen_sizes <= sizes


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "backup7.prom").mkdir()  # rename onto a directory fails after the write
    (tmp_path / "backup7.prom" / "keep").write_text("")
    with pytest.raises(NsbackupError, match=r"cannot write .*backup7\.prom"):
        PrometheusSink(tmp_path).record(run_report())
    assert os.listdir(tmp_path) == ["backup7.prom"]


def test_an_unusable_metrics_dir_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    sink = PrometheusSink(tmp_path / "file" / "metrics")
    with pytest.raises(NsbackupError, match=r"cannot write .*/file/metrics/backup7\.prom"):
        sink.record(run_report())
    with pytest.raises(NsbackupError, match=r"backup7-check\.prom"):
        sink.record_check(check_report())


# -- purge ----------------------------------------------------------------------------------------


def test_purge_removes_only_files_of_schedules_that_are_not_enabled(tmp_path: Path) -> None:
    sink = PrometheusSink(tmp_path)
    for bid in (1, 2, 3):
        sink.record(run_report(bid))
        sink.record_check(check_report(bid))
    others = {
        "backupX.prom": "x 1\n",
        "backup.prom": "x 1\n",
        "backup-check.prom": "x 1\n",
        "backup2.prom.bak": "x 1\n",
        "backup2-other.prom": "x 1\n",
        "backups2.prom": "x 1\n",
        "node_cpu.prom": "x 1\n",
        "smartmon.prom": "x 1\n",
    }
    for name, text in others.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "backup9.prom").mkdir()
    removed = sink.purge([1, 3])
    assert removed == ["backup2-check.prom", "backup2.prom"]
    expected = {"backup1.prom", "backup1-check.prom", "backup3.prom", "backup3-check.prom"}
    assert set(os.listdir(tmp_path)) == expected | set(others) | {"backup9.prom"}
    assert sink.purge([]) == sorted(expected)
    assert set(os.listdir(tmp_path)) == set(others) | {"backup9.prom"}
    assert all((tmp_path / n).read_text() == t for n, t in others.items())


def test_purge_of_a_missing_directory_does_nothing(tmp_path: Path) -> None:
    assert PrometheusSink(tmp_path / "absent").purge([1]) == []
    assert not (tmp_path / "absent").exists()


# -- promtool (Prometheus' own tool; scripts/setup installs it) ---------------------------------


def promtool() -> str:
    found = shutil.which("promtool") or next(
        (str(p) for p in PROMTOOL_PATHS if os.access(p, os.X_OK)), None
    )
    if found is None:
        missing("promtool")  # fails, naming scripts/setup: never a silent skip
    return found


def test_promtool_accepts_the_files(tmp_path: Path) -> None:
    tool = promtool()
    sink = PrometheusSink(tmp_path)
    sink.record(
        run_report(
            name='odd "name" \\ with\nnewline',
            modules=(module("a1"), module("b1", ok=False, code=3)),
        )
    )
    sink.record_check(check_report(oks=(True, False)))
    for file in ("backup7.prom", "backup7-check.prom"):
        data = (tmp_path / file).read_bytes()
        done = subprocess.run(
            [tool, "check", "metrics"], input=data, capture_output=True, timeout=60, check=False
        )
        assert done.returncode == 0, (file, done.stdout, done.stderr)


# -- docs/operations.md "Metrics" ----------------------------------------------------------------

OPERATIONS = REPO_ROOT / "docs" / "operations.md"


def metrics_section() -> str:
    text = OPERATIONS.read_text()
    start = text.index("\n## Metrics\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def alert_rules() -> str:
    blocks = re.findall(r"```yaml\n(.*?)```", metrics_section(), flags=re.S)
    assert len(blocks) == 1, "the Metrics section holds one YAML block: the alert rules"
    return str(blocks[0])


def test_the_docs_name_every_metric_and_the_rules_use_only_real_ones() -> None:
    section = metrics_section()
    for family in (*RUN_FAMILIES, *CHECK_FAMILIES):
        assert f"`{family.name}`" in section, family.name
    exported = {f.name for f in (*RUN_FAMILIES, *CHECK_FAMILIES)}
    used = set(re.findall(r"\b(?:node_backup_status|nsbackup_[a-z_]+)\b", alert_rules()))
    assert used and used <= exported, used - exported
    for alert in ("BackupFailed", "BackupNoRecentSuccess", "BackupTooLong"):
        assert f"alert: {alert}\n" in alert_rules()


def _alert(name: str, bid: str, sched: str, severity: str, summary: str) -> dict[str, Any]:
    return {
        "exp_labels": {
            "alertname": name,
            "id": bid,
            "name": sched,
            "node": "1",
            "severity": severity,
            "service": "backup",
        },
        "exp_annotations": {"summary": summary},
    }


def test_promtool_checks_and_unit_tests_the_documented_alert_rules(tmp_path: Path) -> None:
    """The rules of docs/operations.md, evaluated by Prometheus' own engine on series shaped
    like the sink's files (plus the ``node`` label NS8's Prometheus gives each node)."""
    tool = promtool()
    rules = tmp_path / "rules.yml"
    rules.write_text(alert_rules())
    checked = subprocess.run(
        [tool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    hour, day = 3600, 86400

    def series(metric: str, bid: str, sched: str, values: str, **extra: str) -> dict[str, str]:
        labels = {"id": bid, "name": sched, "node": "1", **extra}
        inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return {"series": f"{metric}{{{inner}}}", "values": values}

    # Input samples every hour for 60 hours. Backup 1 (daily, the default interval) succeeded at
    # 1h, then failed from 2h; backup 3 (weekly, per the recording rule) succeeded at 1h only.
    test = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1h",
        "tests": [
            {
                "interval": "1h",
                "input_series": [
                    series("node_backup_status", "1", "Daily", "1 1 0x58"),
                    series("node_backup_status", "3", "Weekly", "1 1x59"),
                    series(
                        "nsbackup_backup_last_success_timestamp_seconds", "1", "Daily", f"{hour}x60"
                    ),
                    series(
                        "nsbackup_backup_last_success_timestamp_seconds",
                        "3",
                        "Weekly",
                        f"{hour}x60",
                    ),
                    series("nsbackup_backup_duration_seconds", "1", "Daily", "600x60"),
                    series("nsbackup_backup_duration_seconds", "3", "Weekly", f"{7 * hour}x60"),
                    series("nsbackup_backup_check_ok", "1", "Daily", "1x60"),
                    series("nsbackup_backup_check_ok", "3", "Weekly", "0x60"),
                    series("nsbackup_backup_last_check_timestamp_seconds", "1", "Daily", "0x60"),
                    series(
                        "nsbackup_backup_last_check_timestamp_seconds",
                        "3",
                        "Weekly",
                        f"{hour}x60",
                    ),
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "1h",
                        "alertname": "BackupFailed",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "3h",
                        "alertname": "BackupFailed",
                        "exp_alerts": [
                            _alert(
                                "BackupFailed",
                                "1",
                                "Daily",
                                "critical",
                                "Backup Daily (ID: 1) has failed.",
                            )
                        ],
                    },
                    # 2 days after the last success at 1h: not yet at 48h, at 50h for backup 1
                    {"eval_time": "48h", "alertname": "BackupNoRecentSuccess", "exp_alerts": []},
                    {
                        "eval_time": "50h",
                        "alertname": "BackupNoRecentSuccess",
                        "exp_alerts": [
                            _alert(
                                "BackupNoRecentSuccess",
                                "1",
                                "Daily",
                                "critical",
                                "Backup Daily (ID: 1) has not succeeded for 2d 1h 0m 0s.",
                            )
                        ],
                    },
                    {
                        "eval_time": "5h",
                        "alertname": "BackupTooLong",
                        "exp_alerts": [
                            _alert(
                                "BackupTooLong",
                                "3",
                                "Weekly",
                                "warning",
                                "Backup Weekly (ID: 3) took 7h 0m 0s.",
                            )
                        ],
                    },
                    {
                        "eval_time": "5h",
                        "alertname": "BackupCheckFailed",
                        "exp_alerts": [
                            _alert(
                                "BackupCheckFailed",
                                "3",
                                "Weekly",
                                "critical",
                                "The check of backup Weekly (ID: 3) found problems.",
                            )
                        ],
                    },
                ],
            },
            {
                # Daily samples for 40 days: both backups last succeeded and were last
                # checked on day 1.
                "interval": "1d",
                "input_series": [
                    series(metric, bid, sched, f"{day}x40")
                    for metric in (
                        "nsbackup_backup_last_success_timestamp_seconds",
                        "nsbackup_backup_last_check_timestamp_seconds",
                    )
                    for bid, sched in (("1", "Daily"), ("3", "Weekly"))
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "14d",
                        "alertname": "BackupNoRecentSuccess",
                        "exp_alerts": [
                            _alert(
                                "BackupNoRecentSuccess",
                                "1",
                                "Daily",
                                "critical",
                                "Backup Daily (ID: 1) has not succeeded for 13d 0h 0m 0s.",
                            )
                        ],
                    },
                    {
                        "eval_time": "16d",
                        "alertname": "BackupNoRecentSuccess",
                        "exp_alerts": [
                            _alert(
                                "BackupNoRecentSuccess",
                                bid,
                                sched,
                                "critical",
                                f"Backup {sched} (ID: {bid}) has not succeeded for 15d 0h 0m 0s.",
                            )
                            for bid, sched in (("1", "Daily"), ("3", "Weekly"))
                        ],
                    },
                    {"eval_time": "35d", "alertname": "BackupCheckTooOld", "exp_alerts": []},
                    {
                        "eval_time": "37d",
                        "alertname": "BackupCheckTooOld",
                        "exp_alerts": [
                            _alert(
                                "BackupCheckTooOld",
                                bid,
                                sched,
                                "warning",
                                f"Backup {sched} (ID: {bid}) was last checked 36d 0h 0m 0s ago.",
                            )
                            for bid, sched in (("1", "Daily"), ("3", "Weekly"))
                        ],
                    },
                ],
            },
        ],
    }
    spec = tmp_path / "test.yml"
    spec.write_text(json.dumps(test))  # JSON is YAML
    tested = subprocess.run(
        [tool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
