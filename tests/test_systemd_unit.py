"""The systemd unit: its directives, `systemd-analyze verify` (silent) and `security` (≤ 1.5).

The systemd-analyze checks run when the tool is installed and are skipped otherwise, unless
SYNCD_REQUIRE_TOOLS=1 makes a missing tool a failure (CI). MemoryDenyWriteExecute= is checked for
real: a child Python process turns on the kernel's equivalent (prctl PR_SET_MDWE, Linux ≥ 6.3)
and then runs syncd's whole stack.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "syncd.service"
ENV_EXAMPLE = REPO / "systemd" / "syncd.env.example"
DOC = REPO / "docs" / "systemd.md"
CHECK = REPO / ".ci" / "check-systemd"
REQUIRE_TOOLS = os.environ.get("SYNCD_REQUIRE_TOOLS") == "1"
MAX_EXPOSURE = 1.5

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections → key → every value in order (systemd allows repeated keys)."""
    unit: Unit = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=value line: {raw!r}"
        unit[section][key.strip()].append(value.strip())
    return unit


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, f"[{section}] {key}= given {len(values)} times"
    return values[0]


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool:
        return tool
    msg = "systemd-analyze is not installed (Debian package systemd)"
    if REQUIRE_TOOLS:
        pytest.fail(f"{msg}; SYNCD_REQUIRE_TOOLS=1 makes this a failure", pytrace=False)
    pytest.skip(msg)


# --------------------------------------------------------------------------- directives


