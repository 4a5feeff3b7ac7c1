"""The operator's and the partner's CLI, on the same store as the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from famprov.cli import main
from famprov.partners.hashing import compute_hash
from support import V1_PATH, Partner, only

FAMPROV = str(Path(sys.executable).with_name("famprov"))


def cli(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input)


def famprov(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FAMPROV, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_partner_add_generates_a_salt_and_prints_it_once(
    env: dict[str, str], server, http: httpx.Client
) -> None:
    added = cli("partner", "add", "Acme MSP")
    assert added.exit_code == 0, added.output
    [salt] = [
        line.removeprefix("salt: ")
        for line in added.output.splitlines()
        if line.startswith("salt: ")
    ]
    assert len(salt) >= 40

    params = {
        "transaction_id": "1",
        "first_name": "Ann",
        "email": "ann@example.com",
        "hash": compute_hash("ann@example.com", salt),
        "partner_name": "Acme MSP",
    }
    assert http.get(V1_PATH, params=params).status_code == 200
    listed = cli("partner", "list")
    assert salt not in listed.output
    assert "Acme MSP" in listed.output


def test_partner_add_with_given_salt_prints_no_salt(env: dict[str, str]) -> None:
    result = cli("partner", "add", "acme", "--salt", "given-salt-0123456789")
    assert result.exit_code == 0, result.output
    assert "given-salt-0123456789" not in result.output


@pytest.mark.parametrize(
    ("salt", "problem"),
    [
        (" padded-salt-0123456789", "white space"),
        ("padded-salt-0123456789 ", "white space"),
        ("short", "16 to 256 characters"),
    ],
)
def test_partner_add_refuses_a_bad_salt(
    env: dict[str, str], salt: str, problem: str
) -> None:
    result = cli("partner", "add", "acme", "--salt", salt)
    assert result.exit_code != 0
    assert problem in result.output
    assert "Traceback" not in result.output
    assert cli("partner", "list", "--json").stdout.strip() == "[]"


def test_salt_file_loses_its_trailing_newline(
    env: dict[str, str], tmp_path: Path, server, http: httpx.Client
) -> None:
    salt_file = tmp_path / "salt.txt"
    salt_file.write_text("file-salt-0123456789abcdef\n")
    assert cli("partner", "add", "acme", "--salt-file", str(salt_file)).exit_code == 0

    params = Partner("acme", "file-salt-0123456789abcdef").params()
    assert http.get(V1_PATH, params=params).status_code == 200


def test_partner_list_json_and_disable(env: dict[str, str], partner: Partner) -> None:
    [listed] = json.loads(cli("partner", "list", "--json").stdout)
    assert listed["name"] == "acme"
    assert listed["enabled"] is True
    assert listed["licenses"] == 0

    assert cli("partner", "disable", "acme").exit_code == 0
    [listed] = json.loads(cli("partner", "list", "--json").stdout)
    assert listed["enabled"] is False


def test_duplicate_partner_is_one_line_error(
    env: dict[str, str], partner: Partner
) -> None:
    result = famprov("partner", "add", "acme", env=env)
    assert result.returncode == 1
    assert result.stderr == "famprov: error: partner 'acme' already exists\n"


def test_license_list_json_shows_what_the_server_wrote(
    env: dict[str, str], partner: Partner, http: httpx.Client
) -> None:
    body = http.get(V1_PATH, params=partner.params()).json()
    result = famprov("license", "list", "--json", env=env)

    assert result.returncode == 0, result.stderr
    [record] = json.loads(result.stdout)
    assert record["order_number"] == body["order_number"]
    assert record["partner_name"] == "acme"
    assert record["transaction_id"] == "0001"
    assert record["email"] == "ann@example.com"
    assert (record["first_name"], record["last_name"]) == ("Ann", "Lee")
    assert record["status"] == "invited"
    assert record["products"] == [
        "family_plan",
        "dark_web_monitoring",
        "file_storage_10gb",
    ]
    assert record["starts_at"] == "2026-03-10T09:30:00+00:00"
    assert record["expires_at"] == "2027-03-10T09:30:00+00:00"


def test_license_list_filters_by_partner(
    env: dict[str, str], partner: Partner, http: httpx.Client
) -> None:
    http.get(V1_PATH, params=partner.params())
    assert (
        cli("partner", "add", "other", "--salt", "other-salt-0123456789").exit_code == 0
    )

    assert (
        len(json.loads(cli("license", "list", "--partner", "acme", "--json").stdout))
        == 1
    )
    assert (
        json.loads(cli("license", "list", "--partner", "other", "--json").stdout) == []
    )
    unknown = cli("license", "list", "--partner", "nobody")
    assert unknown.exit_code == 1
    assert "no partner named 'nobody'" in unknown.output


def test_license_show_and_revoke(
    env: dict[str, str], partner: Partner, http: httpx.Client
) -> None:
    order = http.get(V1_PATH, params=partner.params()).json()["order_number"]

    shown = cli("license", "show", order)
    assert shown.exit_code == 0
    assert "Dark-web monitoring" in shown.output
    assert "invited" in shown.output

    revoked = json.loads(cli("license", "revoke", order, "--json").stdout)
    assert revoked["status"] == "revoked"
    again = http.get(V1_PATH, params=partner.params(transaction_id="0002"))
    assert again.status_code == 200


def test_license_show_unknown_is_one_line_without_traceback(
    env: dict[str, str],
) -> None:
    result = famprov("license", "show", "00000000-0000", env=env)
    assert result.returncode == 1
    assert result.stderr == (
        "famprov: error: no license with order number '00000000-0000'\n"
    )
    # Whatever was typed is echoed no longer than a few order numbers.
    result = famprov("license", "show", "1" * 100_000, env=env)
    assert result.returncode == 1
    assert result.stderr == (
        f"famprov: error: no license with order number '{'1' * 40}'...\n"
    )


def test_bad_setting_is_one_line_naming_it(env: dict[str, str]) -> None:
    result = famprov(
        "license", "list", env={**env, "FAMPROV_DATABASE_URL": "mysql://x/y"}
    )
    assert result.returncode == 2
    assert result.stderr.startswith("famprov: error: setting FAMPROV_DATABASE_URL: ")
    assert len(result.stderr.splitlines()) == 1


def test_provision_prints_order_and_vault_url(
    env: dict[str, str], partner: Partner, server
) -> None:
    args = [
        "provision", "--url", server.url, "--partner", "acme", "--salt", partner.salt,
        "--transaction-id", "p-1", "--first-name", "Ann", "--last-name", "Lee",
        "--email", "ann+kids@example.com",
    ]  # fmt: skip
    result = famprov(*args, env=env)

    assert result.returncode == 0, result.stderr
    assert "order number: " in result.stdout
    assert "vault URL:    http://famprov.test/invite/" in result.stdout
    listed = json.loads(cli("license", "list", "--json").stdout)
    assert listed[0]["email"] == "ann+kids@example.com"


def test_provision_prints_the_servers_refusal(
    env: dict[str, str], partner: Partner, server, tmp_path: Path
) -> None:
    salt_file = tmp_path / "salt"
    salt_file.write_text("not-the-right-salt-at-all\n")
    args = [
        "provision", "--url", server.url, "--partner", "acme",
        "--salt-file", str(salt_file), "--transaction-id", "p-1",
        "--first-name", "Ann", "--email", "ann@example.com",
    ]  # fmt: skip
    result = famprov(*args, env=env)

    assert result.returncode == 1
    assert result.stderr == "famprov: error: Invalid Hash Value - UnAuthorized\n"


def test_provision_against_nothing_fails_cleanly(env: dict[str, str]) -> None:
    args = [
        "provision", "--url", "http://127.0.0.1:9", "--partner", "acme",
        "--salt", "some-salt-0123456789", "--transaction-id", "p-1",
        "--first-name", "Ann", "--email", "ann@example.com", "--retries", "0",
    ]  # fmt: skip
    result = famprov(*args, env=env)

    assert result.returncode == 3
    assert result.stderr.startswith("famprov: error: server unreachable")
    assert "some-salt-0123456789" not in result.stderr


def test_partner_names_are_what_an_unencoded_url_can_carry(
    env: dict[str, str],
) -> None:
    result = cli("partner", "add", "A&B Co", "--salt", "some-salt-0123456789")
    assert result.exit_code == 1
    assert "partner name must be" in result.output


def test_salt_file_that_is_not_utf8_is_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    salt_file = tmp_path / "salt"
    salt_file.write_bytes(b"\xff\xfesalt-salt-salt-salt")
    result = famprov("partner", "add", "acme", "--salt-file", str(salt_file), env=env)
    assert result.returncode == 2
    assert result.stderr == f"famprov: error: salt file {salt_file} is not UTF-8 text\n"


def test_provision_with_a_bad_url_is_one_line(env: dict[str, str]) -> None:
    args = [
        "provision", "--url", "http://[::1", "--partner", "acme",
        "--salt", "some-salt-0123456789", "--transaction-id", "p-1",
        "--first-name", "Ann", "--email", "ann@example.com",
    ]  # fmt: skip
    result = famprov(*args, env=env)
    assert result.returncode == 3
    assert result.stderr.startswith("famprov: error: invalid server URL")
    assert len(result.stderr.splitlines()) == 1


@only("sqlite")  # a shared store needs the setting: test_store
def test_vault_urls_follow_the_port_when_no_public_url_is_set(
    env: dict[str, str], partner: Partner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from support import ServerProcess

    monkeypatch.delenv("FAMPROV_PUBLIC_URL")
    del env["FAMPROV_PUBLIC_URL"]
    with ServerProcess(env) as server:
        body = httpx.get(server.url + V1_PATH, params=partner.params()).json()
    assert body["vault_url"].startswith(server.url + "/invite/")


def test_partner_names_differing_only_by_case_are_refused(
    env: dict[str, str], partner: Partner
) -> None:
    result = cli("partner", "add", "ACME", "--salt", "other-salt-0123456789")
    assert result.exit_code == 1
    assert "partner 'acme' already exists" in result.output


@only("sqlite")
def test_several_writers_are_refused_on_sqlite(env: dict[str, str]) -> None:
    result = famprov("serve", "--port", "1", env={**env, "FAMPROV_WRITERS": "2"})
    assert result.returncode == 2
    assert result.stderr == (
        "famprov: error: setting FAMPROV_WRITERS: "
        "above 1 needs PostgreSQL: SQLite takes one writer\n"
    )


@only("sqlite")
def test_serving_on_every_address_needs_a_public_url(env: dict[str, str]) -> None:
    own = {k: v for k, v in env.items() if k != "FAMPROV_PUBLIC_URL"}
    environment = {k: v for k, v in os.environ.items() if k != "FAMPROV_PUBLIC_URL"}
    result = subprocess.run(
        [FAMPROV, "serve", "--host", "0.0.0.0", "--port", "1"],  # noqa: S104 - refused
        env={**environment, **own},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--host 0.0.0.0 listens on every address" in result.stderr
    assert "set FAMPROV_PUBLIC_URL" in result.stderr


def _serve_until_ready(
    env: dict[str, str], stdout: int, stderr: int
) -> tuple[subprocess.Popen[bytes], str]:
    from support import answers, free_port, wait_for

    port = free_port()
    proc = subprocess.Popen(
        [FAMPROV, "serve", "--port", str(port)],
        env={**os.environ, **env},
        stdout=stdout,
        stderr=stderr,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(url + "/healthz"), timeout=20)
    return proc, url


@only("sqlite")
def test_a_first_start_in_a_terminal_makes_a_demo_partner_that_grants(
    env: dict[str, str],
) -> None:
    import pty
    import shlex

    leader, follower = pty.openpty()
    proc, url = _serve_until_ready(env, follower, subprocess.DEVNULL)
    os.close(follower)
    try:
        shown = b""
        while b"or with curl" not in shown:
            shown += os.read(leader, 65536)
        text = shown.decode().replace("\r\n", "\n")
        [line] = [ln for ln in text.splitlines() if " provision --url " in ln]
        argv = shlex.split(line.strip())
        granted = subprocess.run(
            [FAMPROV, *argv[1:]], env={**os.environ, **env},
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(15)
        os.close(leader)
    assert url in line
    assert granted.returncode == 0, granted.stderr
    assert "order number:" in granted.stdout


@only("sqlite")
def test_a_first_start_as_a_service_makes_no_partner_and_shows_no_salt(
    env: dict[str, str], tmp_path: Path
) -> None:
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc, _ = _serve_until_ready(env, stdout.fileno(), stderr.fileno())
        proc.terminate()
        proc.wait(15)
    assert "salt" not in out.read_text() + err.read_text()
    assert "famprov partner add NAME" in err.read_text()
    assert json.loads(famprov("partner", "list", "--json", env=env).stdout) == []


@pytest.mark.parametrize(
    "args",
    [
        ("license", "show", "\udcff\udcfe"),
        ("partner", "disable", "ac\udcffme"),
        ("provision", "--partner", "\udcff", "--url", "http://127.0.0.1:1"),
    ],
)
def test_an_argument_that_is_not_utf8_is_one_line(
    env: dict[str, str], args: tuple[str, ...]
) -> None:
    # What a shell passes for bytes that are not UTF-8 ($'\xff\xfe').
    result = famprov(*args, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("famprov: error: argument ")
    assert result.stderr.endswith(" is not UTF-8 text\n")