@pytest.mark.parametrize(
    ("section", "key", "expected"),
    [
        ("Service", "Type", "notify"),
        ("Service", "NotifyAccess", "main"),
        ("Service", "ExecStart", "/usr/local/bin/syncd -c /etc/syncd/syncd.yaml run"),
        ("Service", "ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Service", "WatchdogSec", "60"),
        ("Service", "Restart", "on-failure"),
        ("Service", "RestartPreventExitStatus", "2"),
        ("Service", "TimeoutStopSec", "90"),
        ("Service", "DynamicUser", "yes"),
        ("Service", "StateDirectory", "syncd"),
        ("Service", "ConfigurationDirectory", "syncd"),
        ("Service", "EnvironmentFile", "-/etc/syncd/syncd.env"),
        ("Service", "UMask", "0077"),
        ("Service", "ProtectSystem", "strict"),
        ("Service", "ProtectHome", "yes"),
        ("Service", "PrivateTmp", "yes"),
        ("Service", "PrivateDevices", "yes"),
        ("Service", "NoNewPrivileges", "yes"),
        ("Service", "CapabilityBoundingSet", ""),
        ("Service", "RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("Service", "SystemCallArchitectures", "native"),
        ("Service", "MemoryDenyWriteExecute", "yes"),
        ("Service", "LockPersonality", "yes"),
        ("Service", "RestrictRealtime", "yes"),
        ("Service", "RestrictNamespaces", "yes"),
        ("Service", "ProtectKernelTunables", "yes"),
        ("Service", "ProtectKernelModules", "yes"),
        ("Service", "ProtectKernelLogs", "yes"),
        ("Service", "ProtectControlGroups", "yes"),
        ("Service", "ProtectClock", "yes"),
        ("Service", "ProtectHostname", "yes"),
        ("Service", "ProtectProc", "invisible"),
        ("Service", "ProcSubset", "pid"),
        ("Install", "WantedBy", "multi-user.target"),
    ],
)
def test_directive(unit: Unit, section: str, key: str, expected: str) -> None:
    assert one(unit, section, key) == expected


def test_start_limits_live_in_unit_section(unit: Unit) -> None:
    assert one(unit, "Unit", "StartLimitIntervalSec")
    assert int(one(unit, "Unit", "StartLimitBurst")) >= 1
    assert "StartLimitIntervalSec" not in unit["Service"]
    assert one(unit, "Service", "RestartSec")


def test_started_after_the_network_and_the_clock(unit: Unit) -> None:
    """Change entries are stamped with the system clock and the retention's cut-off comes from it: a
    server whose RTC lost its time must not run syncd before NTP has set the clock."""
    wants = " ".join(unit["Unit"]["Wants"]).split()
    after = " ".join(unit["Unit"]["After"]).split()
    for target in ("network-online.target", "time-sync.target"):
        assert target in wants and target in after, target


def test_system_call_filter(unit: Unit) -> None:
    assert unit["Service"]["SystemCallFilter"][0] == "@system-service"
    assert all(v.startswith("~") for v in unit["Service"]["SystemCallFilter"][1:])


def test_credentials_and_no_ip_allow_list(unit: Unit) -> None:
    creds = dict(v.split(":", 1) for v in unit["Service"]["LoadCredential"])
    assert creds["gateway_app_secret"] == "/etc/syncd/credentials/gateway_app_secret"
    assert creds["db_password"] == "/etc/syncd/credentials/db_password"
    # gateways are remote and move: an address allow list does not belong in the shipped unit
    assert "IPAddressDeny" not in unit["Service"]
    assert "IPAddressAllow" not in unit["Service"]
    assert "PrivateNetwork" not in unit["Service"]


def test_comments_are_bilingual() -> None:
    comments = [line for line in UNIT.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    assert any(re.search(r"[\u4e00-\u9fff]", c) for c in comments)
    assert any("IPAddressDeny" in c for c in comments), "explain why there is no IP allow list"


def test_env_example_holds_settings_not_secrets() -> None:
    keys = []
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, _ = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"not a KEY=value line: {line!r}"
        keys.append(key)
    assert keys, "the example sets nothing"
    assert not [k for k in keys if re.search(r"PASS|SECRET|TOKEN|CREDENTIAL", k)]


def test_docs_cover_the_unit(unit: Unit) -> None:
    doc = DOC.read_text(encoding="utf-8")
    for value in unit["Service"]["LoadCredential"]:
        name, path = value.split(":", 1)
        assert name in doc and path in doc
    for needle in ("systemctl reload syncd", "journalctl -u syncd -o cat", "/var/lib/syncd", "/healthz",
                   "/metrics", "syncd check", "LoadCredential", "time-sync.target", "chrony-wait.service",
                   "systemd-time-wait-sync.service"):
        assert needle in doc, needle


# --------------------------------------------------------------------------- systemd-analyze


def verify_copy(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` on a copy whose ExecStart program exists (see .ci/check-systemd)."""
    stub = tmp_path / "bin" / "syncd"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copy = tmp_path / "syncd.service"
    copy.write_text(text.replace("\nExecStart=/usr/local/bin/syncd ", f"\nExecStart={stub} ", 1))
    return subprocess.run([systemd_analyze(), "verify", str(copy)], capture_output=True, text=True,
                          timeout=60, check=False)


def exposure(unit_path: Path) -> float:
    res = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(unit_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    match = re.search(r"Overall exposure level for syncd\.service: (\d+(?:\.\d+)?)", res.stdout)
    assert match, res.stdout + res.stderr
    return float(match[1])


def test_verify_prints_nothing(tmp_path: Path) -> None:
    res = verify_copy(tmp_path, UNIT.read_text(encoding="utf-8"))
    assert (res.returncode, res.stdout + res.stderr) == (0, "")


def test_verify_is_not_silent_on_a_typo(tmp_path: Path) -> None:
    # systemd-analyze verify exits 0 here: only its output tells (hence "fail on any output")
    text = UNIT.read_text(encoding="utf-8").replace("LockPersonality=yes", "LockPersonalty=yes")
    res = verify_copy(tmp_path, text)
    assert "Unknown key 'LockPersonalty'" in res.stdout + res.stderr


def test_exposure_level(tmp_path: Path) -> None:
    score = exposure(UNIT)
    assert score <= MAX_EXPOSURE


def test_check_systemd_script_passes() -> None:
    systemd_analyze()
    res = subprocess.run([str(CHECK)], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr == ""
    assert "verify systemd/syncd.service printed nothing" in res.stdout
    match = re.search(r"exposure level (\d+(?:\.\d+)?)", res.stdout)
    assert match and float(match[1]) <= MAX_EXPOSURE


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("LockPersonality=yes", "LockPersonalty=yes"), "Unknown key 'LockPersonalty'"),
        (("WatchdogSec=60", "WatchdogSec=sixty"), "Failed to parse sec value"),
        (("ExecStart=/usr/local/bin/syncd ", "ExecStart=/opt/syncd/bin/syncd "), "expected exactly one"),
    ],
)
def test_check_systemd_script_fails_on_bad_units(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    systemd_analyze()
    bad = tmp_path / "syncd.service"
    text = UNIT.read_text(encoding="utf-8")
    assert change[0] in text
    bad.write_text(text.replace(change[0], change[1]))
    res = subprocess.run([str(CHECK), str(bad)], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 1
    assert message in res.stderr
    assert str(tmp_path / "bin") not in res.stderr  # reports the real program, not the stub


def test_check_systemd_script_fails_on_weak_sandboxing(tmp_path: Path) -> None:
    systemd_analyze()
    weak = tmp_path / "syncd.service"
    drop = ("PrivateUsers", "PrivateMounts", "ProtectProc", "ProcSubset", "CapabilityBoundingSet",
            "PrivateDevices", "SystemCallFilter")
    lines = [ln for ln in UNIT.read_text(encoding="utf-8").splitlines() if ln.partition("=")[0] not in drop]
    weak.write_text("\n".join(lines) + "\n")
    res = subprocess.run([str(CHECK), str(weak)], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 1
    assert re.search(r"exposure level \d+(\.\d+)? is over 1\.5", res.stderr)


# --------------------------------------------------------------------------- MemoryDenyWriteExecute

_MDWE_PROBE = r"""
import ctypes, mmap, os, sys, tempfile
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    print("unsupported:", os.strerror(ctypes.get_errno()))
    sys.exit(3)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("W+X mapping was allowed: the probe is not effective")
except OSError:
    pass

import ssl, hashlib, json
import orjson, pydantic, ruamel.yaml, structlog, apscheduler.schedulers.background, requests
import sqlalchemy as sa, psycopg, pymysql
import syncd.cli, syncd.runner
from syncd.metrics import Metrics
from syncd.daemon.http import HealthServer

ssl.create_default_context()
hashlib.sha256(b"x").hexdigest()
orjson.loads(orjson.dumps({"姓名": "𠮷"}))
ruamel.yaml.YAML(typ="rt").load("a: 1\n")
with tempfile.TemporaryDirectory() as d:
    engine = sa.create_engine(f"sqlite:///{d}/t.db")
    with engine.begin() as conn:
        conn.execute(sa.text("create table t (k text primary key, v text)"))
        conn.execute(sa.text("insert into t values (:k, :v)"), [{"k": str(i), "v": "x"} for i in range(100)])
        assert conn.execute(sa.text("select count(*) from t")).scalar() == 100
    engine.dispose()
m = Metrics()
with HealthServer(m, lambda: (True, {}), port=0) as srv:
    assert requests.get(srv.url + "/metrics", timeout=5).status_code == 200
for url in ("postgresql+psycopg://postgres@127.0.0.1:5432/test", "mysql+pymysql://root@127.0.0.1:3306/test"):
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except sa.exc.OperationalError:
        print("database not reachable:", url.split("+")[0])
    engine.dispose()
print("ok")
"""


def test_python_stack_runs_with_memory_deny_write_execute() -> None:
    res = subprocess.run([sys.executable, "-c", _MDWE_PROBE], capture_output=True, text=True, timeout=60,
                         check=False, cwd=REPO)
    if res.returncode == 3:
        pytest.skip(f"kernel has no PR_SET_MDWE (Linux ≥ 6.3): {res.stdout.strip()}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().endswith("ok")
